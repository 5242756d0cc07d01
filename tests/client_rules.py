"""The rules of the exports' clients, written in our own words (no client code copied), shared by
the export tests: GLaMM's GranD-f GCG loader, GLaMM's GranD prepare scripts and a Sa2VA-family
GranD loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from client_fixtures import decoded
from PIL import Image


def glamm_targets(sample: dict, image_dir: Path) -> list[tuple[str, list[int], np.ndarray]]:
    """What GLaMM's GCG loader makes of a sample: the raw file's size (no EXIF applied), the caption
    cleaned with strip('"').strip(), and per grounding the sum of its rle_masks in a uint8 array."""
    with Image.open(image_dir / sample["file_name"]) as im:
        width, height = im.size
    caption = sample["caption"].strip('"').strip()
    found = []
    for key, g in sample["groundings"].items():
        target = np.zeros((height, width), dtype=np.uint8)
        for rle in g["rle_masks"]:
            target += decoded(rle)  # a mask of another size cannot broadcast: the loader's crash
        found.append((caption[g["token_positives"][0]:g["token_positives"][1]], key, target))
    return found


def check_glamm_sample(sample: dict, image_dir: Path) -> None:
    assert sample["caption"].strip('"').strip() == sample["caption"]  # spans survive the cleaning
    for text, key, target in glamm_targets(sample, image_dir):
        assert text == key
        assert set(np.unique(target)) == {0, 1}  # 0/1 targets, never empty, never 2 where objects overlap


def prepare_scripts_read(folder: Path) -> Counter:
    """The keys GLaMM's GranD/prepare_annotations scripts read of each per-image file, and a
    Sa2VA-family loader's reading of dense captions: every lookup must succeed."""
    seen: Counter = Counter()
    for f in sorted(folder.iterdir()):
        data = json.load(open(f))
        image = list(data.keys())[0]  # every script takes the first key as the image name
        record = data[image]
        objects, floating = record["objects"], record["floating_objects"]
        segm = {o["id"]: o["segmentation"] for o in objects + floating}
        for o in objects:  # referring expressions, object-level data
            _ = (o.get("attributes"), o.get("labels"), o["id"], o["bbox"], o["segmentation"])
        for cap in record["short_captions"]:  # caption grounding: details' id
            for d in cap["details"]:
                _ = d["id"], d["phrase"], d["tokens_positive"]
                seen["short details"] += 1
        dense = record["dense_caption"]
        if dense:
            caption = dense["caption"].strip('"').strip()
            assert caption == dense["caption"]
            for d in dense["details"]:
                assert caption[d["tokens_positive"][0]:d["tokens_positive"][1]] == d["phrase"]
                for i in d["ids"]:
                    assert decoded(segm[i]).any()  # the loader decodes every id's mask
                assert d["id"] == min(d["ids"])
                seen["dense details"] += 1
        rel = record["relationships"]
        assert set(rel) == {"object_ids", "floating_object_ids", "grounding"}
        assert set(record["landmark"]) == {"category", "fine_category"}
        for o in objects + floating:
            assert o["segmentation_source"] in ("SAM", "EVA", None)
        seen["images"] += 1
    return seen


