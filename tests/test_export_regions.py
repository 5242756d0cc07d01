"""export_refexp and export_regions on the export_fixtures output: the expressions, boxes and masks
come back identical through json + pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import box_mask, build_output, read_json_or_jsonl
from pycocotools import mask as mask_utils

from grand.export.refexp import export_refexp
from grand.export.regions import export_regions

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("regions"))


def check_geometry(rec: dict, bbox_xyxy) -> None:
    x1, y1, x2, y2 = bbox_xyxy
    assert rec["bbox_xyxy" if "bbox_xyxy" in rec else "bbox"] == [x1, y1, x2, y2]
    if rec["segmentation"] is not None:
        mask = mask_utils.decode(rec["segmentation"]).astype(bool)
        np.testing.assert_array_equal(mask, box_mask(bbox_xyxy))


def test_refexp(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "refs.jsonl"
    assert export_refexp(str(out), str(dest)) == {"dest": str(dest), "refs": 3, "sentences": 6, "skipped_images": {}}
    refs = read_json_or_jsonl(dest)
    assert [(r["file_name"], r["object_id"], r["category"]) for r in refs] == [
        ("a.png", 1, "dog"), ("a.png", 2, "ball"), ("c.png", 1, "person")]
    dog = refs[0]
    assert [(s["kind"], s["raw"]) for s in dog["sentences"]] == [
        ("attribute", "brown dog"), ("attribute", "a dog sitting on grass"),
        ("relationship", "a dog next to a ball")]  # "dog and tree" names two objects: not a referring expression
    assert dog["sentences"][1]["tokens"] == ["a", "dog", "sitting", "on", "grass"]
    assert dog["bbox"] == [4.0, 4.0, 16.0, 16.0] and dog["area"] == 256.0 and dog["floating"] is False
    for r, box in zip(refs, [(4, 4, 20, 20), (24, 20, 32, 28), (10, 5, 30, 35)]):
        check_geometry(r, [float(v) for v in box])
    assert [s["sent_id"] for r in refs for s in r["sentences"]] == list(range(1, 7))

    only_rel = export_refexp(str(out), str(tmp_path / "rel.json"), kinds=["relationship"])
    assert only_rel["refs"] == 2  # a.png's dog and c.png's person
    assert json.loads((tmp_path / "rel.json").read_text())[1]["sentences"][0]["raw"] == "a person with a cat"
    with pytest.raises(ValueError, match="kinds must be"):
        export_refexp(str(out), str(tmp_path / "x.json"), kinds=["color"])


def test_regions_per_image(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "regions.json"
    assert export_regions(str(out), str(dest)) == {"dest": str(dest), "images": 2, "regions": 3, "pairs": 4, "skipped_images": {}}
    a, c = json.loads(dest.read_text())
    assert [(r["object_id"], r["descriptions"]) for r in a["regions"]] == [
        (1, ["brown dog", "a dog sitting on grass"]), (2, ["red ball"])]
    assert a["regions"][0]["labels"] == ["dog", "puppy"]  # level 2's objects
    assert (c["width"], c["height"]) == (48, 36)
    for r in a["regions"] + c["regions"]:
        check_geometry(r, r["bbox"])
        x1, y1, x2, y2 = r["bbox"]
        assert r["bbox_xywh"] == [x1, y1, x2 - x1, y2 - y1]


def test_regions_per_pair_with_every_region(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pairs.jsonl"
    s = export_regions(str(out), str(dest), per_region=True, all_regions=True)
    assert (s["images"], s["regions"], s["pairs"]) == (2, 6, 7)  # pairs: a: dog 2, ball, tree, frisbee; c: person, cat
    pairs = read_json_or_jsonl(dest)
    assert [(p["file_name"], p["object_id"], p["description"]) for p in pairs] == [
        ("a.png", 1, "brown dog"), ("a.png", 1, "a dog sitting on grass"), ("a.png", 2, "red ball"),
        ("a.png", 3, "tree"), ("a.png", 4, "frisbee"), ("c.png", 1, "person in a blue shirt"), ("c.png", 2, "cat")]
    assert pairs[-1]["segmentation"] is None  # the cat has a box only
    no_floating = export_regions(str(out), str(tmp_path / "nf.jsonl"), all_regions=True, include_floating=False)
    assert no_floating["regions"] == 4
