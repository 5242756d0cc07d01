"""Per-object depth from a dense depth map (reference: MiDaS; object depth = median of the depth
map inside the box, zeros ignored).

Zero (and non-finite) depth values are treated as "no measurement": MiDaS-style relative maps use
0 for invalid pixels, and a NaN/inf must not poison a median or the image statistics.
"""

from __future__ import annotations

import numpy as np


def _valid(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values) & (values != 0)]


def object_depths(depth: np.ndarray, boxes) -> np.ndarray:
    """(N,) float32 median depth inside each xyxy box; NaN where the box holds no valid pixel.

    A box covers the pixels [floor(x1), ceil(x2)) x [floor(y1), ceil(y2)), clipped to the map,
    i.e. every pixel the box touches. A box thinner than one pixel still samples the pixel it
    lies on; a box entirely outside the map gets NaN.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"object_depths expects an (H, W) depth map, got shape {depth.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = depth.shape
    out = np.full(len(boxes), np.nan, dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        if not np.all(np.isfinite((x1, y1, x2, y2))):
            continue
        c1, r1 = int(np.floor(x1)), int(np.floor(y1))
        c2, r2 = max(int(np.ceil(x2)), c1 + 1), max(int(np.ceil(y2)), r1 + 1)
        c1, c2 = max(c1, 0), min(c2, w)
        r1, r2 = max(r1, 0), min(r2, h)
        if c2 <= c1 or r2 <= r1:
            continue
        values = _valid(depth[r1:r2, c1:c2])
        if values.size:
            out[k] = np.median(values)
    return out


def depth_stats(depth: np.ndarray) -> dict:
    """min / max / mean / median of the valid (non-zero, finite) pixels as Python floats, or all
    None when the map has no valid pixel."""
    values = _valid(np.asarray(depth, dtype=np.float64))
    if values.size == 0:
        return {"min": None, "max": None, "mean": None, "median": None}
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
    }
