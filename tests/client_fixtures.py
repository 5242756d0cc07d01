"""A hand-built output folder with what trips the exports' clients (no pipeline run, no models):

    rot.jpg    a JPEG stored 40 wide x 60 high with EXIF orientation 6: upright (as annotated) 60 x 40
    plain.jpg  64 x 48, two overlapping dogs named by one phrase, "a dog" written twice, an object
               whose mask is all zeros, a dense caption wrapped in quotes and spaces
    tiny.png   20 x 16: under the 32 px minimum

Levels 1-4, one shard of all three images, through the real schemas and shard plan.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from export_fixtures import box_mask, write_level
from PIL import Image

from grand.config import InputSpec
from grand.core.rle import encode_mask
from grand.io.manifest import save_plan
from grand.io.output import OutputDir
from grand.io.sources import plan_shards
from grand.schema import (
    RLE, DenseCaption, GroundedPhrase, Landmark, Level1Row, Level2Row, Level3Row, Level4Row, ObjectRecord,
    Relationship, ShortCaption,
)

SHARD = "images-00000"
PLAIN_DENSE_RAW = '  "Two dogs play with a dog toy near a dog bed and a ghost."  '
PLAIN_DENSE = PLAIN_DENSE_RAW.strip().strip('"')  # what the clients index
ROT_SHORT = '"A red box on the left."'


def _obj(id: int, label: str, box, h: int, w: int, empty: bool = False, source: str = "sam") -> ObjectRecord:
    mask = np.zeros((h, w), dtype=bool) if empty else box_mask(box, h, w)
    return ObjectRecord(id=id, bbox=[float(v) for v in box], label=label, labels=[label], score=0.9,
                        models=["a", "b"], attributes=[f"a {label}"], depth=0.5,
                        segmentation=RLE(**encode_mask(mask)), segmentation_source=source)


def _span(caption: str, text: str, ids, start_at: int = 0, offset: int = 0) -> GroundedPhrase:
    start = caption.index(text, start_at) + offset
    return GroundedPhrase(text, [start, start + len(text)], list(ids))


def _rotated_jpeg() -> bytes:
    """Raw pixels 40 x 60 whose EXIF orientation 6 says "rotate 90° clockwise to view": upright 60 x 40."""
    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[:, :30] = (220, 30, 30)  # the red box on the left of the upright image
    raw = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    raw.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def build_client_output(root: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    (images / "rot.jpg").write_bytes(_rotated_jpeg())
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(images / "plain.jpg", quality=95)
    Image.fromarray(np.full((16, 20, 3), 60, np.uint8)).save(images / "tiny.png")
    specs = plan_shards(str(images), InputSpec(shard_size=8))
    assert [s.name for s in specs] == [SHARD] and list(specs[0].members) == ["plain.jpg", "rot.jpg", "tiny.png"]
    out = OutputDir(str(root / "out"))
    save_plan(out, str(images), specs)

    plain = [_obj(1, "dog", (4, 4, 30, 30), 48, 64), _obj(2, "dog", (10, 10, 36, 36), 48, 64),  # overlapping
             _obj(3, "toy", (40, 30, 50, 40), 48, 64), _obj(4, "bed", (40, 2, 60, 20), 48, 64)]
    ghost = [_obj(5, "ghost", (50, 40, 60, 46), 48, 64, empty=True)]  # a mask with no pixel
    rot = [_obj(1, "box", (0, 0, 30, 40), 40, 60, source="sa1b_gt")]
    tiny = [_obj(1, "dot", (2, 2, 10, 10), 16, 20)]
    src = lambda name: str(images / name)  # noqa: E731
    write_level(out, 1, SHARD, [
        Level1Row("plain.jpg", src("plain.jpg"), SHARD, 0, "ok", width=64, height=48, objects=plain,
                  floating_objects=ghost),
        Level1Row("rot.jpg", src("rot.jpg"), SHARD, 1, "ok", width=60, height=40, objects=rot),
        Level1Row("tiny.png", src("tiny.png"), SHARD, 2, "ok", width=20, height=16, objects=tiny),
    ])
    short_plain = "Two dogs with a dog toy."
    write_level(out, 2, SHARD, [
        Level2Row("plain.jpg", SHARD, 0, "ok",
                  short_captions=[ShortCaption("blip2", short_plain, [_span(short_plain, "Two dogs", [1, 2])])],
                  landmark=Landmark(None, None, ["?"]),
                  relationships=[Relationship("two dogs", [1, 2]), Relationship("a ghost", [5])],
                  objects=plain, floating_objects=ghost),
        Level2Row("rot.jpg", SHARD, 1, "ok",
                  short_captions=[ShortCaption("blip2", ROT_SHORT, [_span(ROT_SHORT, "A red box", [1])])],
                  landmark=Landmark("Indoor", "Living space", []), relationships=[], objects=rot),
        Level2Row("tiny.png", SHARD, 2, "ok",
                  short_captions=[ShortCaption("blip2", "A dot.", [_span("A dot.", "A dot", [1])])], objects=tiny),
    ])
    text = PLAIN_DENSE
    lead = PLAIN_DENSE_RAW.index(text)  # spans in the raw caption, as level 3 stores them
    details = [_span(text, "Two dogs", [1, 2], offset=lead), _span(text, "a dog", [1], offset=lead),
               _span(text, "a dog", [2], text.index("a dog") + 1, offset=lead),  # the phrase again
               _span(text, "toy", [3], offset=lead), _span(text, "bed", [4], offset=lead),
               _span(text, "a ghost", [5], offset=lead)]  # its only mask is empty
    write_level(out, 3, SHARD, [
        Level3Row("plain.jpg", SHARD, 0, "ok", dense_caption=DenseCaption(PLAIN_DENSE_RAW, True, details)),
        Level3Row("rot.jpg", SHARD, 1, "ok", dense_caption=DenseCaption(
            ROT_SHORT, False, [_span(ROT_SHORT, "A red box", [1])])),
        Level3Row("tiny.png", SHARD, 2, "ok", dense_caption=DenseCaption("A dot.", True, [_span("A dot.", "A dot", [1])])),
    ])
    write_level(out, 4, SHARD, [
        Level4Row(name, SHARD, i, "ok", additional_context=f"Context of {name}.")
        for i, name in enumerate(["plain.jpg", "rot.jpg", "tiny.png"])
    ])
    return Path(out.uri)


def decoded(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})



def build_sa1b_tar_output(root: Path) -> Path:
    """One SA-1B-style tar (`sa_000000.tar` holding `sa_223750.jpg`), planned and read by grand's
    own source reader, with levels 1-3 of that one image."""
    import tarfile

    from grand.io.sources import read_shard

    img = root / "sa_223750.jpg"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img, quality=95)
    with tarfile.open(root / "sa_000000.tar", "w") as tar:
        tar.add(img, arcname="sa_223750.jpg")
    (spec,) = plan_shards(str(root / "sa_000000.tar"), InputSpec())
    (src,) = read_shard(spec, InputSpec())
    assert src.image_id == "sa_223750"  # the member key: no extension
    out = OutputDir(str(root / "tar_out"))
    save_plan(out, str(root / "sa_000000.tar"), [spec])
    objs = [_obj(1, "dog", (4, 4, 30, 30), 48, 64, source="sa1b_gt")]
    caption = "A dog."
    write_level(out, 1, spec.name, [Level1Row(src.image_id, src.source, spec.name, 0, "ok", width=64, height=48,
                                              objects=objs)])
    write_level(out, 2, spec.name, [Level2Row(src.image_id, spec.name, 0, "ok", objects=objs)])
    write_level(out, 3, spec.name, [Level3Row(src.image_id, spec.name, 0, "ok", dense_caption=DenseCaption(
        caption, True, [_span(caption, "A dog", [1])]))])
    return Path(out.uri)
