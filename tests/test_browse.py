"""`grand browse`: its HTTP API on a hand-built output (list, filters, one image, the picture, and
404 for every path that is not a route), and the page in a real headless Chromium (DevTools
protocol): the list, mask overlays per object, caption spans that highlight their masks, toggles,
and a screenshot that is not blank. The browser tests skip where no Chromium is installed."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from browser import Chromium, find_chromium
from export_fixtures import build_output
from grand.io.images import prepare_image
from grand.viz.browse import BrowseIndex, serve_in_thread

needs_browser = pytest.mark.skipif(find_chromium() is None,
                                   reason="no chromium on PATH (apt-get install -y chromium; .ci/run does)")


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


@pytest.fixture()
def served(tmp_path):
    out = build_output(tmp_path)
    server, url = serve_in_thread(str(out))
    yield out, url, tmp_path
    server.shutdown()
    server.server_close()


def test_api_lists_filters_and_shows_one_image(served):
    out, url, tmp = served
    status, body, kind = _get(url + "/api/images")
    page = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert [i["image_id"] for i in page["items"]] == ["a.png", "b.png", "c.png"] and page["total"] == 3
    q = lambda s: [i["image_id"] for i in json.loads(_get(url + "/api/images?" + s)[1])["items"]]  # noqa: E731
    assert q("errors=1") == ["b.png"]
    assert q("label=CAT") == ["c.png"] and q("label=frisbee") == ["a.png"]  # level 2's objects
    assert q("min_objects=2") == ["a.png", "c.png"] and q("min_objects=3") == []
    assert q("offset=1&limit=1") == ["b.png"]
    assert q("unverified=1") == []  # a.png's dense caption is verified; c.png has none

    d = json.loads(_get(url + "/api/image/0")[1])
    assert [(o["id"], o["label"], o["floating"]) for o in d["objects_list"]] == [
        (1, "dog", False), (2, "ball", False), (3, "tree", True), (4, "frisbee", True)]
    mask = Image.open(io.BytesIO(__import__("base64").b64decode(d["objects_list"][0]["mask"].split(",", 1)[1])))
    assert mask.size == (48, 36) and (np.asarray(mask) == 1).sum() == 16 * 16  # the dog's box-shaped mask
    assert d["dense_caption"]["verified"] is True and d["additional_context"].startswith("Dogs love")
    assert set(d["rows"]) == {"level1", "level2", "level3", "level4"}
    c = json.loads(_get(url + "/api/image/2")[1])
    assert [o["mask"] is None for o in c["objects_list"]] == [False, True]  # c's cat has no mask

    status, body, kind = _get(url + "/image/0")
    expected, _, _ = prepare_image((tmp / "images" / "a.png").read_bytes(), 10**9)
    assert status == 200 and kind == "image/png" and body == expected


def test_every_other_path_is_404(served):
    _, url, _ = served
    for path in ["/../images/a.png", "/%2e%2e/images/a.png", "/image/..%2fa.png", "/image/%2e%2e", "/image/0/../1",
                 "/image/3", "/api/image/99", "/api/image/-1", "/static/browse.js", "/images/a.png", "//etc/passwd",
                 "/image/0%00", "/api/image/0.json", "/browse.html", "/%2e%2e%2f%2e%2e%2fetc%2fpasswd"]:
        status, body, _ = _get(url + path)
        assert status == 404, (path, body[:80])


def test_index_reads_only_narrow_columns(tmp_path, monkeypatch):
    out = build_output(tmp_path)
    asked: list[list[str]] = []
    real = pq.ParquetFile.read

    def spy(self, columns=None, **kw):
        asked.append(list(columns or []))
        return real(self, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    index = BrowseIndex(str(out))
    assert len(index.entries) == 3 and asked
    assert all(all(c.endswith((".label", ".verified")) or "." not in c for c in cols) for cols in asked)
    assert not any(c in ("objects", "floating_objects", "short_captions") for cols in asked for c in cols)


@needs_browser
def test_page_in_a_real_browser_highlights_masks_from_caption_spans(served):
    _, url, _ = served
    with Chromium() as browser:
        browser.goto(url + "/")
        assert browser.wait_for("document.querySelectorAll('#list li').length") == 3
        browser.evaluate("document.querySelector('#list li').click()")
        assert browser.wait_for("document.querySelectorAll('.stage img.mask').length") == 4
        # floating objects start hidden; the toggle shows them
        assert browser.evaluate("document.querySelectorAll('.stage img.mask:not(.off)').length") == 2
        browser.evaluate("document.querySelectorAll('.controls input')[2].click()")
        assert browser.evaluate("document.querySelectorAll('.stage img.mask:not(.off)').length") == 4
        spans = browser.evaluate("[...document.querySelectorAll('.caption .span')].map(s => s.textContent)")
        assert spans[:2] == ["A brown dog", "a red ball"] and "a tree" in spans
        x, y = browser.evaluate("(() => { const r = document.querySelector('.caption .span[data-ids=\"2\"]')"
                                ".getClientRects()[0]; return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        browser.hover(x, y)
        assert browser.wait_for("[...document.querySelectorAll('.stage img.mask.hl')].map(m => m.dataset.id)") == ["2"]
        browser.evaluate("document.querySelectorAll('.controls input')[0].click()")  # masks off
        assert browser.evaluate("document.querySelectorAll('.stage img.mask:not(.off)').length") == 0


@pytest.mark.slow
@needs_browser
def test_viewer_of_a_tiny_run_in_a_real_browser(combined, tmp_path):
    _, out, expected = combined
    server, url = serve_in_thread(str(out))
    try:
        with Chromium(1400, 900) as browser:
            browser.goto(url + "/")
            assert browser.wait_for("document.querySelectorAll('#list li').length") == len(expected)
            ids = browser.evaluate("[...document.querySelectorAll('#list .id')].map(n => n.textContent)")
            assert sorted(ids) == sorted(expected)
            key = ids.index(sorted(i for i, s in expected.items() if s == "ok")[0])
            detail = json.loads(_get(f"{url}/api/image/{key}")[1])
            masked = [o for o in detail["objects_list"] if o["mask"]]
            assert masked, "the tiny run masks every object"
            browser.evaluate(f"document.querySelectorAll('#list li')[{key}].click()")
            n = browser.wait_for("document.querySelectorAll('.stage img.mask').length")
            assert n == len(masked)
            browser.wait_for("document.querySelector('img.photo').complete && "
                             "document.querySelector('img.photo').naturalWidth > 0")
            phrases = sum(len(c["details"]) for c in detail["short_captions"])
            phrases += len((detail["dense_caption"] or {}).get("details") or [])
            assert phrases and browser.evaluate("document.querySelectorAll('.caption .span').length") > 0
            shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
    finally:
        server.shutdown()
        server.server_close()
    assert shot.shape[0] == 900 and shot.std() > 20
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # a photo, not a blank or error page


def test_browse_cli_says_when_the_port_is_taken(tmp_path, capsys):
    import socket

    from grand.cli.main import main

    out = build_output(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["browse", str(out), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
