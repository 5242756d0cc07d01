"""COCO run-length encoded masks through pycocotools.

pycocotools compresses, decodes and measures every RLE. The one step done here is finding a mask's
column runs for `encode_masks`, because pycocotools can only encode whole Fortran-ordered frames
(too slow at SA-1B size, see encode_masks); its output is byte-identical to pycocotools' own.

The one mask format of grand's records is COCO *compressed* RLE as plain JSON:
    {"size": [height, width], "counts": "<ascii str>"}
pycocotools works on bytes counts and on Fortran-ordered (H, W, N) uint8 arrays; the helpers here
hide both, so the rest of the code passes (H, W) / (N, H, W) bool arrays and str counts.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from grand.core.geometry import box_iou

RLE = dict  # {"size": [h, w], "counts": str}


# -- conversion between our JSON form and pycocotools' form ------------------------------------
def _to_coco(rle: RLE) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    elif not isinstance(counts, bytes):
        raise ValueError("expected compressed RLE (str/bytes counts); use ann_to_rle for counts lists")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _from_coco(rle: dict) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


# -- encode / decode --------------------------------------------------------------------------
def encode_masks(masks: np.ndarray) -> list[RLE]:
    """Encode (N, H, W) boolean masks (any memory layout) into compressed RLEs.

    The RLEs are byte-identical to `mask_utils.encode` of the whole frames (tests/test_rle.py checks
    it), but the work is proportional to the masks' bounding boxes, not to N x H x W: pycocotools
    wants the masks as one Fortran-ordered (H, W, N) array, and transposing SAM's C-ordered output
    into that order cost more than a second per SA-1B image (75 masks, 1500 x 2250). Here each mask
    is cut to its tight box, the box's column runs are placed in the full frame (COCO RLE runs down
    columns, starting with background) and pycocotools compresses the counts.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"encode_masks expects (N, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    if masks.dtype != bool:
        masks = masks.astype(bool)
    n, height, width = masks.shape
    if height == 0 or width == 0:  # nothing to crop; pycocotools handles the degenerate frame
        return _encode_full_frames(masks)
    counts = [_counts_in_frame(*_tight_crop(m), height, width) for m in masks]
    coco = mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
    return [_from_coco(r) for r in coco]


def _encode_full_frames(masks: np.ndarray) -> list[RLE]:
    """pycocotools on the whole (N, H, W) frames: the transposing copy into (H, W, N) Fortran order
    (the slow path encode_masks avoids; kept for degenerate frames and as the reference)."""
    stacked = np.asfortranarray(np.moveaxis(masks.astype(bool), 0, -1).astype(np.uint8))
    return [_from_coco(r) for r in mask_utils.encode(stacked)]


