"""Object depth = median of the depth map inside the box, zeros ignored (reference: MiDaS step)."""

import numpy as np

from grand.core.depth import depth_stats, object_depths


def _brute_force(depth, box):
    h, w = depth.shape
    x1, y1, x2, y2 = box
    vals = [
        depth[r, c]
        for r in range(h)
        for c in range(w)
        # pixel (r, c) spans [c, c+1) x [r, r+1): it is inside when it overlaps the box's
        # integer hull [floor(x1), ceil(x2)) x [floor(y1), ceil(y2))
        if np.floor(x1) <= c < max(np.ceil(x2), np.floor(x1) + 1)
        and np.floor(y1) <= r < max(np.ceil(y2), np.floor(y1) + 1)
        and depth[r, c] != 0
        and np.isfinite(depth[r, c])
    ]
    return np.median(vals) if vals else np.nan


def test_median_inside_box_ignores_zeros():
    depth = np.zeros((4, 6), dtype=np.float32)
    depth[1:3, 1:4] = [[1, 2, 0], [3, 0, 10]]
    out = object_depths(depth, [[1, 1, 4, 3], [0, 0, 6, 1], [1.5, 1.2, 2.1, 1.9]])
    assert out.dtype == np.float32 and out.shape == (3,)
    assert out[0] == np.median([1, 2, 3, 10])
    assert np.isnan(out[1])  # only zeros in the top row
    assert out[2] == np.median([1, 2])  # fractional box covers every pixel it touches: cols 1-2, row 1


def test_boxes_are_clipped_and_outside_boxes_are_nan():
    depth = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    out = object_depths(depth, [[-10, -10, 100, 100], [10, 10, 20, 20], [-5, 0, -1, 3], [0, 0, 1, 1]])
    assert out[0] == np.median(depth)
    assert np.isnan(out[1]) and np.isnan(out[2])
    assert out[3] == 1.0


def test_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = int(rng.integers(1, 15)), int(rng.integers(1, 15))
        depth = rng.random((h, w)).astype(np.float32) * 10
        depth[rng.random((h, w)) < 0.3] = 0
        depth[rng.random((h, w)) < 0.05] = np.nan
        xy = rng.uniform(-3, max(h, w), size=(8, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 8, size=(8, 2))], axis=1)
        got = object_depths(depth, boxes)
        want = np.array([_brute_force(depth, b) for b in boxes], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_empty_boxes():
    assert object_depths(np.ones((2, 2)), np.zeros((0, 4))).shape == (0,)


def test_depth_stats():
    depth = np.array([[0, 1, 2], [np.nan, 4, 0]], dtype=np.float32)
    s = depth_stats(depth)
    assert s == {"min": 1.0, "max": 4.0, "mean": 7 / 3, "median": 2.0}
    assert all(type(v) is float for v in s.values())
    assert depth_stats(np.zeros((3, 3))) == {"min": None, "max": None, "mean": None, "median": None}
