"""Set-of-Mark: mark placement properties and the export of the export_fixtures output."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import build_output, pixels
from PIL import Image
from scipy.ndimage import distance_transform_edt

from grand.export.som import LIST_PROMPT, list_text, mark_radius, place_marks

H, W = 120, 160


def rect(y1, y2, x1, x2, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def disc(cy, cx, r, h=H, w=W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def assert_no_overlap(placements, radius) -> None:
    for p, q in itertools.combinations([p for p in placements if p is not None], 2):
        assert np.hypot(p.x - q.x, p.y - q.y) > 2 * radius, (p, q)


def test_mark_at_the_distance_transform_maximum() -> None:
    # An L shape: the thick arm's centre is the point farthest from the edge.
    m = rect(10, 90, 10, 50) | rect(70, 90, 10, 150)
    (p,) = place_marks([m], radius=8)
    dt = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    assert p.inside and not p.overlaps
    assert dt[p.y, p.x] == dt.max()
    assert not (disc(p.y, p.x, 8) & ~m).any()  # the whole disc lies inside the mask


def test_small_region_gets_its_mark_beside() -> None:
    tiny = rect(50, 54, 70, 74)  # 4 x 4: a radius-8 disc cannot fit
    big = rect(0, 120, 100, 160)
    p_tiny, p_big = place_marks([tiny, big], radius=8)
    assert not p_tiny.inside and p_big.inside
    d = disc(p_tiny.y, p_tiny.x, 8)
    assert not (d & tiny).any()  # the mark does not hide the region
    near = distance_transform_edt(~tiny)[p_tiny.y, p_tiny.x]
    assert near <= 8 + 2  # right next to it
    assert 8 <= p_tiny.x < W - 8 and 8 <= p_tiny.y < H - 8  # inside the image
    assert_no_overlap([p_tiny, p_big], 8)


def test_crowded_regions_never_overlap() -> None:
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(25):
        y, x = rng.integers(0, H - 10), rng.integers(0, W - 10)
        hh, ww = rng.integers(3, 60), rng.integers(3, 60)
        masks.append(rect(y, y + hh, x, x + ww))
    masks.append(np.zeros((H, W), dtype=bool))  # an empty mask gets no mark
    radius = 6
    placements = place_marks(masks, radius)
    assert placements[-1] is None
    assert all(p is not None and not p.overlaps for p in placements[:-1])
    assert_no_overlap(placements, radius)
    for m, p in zip(masks, placements[:-1]):
        if p.inside:
            assert not (disc(p.y, p.x, radius) & ~m).any()
        else:
            assert not (disc(p.y, p.x, radius) & m).any()
    # A region with room left for a disc after the others were placed gets its mark inside.
    dt_fits = [((distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] > radius).sum() > 0) for m in masks[:-1]]
    inside = [p.inside for p in placements[:-1]]
    assert sum(inside) >= 1 and all(f for f, i in zip(dt_fits, inside) if i)


def test_list_text_and_radius() -> None:
    marks = [{"mark": 1, "label": "dog", "attributes": ["brown dog", "sitting"]},
             {"mark": 2, "label": "ball", "attributes": []}]
    assert list_text(marks) == "1. dog: brown dog; sitting\n2. ball"
    r1, _ = mark_radius(640, 480, 9)
    r3, _ = mark_radius(640, 480, 120)
    assert r3 > r1  # three digits need a wider disc


def test_export_som(tmp_path: Path) -> None:
    from grand.export.som import export_som

    out = build_output(tmp_path / "o")
    dest = tmp_path / "som"
    # The fixture's images are 48 x 36: a small radius leaves room for every mark.
    summary = export_som(str(out), str(dest), fill_masks=True, draw_boxes=True, include_floating=True, radius=4)
    assert (summary["images"], summary["marks"], summary["marks_overlapping"]) == (2, 6, 0)
    records = json.loads((dest / "som.json").read_text())  # a JSON list: what LLaVA's training code json.loads
    assert [r["id"] for r in records] == ["a.png", "c.png"]
    a = records[0]
    assert [m["object_id"] for m in a["marks"]] == [1, 2, 3, 4] and [m["mark"] for m in a["marks"]] == [1, 2, 3, 4]
    assert a["text"].splitlines()[0] == "1. dog: brown dog; a dog sitting on grass"
    assert a["conversations"][0]["value"] == "<image>\n" + LIST_PROMPT and a["conversations"][1]["value"] == a["text"]
    with Image.open(dest / a["image"]) as im:
        marked = np.asarray(im.convert("RGB"))
    assert marked.shape == pixels(0).shape
    for m in a["marks"]:  # each mark's disc (black, white number: all grey levels) is where the record says
        r = m["radius"] - 2
        patch = marked[m["y"] - r:m["y"] + r + 1, m["x"] - r:m["x"] + r + 1].astype(int)
        assert (patch[..., 0] == patch[..., 1]).all() and (patch[..., 1] == patch[..., 2]).all()
    assert_no_overlap([type("P", (), m)() for m in a["marks"]], a["marks"][0]["radius"])
    with pytest.raises(ValueError, match="no level-1 shards"):
        (tmp_path / "empty").mkdir()
        export_som(str(tmp_path / "empty"), str(tmp_path / "x"))
