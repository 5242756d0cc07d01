"""Box geometry: IoU and NMS against brute-force loops on random (including degenerate) boxes."""

import numpy as np
import pytest

from grand.core.geometry import box_area, box_iou, clip_boxes, nms


def _iou_scalar(a, b) -> float:
    aw, ah = max(0.0, a[2] - a[0]), max(0.0, a[3] - a[1])
    bw, bh = max(0.0, b[2] - b[0]), max(0.0, b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _random_boxes(rng, n, degenerate=True):
    xy = rng.uniform(0, 50, size=(n, 2))
    wh = rng.uniform(0, 30, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if degenerate and n:
        # zero width, zero height, a point, an inverted box and exact duplicates
        k = rng.integers(0, n, size=5)
        boxes[k[0], 2] = boxes[k[0], 0]
        boxes[k[1], 3] = boxes[k[1], 1]
        boxes[k[2], 2:] = boxes[k[2], :2]
        boxes[k[3]] = boxes[k[3]][[2, 3, 0, 1]]
        boxes[k[4]] = boxes[k[0]]
    # integer coordinates make touching / identical boxes likely
    if rng.random() < 0.5:
        boxes = np.round(boxes)
    return boxes


def _nms_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    suppressed = set()
    keep = []
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if _iou_scalar(boxes[i], boxes[j]) > thr:
                suppressed.add(j)
    return keep


def test_box_iou_matches_double_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = _random_boxes(rng, int(rng.integers(0, 12)))
        b = _random_boxes(rng, int(rng.integers(0, 12)))
        got = box_iou(a, b)
        assert got.shape == (len(a), len(b))
        assert not np.isnan(got).any()
        want = np.array([[_iou_scalar(x, y) for y in b] for x in a]).reshape(len(a), len(b))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 5, 5], [3, 3, 3, 3]])
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.25, 0.0])


def test_box_iou_zero_area_pairs_are_zero_not_nan():
    pts = np.array([[1, 1, 1, 1], [2, 2, 2, 5], [4, 4, 2, 2]], dtype=np.float32)
    iou = box_iou(pts, pts)
    assert np.array_equal(iou, np.zeros((3, 3)))


def test_box_area_and_clip():
    boxes = np.array([[0, 0, 4, 5], [3, 3, 1, 1], [-5, -5, 200, 300]])
    np.testing.assert_array_equal(box_area(boxes), [20, 0, 205 * 305])
    clipped = clip_boxes(boxes, width=100, height=50)
    assert clipped.dtype == np.float32
    np.testing.assert_array_equal(clipped, [[0, 0, 4, 5], [3, 3, 1, 1], [0, 0, 100, 50]])


def test_nms_matches_reference_on_random_sets():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 25))
        boxes = _random_boxes(rng, n)
        # few distinct scores so that ties happen often
        scores = rng.integers(0, 5, size=n) / 4 if trial % 2 else rng.random(n)
        thr = float(rng.choice([0.0, 0.3, 0.5, 0.9, 1.0]))
        got = nms(boxes, scores, thr)
        assert got.dtype == np.int64
        assert got.tolist() == _nms_reference(boxes, scores, thr), (trial, thr)


def test_nms_threshold_is_strict():
    # IoU of these two is exactly 0.5: a 0.5 threshold must keep both (suppress only IoU > 0.5)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float32)
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == 0.5
    assert nms(boxes, [0.9, 0.8], 0.5).tolist() == [0, 1]
    assert nms(boxes, [0.9, 0.8], 0.49).tolist() == [0]


def test_nms_orders_by_score_then_index():
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]])
    assert nms(boxes, [0.5, 0.9, 0.5, 0.7], 0.5).tolist() == [1, 3, 0, 2]
    # identical boxes with equal scores: the lower index survives
    same = np.array([[0, 0, 5, 5]] * 3)
    assert nms(same, [0.3, 0.3, 0.3], 0.9).tolist() == [0]


def test_nms_empty_and_mismatch():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)


def test_nms_matrix_pass_and_low_memory_pass_agree(monkeypatch):
    # nms builds one IoU matrix up to _NMS_MATRIX_MAX boxes and compares box by box above it
    import grand.core.geometry as geometry

    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(0, 80))
        xy = np.round(rng.uniform(0, 100, (n, 2)))
        boxes = np.c_[xy, xy + np.round(rng.uniform(0, 40, (n, 2)))]
        if trial % 10 == 0 and n:
            boxes[rng.integers(0, n)] = [0, 0, np.inf, np.inf]  # inf - inf: a NaN IoU suppresses in both
        scores = np.round(rng.random(n), 1)
        thr = float(rng.choice([0.3, 0.5, 0.9]))
        with np.errstate(invalid="ignore"):
            matrix = nms(boxes, scores, thr)
            monkeypatch.setattr(geometry, "_NMS_MATRIX_MAX", 0)
            low_memory = nms(boxes, scores, thr)
            monkeypatch.undo()
        assert matrix.dtype == low_memory.dtype == np.int64
        assert matrix.tolist() == low_memory.tolist(), trial
