"""SA-1B ground-truth masks as a voting "detector" (OV-SAM's role in the GranD reference).

On SA-1B inputs the reference also classified the ground-truth boxes whose masks cover more than 1% of
the image (with LVIS names, by OV-SAM) and let them vote with threshold 0.3, after EVA-1, Co-DETR and
EVA-2 in the priority order. grand classifies with CLIP / SigLIP over the vocabulary (a crop of the
box, the best-scoring name), only for ground-truth boxes that no detector already found, and the
boxes enter the vote as the model `sa1b_gt` (config: `level1.sa1b_gt`, off by default).
"""

from __future__ import annotations

import numpy as np

from grand.config import DetectorSpec, Sa1bGtSpec
from grand.core.detections import Detections
from grand.core.geometry import box_iou


def unclaimed_gt_boxes(gt: list[dict], width: int, height: int, found: list[Detections], spec: Sa1bGtSpec) -> list[int]:
    """Indices of the ground-truth annotations (grand.io.sa1b: bbox_xyxy, segmentation) to classify:
    mask area > `min_area_fraction` of the image, no detector box (of `found`, scoring at least
    `found_min_score`) with IoU >= `match_iou`, largest first, at most `max_boxes`."""
    from grand.core.rle import mask_area

    if not gt:
        return []
    boxes = np.array([g["bbox_xyxy"] for g in gt], np.float32).reshape(-1, 4)
    areas = np.array([mask_area(g["segmentation"]) for g in gt], np.float64)
    keep = areas > spec.min_area_fraction * width * height
    detector_boxes = np.concatenate([d.xyxy[d.scores >= spec.found_min_score] for d in found] + [np.zeros((0, 4), np.float32)])
    if len(detector_boxes):
        keep &= box_iou(boxes, detector_boxes).max(axis=1) < spec.match_iou
    order = [int(k) for k in np.argsort(-areas, kind="stable") if keep[k]]
    return order[: spec.max_boxes]


def classified_detections(boxes: np.ndarray, scores: list[list[float]], vocabulary: list[str], model: str) -> Detections:
    """One box per ground-truth mask, labelled with its best-scoring vocabulary name and that score."""
    if not len(boxes):
        return Detections.empty(model)
    best = [int(np.argmax(s)) for s in scores]
    return Detections(boxes, [scores[k][b] for k, b in enumerate(best)], [vocabulary[b] for b in best], model)


def voting_detectors(detectors: list[DetectorSpec], spec: Sa1bGtSpec | None) -> list[DetectorSpec]:
    """The vote's models in priority order, with the ground-truth voter at its `priority` position."""
    if spec is None:
        return list(detectors)
    voter = DetectorSpec(name=spec.name, checkpoint="sa1b-ground-truth", score_threshold=spec.score_threshold)
    position = min(spec.priority, len(detectors))
    return [*detectors[:position], voter, *detectors[position:]]
