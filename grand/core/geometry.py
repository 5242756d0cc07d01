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
    # one (N, M) array per coordinate rather than (N, M, 2) pairs: the same arithmetic, fewer temporaries
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
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
    if len(order) > _NMS_MATRIX_MAX:
        return _nms_low_memory(boxes, order, iou_threshold)
    # One IoU matrix of the score-sorted boxes, then a greedy pass over the few suppressing pairs.
    # "not <=" rather than ">" so that a NaN IoU suppresses, as in _nms_low_memory.
    sorted_boxes = boxes[order]
    first, second = np.nonzero(np.triu(~(box_iou(sorted_boxes, sorted_boxes) <= iou_threshold), 1))
    suppresses: dict[int, list[int]] = {}
    for k, j in zip(first.tolist(), second.tolist()):
        suppresses.setdefault(k, []).append(j)
    alive = [True] * len(order)
    keep: list[int] = []
    for k in range(len(order)):
        if alive[k]:
            keep.append(k)
            for j in suppresses.get(k, ()):
                alive[j] = False
    return order[np.asarray(keep, dtype=np.int64)]


# Above this many boxes nms compares each kept box with the survivors only (an N x N float64 matrix
# of 2048 boxes is 32 MB); open-vocabulary detectors can return thousands of boxes.
_NMS_MATRIX_MAX = 2048


def _nms_low_memory(boxes: np.ndarray, order: np.ndarray, iou_threshold: float) -> np.ndarray:
    """nms for many boxes: O(N * kept) time, O(N) memory; the same result as the matrix pass."""
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        ious = box_iou(boxes[i : i + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
