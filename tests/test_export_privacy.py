"""Exports keep private data home (issue 13, item 9): image metadata stripped losslessly, `source`
relative to the input root, Hub repos private unless --public. The Hub is never reached: the push
is tested against a stub of huggingface_hub's HfApi that records its calls."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from export_fixtures import build_output
from PIL import Image, ImageCms, PngImagePlugin

from grand.export.privacy import redacted_manifest, relative_source, strip_metadata

GPS = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}


def exif_with_gps(orientation: int | None = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0xA431] = "SERIAL-1234"  # BodySerialNumber
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8825] = GPS  # GPSInfo IFD
    return exif


def photo(seed: int = 0, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_no_metadata(data: bytes) -> None:
    im = Image.open(io.BytesIO(data))
    assert len(im.getexif()) == 0, dict(im.getexif())
    assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment", "photoshop", "Author", "Comment"} & set(im.info), im.info
    assert b"Exif\0\0" not in data and b"SERIAL-1234" not in data and b"http://ns.adobe.com/xap" not in data


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_loses_exif_xmp_comments_keeps_pixels_and_icc(progressive: bool) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    photo().save(buf, format="JPEG", quality=90, exif=exif_with_gps(), comment=b"shot at home",
                 xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://ns.adobe.com/xap/1.0/"/></x:xmpmeta>',
                 icc_profile=icc, progressive=progressive)
    data = buf.getvalue()
    assert b"SERIAL-1234" in data and b"shot at home" in data
    stripped = strip_metadata(data)
    assert_no_metadata(stripped)
    assert b"shot at home" not in stripped
    np.testing.assert_array_equal(pixels(stripped), pixels(data))  # lossless: the same decoded pixels
    assert Image.open(io.BytesIO(stripped)).info.get("icc_profile") == icc  # colour is not metadata
    assert strip_metadata(stripped) == stripped


def test_mpo_keeps_its_first_frame_only() -> None:
    buf = io.BytesIO()
    first, second = photo(1), photo(2)
    first.save(buf, format="MPO", save_all=True, append_images=[second], exif=exif_with_gps())
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 2
    stripped = strip_metadata(data)
    assert_no_metadata(stripped)
    im = Image.open(io.BytesIO(stripped))
    assert im.format == "JPEG" and getattr(im, "n_frames", 1) == 1
    np.testing.assert_array_equal(pixels(stripped), pixels(data))


def test_png_loses_exif_and_text_chunks() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    info.add_itxt("Comment", "at home, 52.5N 13.4E", zip=True)
    buf = io.BytesIO()
    photo().save(buf, format="PNG", pnginfo=info, exif=exif_with_gps())
    data = buf.getvalue()
    stripped = strip_metadata(data)
    assert_no_metadata(stripped)
    assert b"tEXt" not in stripped and b"iTXt" not in stripped and b"eXIf" not in stripped
    np.testing.assert_array_equal(pixels(stripped), pixels(data))


def test_relative_source() -> None:
    assert relative_source("/data/photos/a/b.jpg", "/data/photos") == "a/b.jpg"
    assert relative_source("/data/photos/a/b.jpg", "/data/photos/") == "a/b.jpg"
    assert relative_source("file:///data/photos/b.jpg", "/data/photos") == "b.jpg"
    assert relative_source("s3://bkt/in/part-1.tar::x/0001.jpg", "s3://bkt/in") == "part-1.tar::x/0001.jpg"
    assert relative_source("s3://bkt/in/part-1.tar::0001.jpg", "s3://bkt/in/part-1.tar") == "part-1.tar::0001.jpg"
    assert relative_source("/d/shards/s-01.parquet::17", "/d/shards/s-*.parquet") == "s-01.parquet::17"
    assert relative_source("/d/one.jpg", "/d/one.jpg") == "one.jpg"
    assert relative_source("/elsewhere/secret/x.jpg", "/data/photos") == "x.jpg"  # never an absolute path
    red = redacted_manifest({"runs": [{"input": "/home/me/private/photos/"}, {"command": "status"}]})
    assert red["runs"][0]["input"] == "photos"


@pytest.fixture()
def out_with_gps(tmp_path: Path) -> Path:
    """The export fixture with a.png rewritten to carry EXIF GPS and a text chunk (same pixels)."""
    out = build_output(tmp_path)
    path = tmp_path / "images" / "a.png"
    im = Image.open(path)
    im.load()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SERIAL-1234")
    im.save(path, format="PNG", pnginfo=info, exif=exif_with_gps())
    return out


def test_export_hf_embeds_images_without_metadata_and_relative_sources(out_with_gps: Path, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from grand.export.hf import export_hf

    dest = tmp_path / "hf"
    export_hf(str(out_with_gps), str(dest), embed_images=True, relative_sources=True)
    rows = pq.read_table(next((dest / "data").glob("*.parquet"))).to_pylist()
    a = next(r for r in rows if r["image_id"] == "a.png")
    assert_no_metadata(a["image"]["bytes"])
    np.testing.assert_array_equal(pixels(a["image"]["bytes"]), pixels((tmp_path / "images" / "a.png").read_bytes()))
    assert sorted(r["source"] for r in rows) == ["a.png", "b.png", "c.png"]
    card = (dest / "README.md").read_text()
    assert str(tmp_path) not in card and "input: `images`" in card
    # Without the option `source` stays as the run wrote it.
    export_hf(str(out_with_gps), str(tmp_path / "hf2"))
    rows = pq.read_table(next((tmp_path / "hf2" / "data").glob("*.parquet"))).to_pylist()
    assert all(r["source"].startswith(str(tmp_path)) for r in rows)


class StubHfApi:
    """Records what push_folder asks of huggingface_hub.HfApi; `existing` maps repo id -> private."""

    existing: dict[str, bool] = {}
    calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, repo_id, **kw):
        StubHfApi.calls.append(("create_repo", (repo_id,), kw))
        StubHfApi.existing.setdefault(repo_id, kw.get("private", False))

    def dataset_info(self, repo_id, **kw):
        StubHfApi.calls.append(("dataset_info", (repo_id,), kw))
        return type("Info", (), {"private": StubHfApi.existing[repo_id]})()

    def upload_folder(self, **kw):
        StubHfApi.calls.append(("upload_folder", (), kw))


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub

    StubHfApi.existing, StubHfApi.calls = {}, []
    monkeypatch.setattr(huggingface_hub, "HfApi", StubHfApi)
    return StubHfApi


def test_push_to_hub_is_private_unless_public(hub, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from grand.cli.main import main

    out = build_output(tmp_path)
    assert main(["export", "hf", str(out), str(tmp_path / "hf"), "--push-to-hub", "me/private-set"]) == 0
    create = next(c for c in hub.calls if c[0] == "create_repo")
    assert create[1] == ("me/private-set",) and create[2]["private"] is True and create[2]["repo_type"] == "dataset"
    assert [c[0] for c in hub.calls][-1] == "upload_folder"

    hub.calls.clear()
    assert main(["export", "hf", str(out), str(tmp_path / "hf"), "--overwrite", "--push-to-hub", "me/open-set",
                 "--public"]) == 0
    assert next(c for c in hub.calls if c[0] == "create_repo")[2]["private"] is False


def test_push_to_an_existing_public_repo_needs_public(hub, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from grand.export.hf import export_hf

    out = build_output(tmp_path)
    hub.existing["me/was-public"] = False  # create_repo(exist_ok=True) leaves an existing repo as it is
    with pytest.raises(ValueError, match="public: pass --public"):
        export_hf(str(out), str(tmp_path / "hf"), push_to_hub="me/was-public")
    assert "upload_folder" not in [c[0] for c in hub.calls]
    with pytest.raises(ValueError, match="only applies with --push-to-hub"):
        export_hf(str(out), str(tmp_path / "hf2"), public=True)


@pytest.mark.parametrize("orientation", [1, 6])
def test_prepared_images_are_upright_and_carry_no_orientation_tag(orientation: int) -> None:
    """What the exports embed: prepare_image's bytes (rotated upright when the tag asked for it),
    then strip_metadata. No orientation tag may survive: it would rotate the upright pixels again."""
    from grand.io.images import prepare_image

    buf = io.BytesIO()
    photo(size=(40, 30)).save(buf, format="JPEG", exif=exif_with_gps(orientation))
    data, w, h = prepare_image(buf.getvalue(), 10**6)
    stripped = strip_metadata(data)
    assert_no_metadata(stripped)
    assert Image.open(io.BytesIO(stripped)).getexif().get(0x0112) is None
    assert Image.open(io.BytesIO(stripped)).size == (w, h) == ((30, 40) if orientation == 6 else (40, 30))
    np.testing.assert_array_equal(pixels(stripped), pixels(data))
