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


# -- the stored map (config level1.depth.store_map) ----------------------------------------------------
def encode_depth_map(depth: np.ndarray, lo: float | None, hi: float | None, max_side: int = 512) -> str | None:
    """The map as a base64 16-bit grayscale PNG, resized (area average) so its longer side is at
    most `max_side`. Pixel 0 = no measurement (zero / non-finite, as above); valid values map
    linearly from [lo, hi] (the image's depth_stats min / max) onto 1..65535, so `decode_depth_map`
    restores them to within (hi - lo) / 65534. None when the map has no valid pixel."""
    import base64
    import io

    from PIL import Image

    if lo is None or hi is None:
        return None
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth != 0)
    h, w = depth.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # Resize values and validity separately, so invalid pixels do not drag averages to zero.
        filled = Image.fromarray(np.where(valid, depth, 0).astype(np.float32), mode="F").resize(size, Image.BOX)
        weight = Image.fromarray(valid.astype(np.float32), mode="F").resize(size, Image.BOX)
        wsum = np.asarray(weight, np.float32)
        depth = np.where(wsum > 0.5, np.asarray(filled, np.float32) / np.maximum(wsum, 1e-6), 0)
        valid = wsum > 0.5
    lo, hi = float(np.float32(lo)), float(np.float32(hi))  # the float32 values the schema stores
    span = hi - lo if hi > lo else 1.0
    q = np.where(valid, 1 + np.rint(np.clip((depth - lo) / span, 0, 1) * 65534), 0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG", optimize=True)  # uint16 -> mode "I;16"
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_depth_map(stats: dict | None) -> np.ndarray | None:
    """The stored map of a level-1 row's `depth_stats` as float32 (0 = no measurement), or None."""
    import base64
    import io

    from PIL import Image

    if not stats or not stats.get("map_png"):
        return None
    q = np.asarray(Image.open(io.BytesIO(base64.b64decode(stats["map_png"]))), dtype=np.float64)
    lo, hi = float(stats["min"]), float(stats["max"])
    span = hi - lo if hi > lo else 1.0
    return np.where(q > 0, lo + (q - 1) / 65534 * span, 0).astype(np.float32)
