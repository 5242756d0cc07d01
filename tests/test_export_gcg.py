"""export_gcg: GranD-f samples from level-3 dense captions and level-2 short captions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import DENSE_A, SHORT_A, SHORT_C, box_mask, build_output, read_json_or_jsonl
from pycocotools import mask as mask_utils

from grand.export.gcg import export_gcg, groundings, target_text


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("gcg"))


def glamm_tag_caption(caption: str, spans) -> str:
    """GLaMM's own construction of the target (GranDf_gcg_ds.py): insert tags from the last span."""
    for start, end in sorted(spans, key=lambda s: s[0], reverse=True):
        caption = f"{caption[:start]}<p> {caption[start:end]} </p> [SEG]{caption[end:]}"
    return caption


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_dense_samples(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "gcg.json"
    summary = export_gcg(str(out), str(dest))
    assert summary == {"dest": str(dest), "samples": 1, "captions": 1, "phrases": 3,
                       "skipped": {"no object with a mask": 1}, "skipped_images": {}}  # "them" names no object
    samples = json.loads(dest.read_text())  # a plain JSON list, as GLaMM's loader json.loads it
    (s,) = samples
    assert (s["file_name"], s["height"], s["width"], s["source"], s["verified"]) == ("a.png", 36, 48, "dense", True)
    assert s["caption"] == DENSE_A
    assert list(s["groundings"]) == ["A brown dog", "a red ball", "a tree"]  # span order
    boxes = {1: (4, 4, 20, 20), 2: (24, 20, 32, 28), 3: (34, 2, 46, 30)}
    for phrase, g in s["groundings"].items():
        start, end = g["token_positives"]
        assert s["caption"][start:end] == phrase
        (rle,) = g["rle_masks"]
        (oid,) = g["object_ids"]
        decoded = mask_utils.decode(rle)  # pycocotools reads the JSON RLE (str counts) as it is
        np.testing.assert_array_equal(decoded.astype(bool), box_mask(boxes[oid]))
    assert s["target"] == ("<p> A brown dog </p> [SEG] sits near <p> a red ball </p> [SEG] while "
                           "<p> a tree </p> [SEG] stands behind them.")
    assert s["target"] == glamm_tag_caption(s["caption"], [g["token_positives"] for g in s["groundings"].values()])


def test_short_captions_jsonl(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "short.jsonl"
    summary = export_gcg(str(out), str(dest), source="short")
    assert (summary["samples"], summary["captions"], summary["phrases"]) == (2, 2, 3)
    assert summary["skipped"] == {"no object with a mask": 1}  # c's cat has a box but no mask
    lines = dest.read_text().splitlines()
    assert len(lines) == 2
    a, c = (json.loads(line) for line in lines)
    assert (a["caption"], a["source"], a["verified"]) == (SHORT_A, "short:blip2", None)
    assert (c["caption"], list(c["groundings"])) == (SHORT_C, ["A person"])
    assert c["target"] == "<p> A person </p> [SEG] with a cat."
    one_model = export_gcg(str(out), str(tmp_path / "blip.jsonl"), source="short", captioner="blip2")
    none = export_gcg(str(out), str(tmp_path / "none.jsonl"), source="short", captioner="llava")
    assert (one_model["samples"], none["samples"]) == (2, 0)


def test_groundings_rules() -> None:
    caption = "a dog and a dog near the big red ball"
    m = {"size": [2, 2], "counts": "04"}
    masks = {1: m, 2: m, 3: m}
    details = [
        {"phrase": "a dog", "tokens_positive": [10, 15], "ids": [2]},  # second "a dog": same text
        {"phrase": "a dog", "tokens_positive": [0, 5], "ids": [1]},
        {"phrase": "the big red ball", "tokens_positive": [21, 37], "ids": [3]},
        {"phrase": "red ball", "tokens_positive": [29, 37], "ids": [3]},  # inside the previous: dropped
        {"phrase": "near", "tokens_positive": [0, 4], "ids": [1]},  # span says "a do": dropped
        {"phrase": "dog", "tokens_positive": [2, 5], "ids": [9]},  # object 9 has no mask
    ]
    skipped: Counter = Counter()
    found = groundings(caption, details, masks, skipped)
    # the repeated "a dog" is one grounding with both spans and both objects (one merged mask)
    assert list(found) == ["a dog", "the big red ball"]
    assert found["a dog"]["token_positives"] == [0, 5]
    assert found["a dog"]["all_token_positives"] == [[0, 5], [10, 15]]
    assert found["a dog"]["object_ids"] == [1, 2] and len(found["a dog"]["rle_masks"]) == 1
    assert skipped == {"overlaps an earlier phrase": 1, "span does not match the caption": 1,
                       "no object with a mask": 1}
    spans = [g["token_positives"] for g in found.values()]
    assert target_text(caption, spans) == glamm_tag_caption(caption, spans) == (
        "<p> a dog </p> [SEG] and a dog near <p> the big red ball </p> [SEG]")


def test_verified_only_and_errors(out: Path, tmp_path: Path) -> None:
    s = export_gcg(str(out), str(tmp_path / "v.jsonl"), verified_only=True)
    assert s["samples"] == 1  # the fixture's one dense caption is verified
    with pytest.raises(ValueError, match="source must be"):
        export_gcg(str(out), str(tmp_path / "x.json"), source="long")
    only12 = tmp_path / "only12"
    for lv in (1, 2):
        (only12 / f"level{lv}").mkdir(parents=True)
        for f in (out / f"level{lv}").glob("*.parquet"):
            (only12 / f"level{lv}" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match=r"no level-3 shards .*--levels 3` first"):
        export_gcg(str(only12), str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.json.partial").exists()
    assert read_json_or_jsonl(tmp_path / "v.jsonl")[0]["file_name"] == "a.png"
