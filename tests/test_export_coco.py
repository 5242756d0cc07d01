"""export_coco on a hand-built output folder: pycocotools loads it and gives back the stored masks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from grand.core.rle import encode_mask
from grand.export import export_coco
from grand.schema import (
    LEVEL1_SCHEMA, LEVEL2_SCHEMA, RLE, GroundedPhrase, Landmark, Level1Row, Level2Row, ObjectRecord,
    Relationship, ShortCaption,
)

H, W = 8, 10


def box_mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def obj(id: int, label: str, box: tuple[int, int, int, int], masked: bool = True, attributes=(), labels=None,
        score: float = 0.5) -> ObjectRecord:
    seg = RLE(**encode_mask(box_mask(*box))) if masked else None
    return ObjectRecord(id=id, bbox=[float(v) for v in box], label=label, labels=labels or [label], score=score,
                        models=["m"], attributes=list(attributes), segmentation=seg)


def write(root: Path, level: int, shard: str, rows: list) -> None:
    schema = LEVEL1_SCHEMA if level == 1 else LEVEL2_SCHEMA
    (root / f"level{level}").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=schema)
    pq.write_table(table, root / f"level{level}" / f"{shard}.parquet")


def build_fixture(root: Path) -> Path:
    """Shard s0: level 1 only (a ok, b error, c ok with an unmasked object); s1: levels 1 and 2
    (d ok, e error), level 2 adding a phrase-grounded floating object to d."""
    l1 = dict(shard="s0", source="src", width=W, height=H)
    write(root, 1, "s0", [
        Level1Row(image_id="a", index=0, status="ok", **l1,
                  objects=[obj(1, "dog", (2, 1, 6, 4), attributes=["brown dog", "sitting"], score=0.9)],
                  floating_objects=[obj(2, "ball", (7, 5, 9, 8))]),
        Level1Row(image_id="b", index=1, status="error", error="decode: bad jpeg: truncated", shard="s0", source="src"),
        Level1Row(image_id="c", index=2, status="ok", **l1, objects=[obj(1, "cat", (0, 0, 3, 2), masked=False)]),
    ])
    l1 = dict(shard="s1", source="src", width=W, height=H)
    d_objects = [obj(1, "dog", (1, 1, 5, 5), attributes=["white dog"])]
    write(root, 1, "s1", [
        Level1Row(image_id="d", index=0, status="ok", **l1, objects=d_objects,
                  floating_objects=[obj(2, "tree", (6, 0, 10, 8))]),
        Level1Row(image_id="e", index=1, status="error", error="decode: bad jpeg: empty", shard="s1", source="src"),
    ])
    caption = "A dog plays with a frisbee."
    write(root, 2, "s1", [
        Level2Row(
            image_id="d", shard="s1", index=0, status="ok",
            short_captions=[
                ShortCaption("blip", caption, [GroundedPhrase("A dog", [0, 5], [1]),
                                               GroundedPhrase("a frisbee", [17, 26], [3])]),
                ShortCaption("llava", "Dog near tree", [GroundedPhrase("tree", [9, 13], [])]),
            ],
            landmark=Landmark("Outdoor", "Park", ["Outdoor", "Park"]),
            relationships=[Relationship("dog plays with frisbee", [1, 3])],
            objects=[obj(1, "dog", (1, 1, 5, 5), attributes=["white dog"], labels=["dog", "puppy"])],
            floating_objects=[obj(2, "tree", (6, 0, 10, 8)), obj(3, "frisbee", (4, 6, 6, 8))],
        ),
        Level2Row(image_id="e", shard="s1", index=1, status="error", error="vlm: timeout"),
    ])
    return root


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    return build_fixture(tmp_path / "out")


def originals(root: Path, level: int, shard: str) -> dict[tuple[str, int], dict]:
    """(image_id, object id) -> stored object dict."""
    rows = pq.read_table(root / f"level{level}" / f"{shard}.parquet").to_pylist()
    return {(r["image_id"], o["id"]): o for r in rows for o in r["objects"] + r["floating_objects"]}


# pycocotools 2.0.x under numpy 2 warns about its own __array__ in annToMask; harmless.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_pycocotools_loads_and_masks_round_trip(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "coco" / "instances.json"
    summary = export_coco(str(out), str(dest))
    assert summary == {"images": 3, "annotations": 6, "categories": 5, "skipped_error_rows": 2, "dest": str(dest)}
    assert not Path(str(dest) + ".partial").exists()

    coco = COCO(str(dest))
    assert [(i["file_name"], i["width"], i["height"]) for i in coco.dataset["images"]] == [
        ("a", W, H), ("c", W, H), ("d", W, H)]  # d's size comes from level 1 (level-2 rows have none)
    stored = {**originals(out, 1, "s0"), **originals(out, 2, "s1")}
    for ann in coco.dataset["annotations"]:
        file_name = coco.imgs[ann["image_id"]]["file_name"]
        o = stored[(file_name, ann["grand_object_id"])]
        x1, y1, x2, y2 = o["bbox"]
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
        assert ann["iscrowd"] == 0 and ann["score"] == pytest.approx(o["score"])
        assert ann["labels"] == o["labels"] and ann["attributes"] == o["attributes"]
        assert coco.cats[ann["category_id"]]["name"] == o["label"]
        expected = box_mask(*(int(v) for v in o["bbox"]))  # every fixture mask (or box) fills its box
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), expected)
        assert ann["area"] == expected.sum()
        if o["segmentation"] is not None:
            assert ann["segmentation"] == o["segmentation"] and ann["has_mask"] is True
        else:
            assert ann["has_mask"] is False  # c's unmasked cat: its box as a polygon


def test_categories_sorted_and_floating_flag(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "i.json"
    export_coco(str(out), str(dest))
    data = json.loads(dest.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (1, "ball"), (2, "cat"), (3, "dog"), (4, "frisbee"), (5, "tree")]
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3, 4, 5, 6]
    flags = [(a["image_id"], a["grand_object_id"], a["floating"]) for a in data["annotations"]]
    assert flags == [(1, 1, False), (1, 2, True), (2, 1, False), (3, 1, False), (3, 2, True), (3, 3, True)]


def test_level2_objects_preferred(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "i.json"
    export_coco(str(out), str(dest))
    data = json.loads(dest.read_text())
    d_anns = [a for a in data["annotations"] if a["image_id"] == 3]
    assert [a["grand_object_id"] for a in d_anns] == [1, 2, 3]  # frisbee exists only at level 2
    assert d_anns[0]["labels"] == ["dog", "puppy"]


def test_forced_level1_and_no_floating(out: Path, tmp_path: Path) -> None:
    s = export_coco(str(out), str(tmp_path / "l1.json"), level=1)
    assert (s["images"], s["annotations"], s["categories"], s["skipped_error_rows"]) == (3, 5, 4, 2)
    s = export_coco(str(out), str(tmp_path / "nf.json"), include_floating=False)
    assert (s["annotations"], s["categories"]) == (3, 2)  # cat, dog
    data = json.loads((tmp_path / "nf.json").read_text())
    assert not any(a["floating"] for a in data["annotations"])
    s = export_coco(str(out), str(tmp_path / "l2.json"), level=2)
    assert (s["images"], s["annotations"], s["skipped_error_rows"]) == (1, 3, 1)


def test_empty_output(tmp_path: Path) -> None:
    dest = tmp_path / "empty.json"
    s = export_coco(str(tmp_path / "nothing"), str(dest))
    assert (s["images"], s["annotations"], s["categories"]) == (0, 0, 0)
    assert json.loads(dest.read_text())["images"] == []
