"""Box geometry in absolute pixel xyxy: areas, clipping, pairwise IoU and greedy NMS.

Conventions (used everywhere in grand):
- a box is [x1, y1, x2, y2] in pixel-edge coordinates, so a box covering pixel columns 3..5 is
  x1=3, x2=6 and its width is x2 - x1 (no "+1" as in old Pascal VOC code);
- a box with x2 <= x1 or y2 <= y1 has area 0, and its IoU with anything is 0 (never NaN).
Arithmetic is done in float64 so thresholds such as "IoU > 0.9" do not flip on float32 rounding.
"""

from __future__ import annotations

import numpy as np


def _as_boxes(xyxy) -> np.ndarray:
    return np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)


def box_area(xyxy) -> np.ndarray:
    """(N,) float64 area of each box; inverted or empty boxes have area 0."""
    b = _as_boxes(xyxy)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def clip_boxes(xyxy, width: float, height: float) -> np.ndarray:
    """(N, 4) float32 boxes clipped to the image rectangle [0, width] x [0, height]."""
    b = _as_boxes(xyxy).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b.astype(np.float32)


def box_iou(a, b) -> np.ndarray:
    """(N, M) float64 IoU between every box of `a` (N, 4) and every box of `b` (M, 4).

    Pairs whose union is empty (two zero-area boxes) get IoU 0 instead of 0/0 = NaN.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def nms(xyxy, scores, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic non-maximum suppression.

    Returns the int64 indices of the kept boxes in descending-score order; ties keep the lower
    index first (stable sort), so the result does not depend on the sort implementation.
    A box is suppressed by a kept box when their IoU is strictly greater than `iou_threshold`
    (the reference's step A: "suppressing IoU > 0.9").
    """
    boxes = _as_boxes(xyxy)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    # Compare each kept box only with the boxes still alive after it: O(N * kept) memory-light,
    # instead of a full N x N matrix (open-vocabulary detectors can return thousands of boxes).
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        ious = box_iou(boxes[i : i + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
