"""Checks every visual-prompt export must pass (mdvp, regions --format gpt4roi|osprey), shared by
the unit tests on hand-built folders and by the levels 1-4 tiny-run test."""

from __future__ import annotations

import re

import numpy as np
from pycocotools import mask as mask_utils


def answer_marks(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"<Mark (\d+)>", text)]


def check_mdvp_sample(rec: dict, objects: dict[int, dict]) -> None:
    """`objects`: the image's objects (and floating objects) by id."""
    prompts = rec["prompts"]
    assert prompts, rec
    assert [p["mark"] for p in prompts] == list(range(1, len(prompts) + 1))
    human, gpt = rec["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\n")
    assert gpt["from"] == "gpt"
    # The answer names exactly its marks, each once, in order.
    assert answer_marks(gpt["value"]) == [p["mark"] for p in prompts], rec
    for p in prompts:
        obj = objects.get(p["object_id"])
        assert obj is not None, f"mark {p['mark']} names object {p['object_id']}, not one of the image's"
        seg = obj.get("segmentation")
        has_mask = bool(seg and seg.get("counts")) and mask_utils.area(
            {"size": seg["size"], "counts": seg["counts"].encode()}) > 0
        if p["type"] == "point":
            assert has_mask, "a point prompt on an object without a mask"
            x, y = p["point"]
            mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            assert mask.shape == (rec["height"], rec["width"])
            assert mask[int(y), int(x)], (p, obj["id"])
        elif p["type"] == "mask":
            assert has_mask and p["mask"] == seg
        else:
            assert p["type"] == "box"
            x1, y1, x2, y2 = p["box"]
            assert 0 <= x1 < x2 <= rec["width"] and 0 <= y1 < y2 <= rec["height"], p
    if "points" in rec:
        assert rec["points"] == [p["point"] for p in prompts]
    if "bbox" in rec:
        np.testing.assert_allclose(rec["bbox"], [[b[0], b[1], b[2] - b[0], b[3] - b[1]]
                                                 for b in (p["box"] for p in prompts)], atol=0.01)


def first_mentions(pattern: str, turns: list[dict]) -> list[int]:
    seen = []
    for t in turns:
        for m in re.findall(pattern, t["value"]):
            if int(m) not in seen:
                seen.append(int(m))
    return seen


def check_gpt4roi(rec: dict) -> None:
    text = [t["value"] for t in rec["conversations"]]
    assert text[0].startswith("The <image> provides an overview of the picture.\n")
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"] * (len(text) // 2)
    # One <bbox> per box, introduced in box order: GPT4RoI swaps them for the boxes' RoI features.
    assert sum(t.count("<bbox>") for t in text) == len(rec["bboxes"])
    assert [int(m) for t in text for m in re.findall(r"region(\d+) <bbox>", t)] == list(range(1, len(rec["bboxes"]) + 1))
    assert first_mentions(r"region(\d+)", rec["conversations"]) == list(range(1, len(rec["bboxes"]) + 1))
    for x1, y1, x2, y2 in rec["bboxes"]:
        assert 0 <= x1 < x2 <= rec["width"] and 0 <= y1 < y2 <= rec["height"]


def check_osprey(rec: dict) -> None:
    n = len(rec["annotation"])
    assert first_mentions(r"<region(\d+)>", rec["conversations"]) == list(range(1, n + 1))
    assert all("<image>" not in t["value"] for t in rec["conversations"])  # Osprey's loader adds it
    assert [d.split(":")[0] for d in rec["description"]] == [f"<region{i}>" for i in range(1, n + 1)]
    for ann in rec["annotation"]:
        seg = ann["segmentation"]
        # What Osprey's annToMask does: polygons through frPyObjects, compressed RLE as it is.
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, rec["height"], rec["width"])) if isinstance(seg, list) else seg
        assert mask_utils.decode(rle).shape == (rec["height"], rec["width"]) and mask_utils.area(rle) > 0