def _tight_crop(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(crop, top, left): the mask cut to the box of its foreground; an empty mask gives a 0 x 0 crop.
    The second scan only covers the band of rows (or columns) the first one found."""
    if mask.strides[0] < mask.strides[1]:  # column-major (as the segmenter returns it): columns first
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) == 0:
            return mask[:0, :0], 0, 0
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        rows = np.flatnonzero(mask[:, x0:x1].any(axis=1))
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
    else:
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            return mask[:0, :0], 0, 0
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        cols = np.flatnonzero(mask[y0:y1].any(axis=0))
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return mask[y0:y1, x0:x1], y0, x0


def _counts_in_frame(crop: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO counts (alternating background/foreground run lengths, column-major, first
    run background and possibly 0) of a (height, width) frame holding `crop` at (top, left)."""
    h, w = crop.shape
    if h == 0 or w == 0:
        return np.array([height * width], dtype=np.int64)
    # each crop column with a background pixel above and below: changes then alternate start, end
    padded = np.zeros((w, h + 2), dtype=bool)
    padded[:, 1:-1] = crop.T
    change = np.flatnonzero(padded[:, 1:] != padded[:, :-1])
    col, row = np.divmod(change, h + 1)  # row: the crop row where a run starts, or ends (exclusive)
    pos = (left + col) * height + top + row  # column-major index in the full frame
    starts, ends = pos[0::2], pos[1::2]
    # a run reaching the frame's bottom continues at the top of the next column
    joined = starts[1:] == ends[:-1]
    if joined.any():
        starts = starts[np.concatenate([[True], ~joined])]
        ends = ends[np.concatenate([~joined, [True]])]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1:-1:2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return counts if counts[-1] else counts[:-1]  # pycocotools ends on the last run, never on 0


def encode_mask(mask: np.ndarray) -> RLE:
    """Encode one (H, W) boolean mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects (H, W), got shape {mask.shape}")
    return encode_masks(mask[None])[0]


def decode_mask(rle: RLE) -> np.ndarray:
    """(H, W) bool mask of one compressed RLE."""
    return decode_masks([rle])[0]


def decode_masks(rles: Sequence[RLE]) -> np.ndarray:
    """(N, H, W) bool masks of same-size compressed RLEs, one pycocotools call."""
    if len(rles) == 0:
        raise ValueError("decode_masks needs at least one RLE (the size is unknown otherwise)")
    with warnings.catch_warnings():
        # pycocotools 2.0.x under numpy 2 warns about its own __array__ on every decode; harmless.
        warnings.filterwarnings("ignore", message=".*__array__ implementation", category=DeprecationWarning)
        masks = mask_utils.decode([_to_coco(r) for r in rles])
    return np.moveaxis(masks, -1, 0).astype(bool)


def empty_rle(height: int, width: int) -> RLE:
    return encode_mask(np.zeros((height, width), dtype=bool))


# -- measures ---------------------------------------------------------------------------------
def mask_area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_to_coco(rle)))


def mask_iou(rles_a: Sequence[RLE], rles_b: Sequence[RLE]) -> np.ndarray:
    """(N, M) float64 mask IoU; all masks must have the same size. Empty unions give 0."""
    n, m = len(rles_a), len(rles_b)
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.float64)
    a = [_to_coco(r) for r in rles_a]
    b = [_to_coco(r) for r in rles_b]
    # iscrowd=0 for every b: plain intersection over union (crowd would divide by area(a) only).
    iou = mask_utils.iou(a, b, [0] * m)
    return np.asarray(iou, dtype=np.float64).reshape(n, m)


def mask_to_bbox(rle: RLE) -> list[float]:
    """Tight box [x1, y1, x2, y2] in pixel-edge coordinates (same convention as grand.core.geometry).

    pycocotools' toBbox returns [x, y, w, h] with the box's far edges at x + w, y + h, so a single
    foreground pixel at column 3, row 5 gives [3, 5, 4, 6]. An empty mask gives [0, 0, 0, 0].
    """
    x, y, w, h = (float(v) for v in mask_utils.toBbox(_to_coco(rle)))
    return [x, y, x + w, y + h]


# -- annotations from datasets (COCO json, SA-1B sidecars) ------------------------------------
def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterise COCO polygons ([[x1, y1, x2, y2, ...], ...]) into one RLE (their union).

    Polygons with fewer than three points cannot be rasterised and are skipped (pycocotools
    rejects them); if none is left the mask is empty.
    """
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
    if not polys:
        return empty_rle(height, width)
    parts = mask_utils.frPyObjects(polys, int(height), int(width))
    return _from_coco(mask_utils.merge(parts))


def ann_to_rle(segmentation, height: int, width: int) -> RLE:
    """Any COCO-style segmentation -> compressed RLE of size (height, width).

    Accepts a polygon list, an uncompressed RLE (`counts` is a list of ints, as COCO crowd
    annotations) or a compressed RLE (`counts` str/bytes, as SA-1B sidecars). A compressed RLE
    whose size differs from (height, width) is refused: it belongs to another image (or to the
    image before an EXIF rotation) and reusing it would silently misplace the mask.
    """
    if isinstance(segmentation, (list, tuple)):
        return polygons_to_rle(segmentation, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    size = [int(s) for s in segmentation.get("size", (height, width))]
    if size != [int(height), int(width)]:
        raise ValueError(f"segmentation size {size} does not match the image size {[height, width]}")
    counts = segmentation["counts"]
    if isinstance(counts, (list, tuple)):
        return _from_coco(mask_utils.frPyObjects({"size": size, "counts": list(counts)}, size[0], size[1]))
    return _from_coco(_to_coco({"size": size, "counts": counts}))


# -- matching detector boxes to ground-truth masks -------------------------------------------
def best_box_matches(boxes, candidate_boxes, min_iou: float) -> np.ndarray:
    """(N,) int64: for each box, the index of the candidate with the highest box IoU, or -1 when
    that IoU is below `min_iou`. Ties go to the lower candidate index.

    Used to reuse SA-1B ground-truth masks for detected objects (reference: IoU >= 0.65); several
    boxes may pick the same candidate, as in the reference.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    candidates = np.asarray(candidate_boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full(len(boxes), -1, dtype=np.int64)
    if len(boxes) == 0 or len(candidates) == 0:
        return out
    iou = box_iou(boxes, candidates)
    best = iou.argmax(axis=1)  # argmax returns the first maximum: lowest index on ties
    ok = iou[np.arange(len(boxes)), best] >= min_iou
    out[ok] = best[ok]
    return out
