"""OV-SAM's role: SA-1B ground-truth boxes that no detector found, classified over the vocabulary by
CLIP, vote as the model `sa1b_gt` (grand.core.sa1b_votes, level1.sa1b_gt; off by default)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from grand.config import DetectorSpec, Sa1bGtSpec, parse_config
from grand.core.detections import Detections
from grand.core.rle import encode_masks
from grand.core.sa1b_votes import classified_detections, unclaimed_gt_boxes, voting_detectors


def _gt(boxes, height=100, width=200) -> list[dict]:
    masks = np.zeros((len(boxes), height, width), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = True
    return [{"bbox_xyxy": list(map(float, b)), "segmentation": r} for b, r in zip(boxes, encode_masks(masks))]


def test_only_large_ground_truth_boxes_that_no_detector_found_are_classified():
    spec = Sa1bGtSpec(checkpoint="tiny:clip")
    gt = _gt([(0, 0, 100, 50), (150, 60, 160, 70), (10, 60, 90, 100), (120, 0, 200, 40)])  # areas 5000, 100, 3200, 3200
    found = [
        Detections([[0, 0, 100, 50]], [0.9], ["cat"], "det"),  # finds the first
        Detections([[120, 0, 200, 40]], [0.05], ["dog"], "weak"),  # below found_min_score: does not count
    ]
    # 100 px = 0.5% of the 200x100 image: too small (reference: > 1%); largest first
    assert unclaimed_gt_boxes(gt, 200, 100, found, spec) == [2, 3]
    assert unclaimed_gt_boxes(gt, 200, 100, found, spec.model_copy(update={"max_boxes": 1})) == [2]
    assert unclaimed_gt_boxes([], 200, 100, found, spec) == []


def test_classified_boxes_take_the_best_name_and_vote_at_their_priority():
    dets = classified_detections(np.array([[0, 0, 5, 5], [1, 1, 4, 4]], np.float32),
                                 [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], ["cat", "dog", "car"], "sa1b_gt")
    assert list(dets.labels) == ["dog", "cat"] and np.allclose(dets.scores, [0.7, 0.5])
    detectors = [DetectorSpec(name=n, checkpoint="x") for n in ("eva1", "codetr", "eva2", "owl")]
    order = voting_detectors(detectors, Sa1bGtSpec(checkpoint="tiny:clip"))
    assert [d.name for d in order] == ["eva1", "codetr", "eva2", "sa1b_gt", "owl"]  # the reference order
    assert order[3].score_threshold == 0.3
    assert voting_detectors(detectors, None) == detectors


def test_the_step_adds_a_sa1b_gt_detection_column_only_for_sa1b_rows(tmp_path):
    from grand.runtime.columns import Batch
    from grand.runtime.stages import Sa1bGtStep, detection_column

    (tmp_path / "vocab.txt").write_text("cat\ndog\ncar\n")
    spec = Sa1bGtSpec(checkpoint="tiny:clip", vocabulary="vocab.txt")
    step = Sa1bGtStep(spec, str(tmp_path))
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (90, 120, 30)).save(buf, "PNG")
    sidecar = json.dumps({"image": {"height": 100, "width": 200},
                          "annotations": [{"segmentation": g["segmentation"], "bbox": [10, 60, 80, 40]}
                                          for g in _gt([(10, 60, 90, 100)])]})
    batch = {
        "image_id": ["sa_1", "photo"], "shard": ["s0", "s0"], "index": [0, 1], "status": ["ok", "ok"],
        "error": ["", ""], "step_seconds": [{}, {}],
        "image": [buf.getvalue()] * 2, "sidecar": [sidecar, None],
        detection_column("det"): [Detections.empty("det")] * 2,
    }
    first, second = Batch(step(batch))[detection_column("sa1b_gt")]
    assert len(first) == 1 and first.labels[0] in {"cat", "dog", "car"} and 0 < first.scores[0] <= 1
    np.testing.assert_allclose(first.xyxy, [[10, 60, 90, 100]])
    assert len(second) == 0  # no ground truth: nothing to vote


def test_sa1b_gt_is_off_by_default_and_configurable():
    base = {"level1": {"detectors": [{"name": "d", "checkpoint": "tiny:rt-detr"}]}}
    assert parse_config(base).level1.sa1b_gt is None
    cfg = parse_config({"level1": {**base["level1"], "sa1b_gt": {"checkpoint": "tiny:clip"}}})
    assert cfg.level1.sa1b_gt.name == "sa1b_gt" and cfg.level1.sa1b_gt.min_area_fraction == 0.01
    from grand.runtime.steps import plan

    roles = [s.role for s in plan(cfg, (1,))]
    assert roles[roles.index("detector"):roles.index("vote") + 1] == ["detector", "sa1b_gt", "vote"]
    vote = next(s for s in plan(cfg, (1,)) if s.role == "vote")
    assert [d.name for d in vote.kwargs["detectors"]] == ["d", "sa1b_gt"]  # the ground truth votes too
