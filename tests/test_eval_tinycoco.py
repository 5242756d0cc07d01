"""The real YOLOX-Nano over the 32 tinycoco photos through the pipeline: `grand eval objects`
reports the box AP that pycocotools' COCOeval gives on the `grand export coco` output."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import TINYCOCO, YOLOX_DIR, needs_shared
from grand.cli.main import main
from grand.config import parse_config
from grand.export.coco import export_coco
from grand.runtime.pipeline import RunOptions, run_pipeline

pytestmark = [pytest.mark.slow, needs_shared]
GT = TINYCOCO / "annotations" / "instances.json"


def test_eval_objects_matches_cocoeval_on_the_coco_export(ray_session, tmp_path, capsys):
    cfg = parse_config({
        "name": "yolox-eval", "input": {"shard_size": 16},
        "level1": {"detectors": [{"name": "yolox", "backend": "onnx-yolox", "checkpoint": str(YOLOX_DIR),
                                  "score_threshold": 0.05, "batch_size": 8, "resources": {"num_cpus": 0.5}}],
                   "voting": {"min_models": 1}},
    })
    out = tmp_path / "out"
    summary = run_pipeline(cfg, RunOptions(input=str(TINYCOCO / "images"), output=str(out)))
    assert summary.images == 32 and summary.errors == 0

    assert main(["eval", "objects", str(out), "--gt", str(GT), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"]["evaluated"] == 32 and r["unmapped"]["predictions"] == 0  # YOLOX labels are COCO names

    # The COCO export, its categories renamed to the GT's ids by name, scored by COCOeval directly.
    export_coco(str(out), str(tmp_path / "coco.json"))
    exported = json.loads((tmp_path / "coco.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT))
        by_name = {c["name"]: c["id"] for c in gt.dataset["categories"]}
        names = {c["id"]: c["name"] for c in exported["categories"]}
        ids = {im["id"]: im["file_name"] for im in exported["images"]}
        gt_ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        dets = [{"image_id": gt_ids[ids[a["image_id"]]], "category_id": by_name[names[a["category_id"]]],
                 "bbox": a["bbox"], "score": a["score"]} for a in exported["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert r["box"]["class_aware"]["AP"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert r["box"]["class_aware"]["AP50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert 0.1 < r["box"]["class_aware"]["AP50"] < 0.9  # a real detector on real photos
    assert r["box"]["class_agnostic"]["AP50"] >= r["box"]["class_aware"]["AP50"]
    assert r["recall50"]["objects_and_floating"] >= r["recall50"]["objects"] > 0.3
    assert r["label_accuracy"]["final"] > 0.5
    assert r["per_model"]["yolox"]["true_positives"] == r["matched_pairs"]

    # The same run gives the printed summary a new user reads.
    assert main(["eval", "objects", str(out), "--gt", str(GT)]) == 0
    text = capsys.readouterr().out
    assert "box class-aware" in text and "recall@0.5" in text
