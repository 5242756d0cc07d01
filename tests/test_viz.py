"""grand.viz.render on a hand-made output folder: two PNGs, a plan, level-1 and level-2 shards."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from grand.config import InputSpec
from grand.core.rle import encode_mask
from grand.io.manifest import save_plan
from grand.io.output import OutputDir
from grand.io.sources import plan_shards
from grand.schema import (
    LEVEL1_SCHEMA,
    LEVEL2_SCHEMA,
    RLE,
    GroundedPhrase,
    Landmark,
    Level1Row,
    Level2Row,
    ObjectRecord,
    ShortCaption,
)
from grand.viz import find_rows, load_image, render, render_to_file

W, H = 160, 120
MASK_BOX = (40, 80, 10, 50)  # y1, y2, x1, x2 of object 1's rectangular mask
FAR_PIXEL = (150, 110)  # (x, y): outside every mask, box and tag


def _image(seed: int) -> np.ndarray:
    # A smooth gradient: every pixel differs from a flat fill, so tinting is always visible.
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 60 + seed * 40)], axis=-1).astype(np.uint8)


def _objects() -> tuple[list[ObjectRecord], list[ObjectRecord]]:
    y1, y2, x1, x2 = MASK_BOX
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    rle = encode_mask(mask)
    dog = ObjectRecord(1, [x1, y1, x2, y2], "dog", ["dog"], 0.9, ["a", "b"], depth=0.8,
                       segmentation=RLE(**rle), segmentation_source="test")
    ball = ObjectRecord(2, [60.0, 40.0, 100.0, 90.0], "ball", ["ball"], 0.7, ["a", "b"], depth=0.2)  # no mask
    cat = ObjectRecord(3, [110.0, 50.0, 140.0, 80.0], "cat", ["cat"], 0.4, ["a"])  # floating, no depth
    return [dog, ball], [cat]


@pytest.fixture
def output(tmp_path: Path) -> str:
    images = tmp_path / "images"
    images.mkdir()
    for seed, name in enumerate(["a.png", "b.png"]):
        Image.fromarray(_image(seed)).save(images / name)
    specs = plan_shards(str(images), InputSpec())
    out = OutputDir(str(tmp_path / "out"))
    save_plan(out, str(images), specs)
    (spec,) = specs

    objects, floating = _objects()
    level1 = [
        Level1Row("a.png", str(images / "a.png"), spec.name, 0, "ok", width=W, height=H,
                  objects=objects, floating_objects=floating),
        Level1Row("b.png", str(images / "b.png"), spec.name, 1, "ok", width=W, height=H),  # zero objects
    ]
    caption = "A brown dog chases a red ball across the lawn while a cat watches " * 3  # long: must wrap
    details = [
        GroundedPhrase("A brown dog", [0, 11], [1]),
        GroundedPhrase("a red ball", [19, 29], [2]),
        GroundedPhrase("the lawn", [37, 45], []),  # grounded to nothing drawn
    ]
    level2 = [
        Level2Row("a.png", spec.name, 0, "ok", short_captions=[ShortCaption("blip", caption, details)],
                  landmark=Landmark("Outdoor", "Park", ["Outdoor", "Park"]), objects=objects,
                  floating_objects=floating),
    ]
    out.write_table_atomic(out.shard_path(1, spec.name),
                           pa.Table.from_pylist([asdict(r) for r in level1], schema=LEVEL1_SCHEMA))
    out.write_table_atomic(out.shard_path(2, spec.name),
                           pa.Table.from_pylist([asdict(r) for r in level2], schema=LEVEL2_SCHEMA))
    return out.uri


def test_find_rows_and_load_image(output: str) -> None:
    level1, level2, spec = find_rows(output, "a.png")
    assert level1["image_id"] == "a.png" and [o["id"] for o in level1["objects"]] == [1, 2]
    assert level2 is not None and level2["landmark"]["category"] == "Outdoor"
    image = load_image(output, spec, level1["index"])
    assert image.mode == "RGB" and image.size == (W, H)
    assert np.array_equal(np.asarray(image), _image(0))
    assert np.array_equal(np.asarray(load_image(output, spec.name, "b.png")), _image(1))

    level1_b, level2_b, _ = find_rows(output, "b.png")
    assert level1_b["objects"] == [] and level2_b is None


def test_render_to_file_tints_masks_only(output: str, tmp_path: Path) -> None:
    dest = render_to_file(output, "a.png", tmp_path / "viz" / "a.png", show_floating=True)
    assert dest.is_file()
    with Image.open(dest) as im:
        rendered = np.asarray(im.convert("RGB"))
    assert rendered.shape[1] > W or rendered.shape[0] > H  # the panel was added
    original = _image(0)
    y1, y2, x1, x2 = MASK_BOX
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert not np.array_equal(rendered[cy, cx], original[cy, cx])  # inside the mask: tinted
    inside = rendered[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].astype(int) - original[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3]
    assert (np.abs(inside).sum(axis=-1) > 0).all()
    fx, fy = FAR_PIXEL
    assert np.array_equal(rendered[fy, fx], original[fy, fx])  # far from everything: untouched
    # The ball has no mask: its inside stays as it was, only its outline is drawn.
    assert np.array_equal(rendered[70, 80], original[70, 80])


def test_render_without_level2_and_without_objects(output: str) -> None:
    level1, _, spec = find_rows(output, "a.png")
    image = load_image(output, spec, "a.png")
    out = render(image, level1)
    assert out.size[0] >= W and out.size[1] >= H
    assert np.array_equal(np.asarray(out)[H - 5, W - 5], _image(0)[H - 5, W - 5])

    level1_b, _, spec_b = find_rows(output, "b.png")
    plain = render(load_image(output, spec_b, 1), level1_b)
    assert np.array_equal(np.asarray(plain)[:H, :W], _image(1))  # nothing to draw on the image


def test_render_edge_cases() -> None:
    objects, floating = _objects()
    row = asdict(Level1Row("x", "x", "s", 0, "ok", width=W, height=H, objects=objects, floating_objects=floating))
    image = Image.fromarray(_image(0))
    # Wide image: panel below; objects capped; mask of another size is skipped, not misplaced.
    wide = Image.new("RGB", (W * 3, H), (90, 90, 90))
    out = render(wide, row, show_floating=True, max_objects=2)
    assert out.size[0] == W * 3 and out.size[1] > H
    assert np.array_equal(np.asarray(out)[60, 30], [90, 90, 90])
    assert render(image, row, max_objects=0).size[1] >= H


def test_unknown_image_id(output: str) -> None:
    with pytest.raises(KeyError, match="nope.png") as info:
        find_rows(output, "nope.png")
    assert "a.png" in str(info.value)  # known ids are listed
