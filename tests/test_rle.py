"""COCO RLE helpers: round trips, areas, IoU and boxes against numpy and pycocotools itself."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from conftest import TINYCOCO, needs_shared

from grand.core.rle import (
    ann_to_rle,
    best_box_matches,
    decode_mask,
    empty_rle,
    encode_mask,
    encode_masks,
    mask_area,
    mask_iou,
    mask_to_bbox,
    polygons_to_rle,
)


def _random_masks(rng, n, h, w):
    kind = rng.integers(0, 3)
    if kind == 0:
        return rng.random((n, h, w)) < rng.uniform(0.05, 0.95)
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):  # rectangles and blobs, sometimes empty, sometimes full
        if rng.random() < 0.1:
            continue
        y1, x1 = rng.integers(0, h), rng.integers(0, w)
        masks[k, y1 : rng.integers(y1, h + 1), x1 : rng.integers(x1, w + 1)] = True
    return masks


def _np_iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0


def test_round_trip_random_masks_non_square():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        masks = _random_masks(rng, int(rng.integers(1, 5)), h, w)
        rles = encode_masks(masks)
        assert len(rles) == len(masks)
        for mask, rle in zip(masks, rles):
            assert rle["size"] == [h, w]
            assert isinstance(rle["counts"], str)
            decoded = decode_mask(rle)
            assert decoded.dtype == bool and decoded.shape == (h, w)
            assert np.array_equal(decoded, mask)
            assert encode_mask(mask) == rle


def test_asymmetric_mask_is_not_transposed():
    # a C-ordered array must not be encoded as its transpose (the Fortran-order pitfall)
    m = np.zeros((3, 7), dtype=bool)
    m[0, 6] = True
    m[2, 0:2] = True
    rle = encode_mask(m)
    assert np.array_equal(decode_mask(rle), m)
    assert mask_to_bbox(rle) == [0.0, 0.0, 7.0, 3.0]


def test_counts_are_json_serialisable():
    rle = encode_mask(np.eye(9, dtype=bool))
    back = json.loads(json.dumps(rle))
    assert back == rle
    assert np.array_equal(decode_mask(back), np.eye(9, dtype=bool))
    # bytes counts as pycocotools produces them are accepted too
    assert np.array_equal(decode_mask({"size": rle["size"], "counts": rle["counts"].encode()}), np.eye(9, dtype=bool))


def test_area_and_iou_match_numpy_and_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        a = _random_masks(rng, int(rng.integers(1, 5)), h, w)
        b = _random_masks(rng, int(rng.integers(1, 5)), h, w)
        ra, rb = encode_masks(a), encode_masks(b)
        for m, r in zip(a, ra):
            assert mask_area(r) == int(m.sum())
            assert mask_area(r) == int(mask_utils.area({"size": r["size"], "counts": r["counts"].encode()}))
        got = mask_iou(ra, rb)
        assert got.shape == (len(a), len(b))
        want = np.array([[_np_iou(x, y) for y in b] for x in a])
        np.testing.assert_allclose(got, want, atol=1e-9)
        coco = mask_utils.iou(
            [{"size": r["size"], "counts": r["counts"].encode()} for r in ra],
            [{"size": r["size"], "counts": r["counts"].encode()} for r in rb],
            [0] * len(rb),
        )
        np.testing.assert_allclose(got, np.asarray(coco), atol=1e-12)


def test_mask_iou_empty_inputs():
    r = encode_mask(np.ones((4, 4), bool))
    assert mask_iou([], [r]).shape == (0, 1)
    assert mask_iou([r, r], []).shape == (2, 0)


def test_mask_to_bbox_is_xyxy_pixel_edges():
    m = np.zeros((10, 12), dtype=bool)
    m[5, 3] = True
    assert mask_to_bbox(encode_mask(m)) == [3.0, 5.0, 4.0, 6.0]
    m[2:8, 4:11] = True
    assert mask_to_bbox(encode_mask(m)) == [3.0, 2.0, 11.0, 8.0]
    assert mask_to_bbox(empty_rle(5, 5)) == [0.0, 0.0, 0.0, 0.0]


def test_polygon_to_rle():
    # axis-aligned square 2..8 x 1..6 in a 10 x 12 image
    poly = [2, 1, 8, 1, 8, 6, 2, 6]
    rle = polygons_to_rle([poly], 10, 12)
    assert rle["size"] == [10, 12] and isinstance(rle["counts"], str)
    m = decode_mask(rle)
    want = decode_mask(mask_utils.merge(mask_utils.frPyObjects([poly], 10, 12)))  # bytes counts
    assert np.array_equal(m, want)
    ys, xs = np.nonzero(m)
    assert 2 <= xs.min() and xs.max() <= 8 and 1 <= ys.min() and ys.max() <= 6
    assert abs(int(m.sum()) - 30) <= 12  # area close to the polygon's 6 x 5
    # two polygons: their union; a degenerate 2-point polygon is skipped
    two = polygons_to_rle([poly, [9, 8, 11, 8, 11, 9, 9, 9], [0, 0, 1, 1]], 10, 12)
    assert mask_area(two) > mask_area(rle)
    assert mask_area(polygons_to_rle([[0, 0, 1, 1]], 10, 12)) == 0


def test_ann_to_rle_accepts_all_coco_forms():
    rng = np.random.default_rng(2)
    m = rng.random((6, 9)) < 0.4
    compressed = encode_mask(m)
    # compressed with str and bytes counts
    assert np.array_equal(decode_mask(ann_to_rle(compressed, 6, 9)), m)
    assert ann_to_rle({"size": [6, 9], "counts": compressed["counts"].encode()}, 6, 9) == compressed
    # uncompressed (COCO iscrowd) counts list: run lengths down columns, starting with zeros
    flat = m.flatten(order="F").astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    out = ann_to_rle({"size": [6, 9], "counts": runs}, 6, 9)
    assert isinstance(out["counts"], str)
    assert np.array_equal(decode_mask(out), m)
    # polygons
    assert mask_area(ann_to_rle([[0, 0, 4, 0, 4, 4, 0, 4]], 6, 9)) > 0


def test_ann_to_rle_refuses_wrong_size_and_junk():
    rle = encode_mask(np.ones((4, 5), bool))
    with pytest.raises(ValueError):
        ann_to_rle(rle, 5, 4)
    with pytest.raises(ValueError):
        ann_to_rle("nope", 4, 5)


def test_best_box_matches():
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 9]])
    cands = np.array([[50, 50, 60, 60], [0, 0, 10, 8], [0, 0, 10, 9], [0, 0, 10, 9]])
    # box 0: IoU 0.8 (cand 1), 0.9 (cands 2, 3 tie -> lower index); box 1: nothing; box 2: exact
    assert best_box_matches(boxes, cands, 0.65).tolist() == [2, -1, 2]
    assert best_box_matches(boxes, cands, 0.95).tolist() == [-1, -1, 2]
    assert best_box_matches(boxes, np.zeros((0, 4)), 0.5).tolist() == [-1, -1, -1]
    assert best_box_matches(np.zeros((0, 4)), cands, 0.5).tolist() == []


def test_encode_shape_errors_and_empty_batch():
    assert encode_masks(np.zeros((0, 3, 3), bool)) == []
    with pytest.raises(ValueError):
        encode_masks(np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        encode_mask(np.zeros((1, 3, 3), bool))


def test_decode_masks_batch():
    from grand.core.rle import decode_masks

    rng = np.random.default_rng(3)
    masks = rng.random((3, 5, 8)) < 0.5
    out = decode_masks(encode_masks(masks))
    assert out.shape == (3, 5, 8) and out.dtype == bool
    assert np.array_equal(out, masks)


# -- encode_masks works on each mask's box: byte-identical to pycocotools on the whole frame -----
def _pycocotools_encode(masks):
    """What encode_masks returned before it cropped: pycocotools on the (H, W, N) Fortran frame."""
    stacked = np.asfortranarray(np.moveaxis(np.asarray(masks, bool), 0, -1).astype(np.uint8))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in mask_utils.encode(stacked)]


def _column_major(masks):
    """The same (N, H, W) masks stored column by column, as a transposed model output would be."""
    return np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(0, 2, 1)


def test_encode_masks_is_byte_identical_to_pycocotools_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(400):
        h, w = int(rng.integers(1, 33)), int(rng.integers(1, 33))
        masks = _random_masks(rng, int(rng.integers(1, 6)), h, w)
        want = _pycocotools_encode(masks)
        assert encode_masks(masks) == want
        assert encode_masks(_column_major(masks)) == want


def test_encode_masks_edge_cases_are_byte_identical():
    h, w = 7, 5
    cases = {
        "empty": np.zeros((h, w), bool),
        "full": np.ones((h, w), bool),
        "top-left pixel": np.pad(np.ones((1, 1), bool), ((0, h - 1), (0, w - 1))),
        "bottom-right pixel": np.pad(np.ones((1, 1), bool), ((h - 1, 0), (w - 1, 0))),
        "full-height columns (runs join across columns)": np.pad(np.ones((h, 2), bool), ((0, 0), (1, w - 3))),
        "left border column": np.pad(np.ones((h, 1), bool), ((0, 0), (0, w - 1))),
        "right border column": np.pad(np.ones((h, 1), bool), ((0, 0), (w - 1, 0))),
        "top and bottom rows": np.pad(np.zeros((h - 2, w), bool), ((1, 1), (0, 0)), constant_values=True),
        "frame": np.pad(np.zeros((h - 2, w - 2), bool), 1, constant_values=True),
        "checkerboard": np.indices((h, w)).sum(0) % 2 == 1,
    }
    for name, mask in cases.items():
        assert mask.shape == (h, w), name
        assert encode_masks(mask[None]) == _pycocotools_encode(mask[None]), name
        assert np.array_equal(decode_mask(encode_mask(mask)), mask), name
    for shape in [(1, 1), (1, 9), (9, 1)]:  # one-pixel-wide frames
        for fill in (False, True):
            m = np.full(shape, fill)
            assert encode_mask(m) == _pycocotools_encode(m[None])[0], (shape, fill)
    stack = np.stack(list(cases.values()))
    assert encode_masks(stack) == _pycocotools_encode(stack)  # several masks in one call


def test_encode_masks_accepts_non_bool_masks_as_pycocotools_truthiness():
    rng = np.random.default_rng(4)
    values = rng.integers(0, 3, size=(3, 11, 13)).astype(np.uint8) * 127  # 0, 127, 254
    assert encode_masks(values) == _pycocotools_encode(values != 0)


def test_encode_masks_at_sa1b_size_matches_pycocotools():
    # SAM-like masks on a 1500 x 2250 frame: blobs of many sizes, one touching every border
    rng = np.random.default_rng(5)
    h, w = 1500, 2250
    yy, xx = np.ogrid[:h, :w]
    masks = np.zeros((6, h, w), bool)
    for k in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 600)
        masks[k] = (yy - cy) ** 2 + ((xx - cx) * 0.7) ** 2 < r**2
    masks[5] = True
    masks[5, 1:-1, 1:-1] = rng.random((h - 2, w - 2)) < 0.999
    assert encode_masks(masks) == _pycocotools_encode(masks)


@needs_shared
def test_encode_masks_matches_pycocotools_on_real_coco_masks():
    data = json.loads((TINYCOCO / "annotations" / "instances.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    per_image: dict = {}
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        per_image.setdefault(ann["image_id"], []).append(decode_mask(ann_to_rle(ann["segmentation"], h, w)))
    assert sum(len(v) for v in per_image.values()) > 200
    for masks in per_image.values():
        masks = np.stack(masks)
        assert encode_masks(masks) == _pycocotools_encode(masks)
