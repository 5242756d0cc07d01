"""prepare_image / open_rgb on the shared corpus of awkward files, plus the SA-1B sidecar parser."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bad_inputs import (
    CORPUS_REASONS,
    CORPUS_SIZES,
    EXIF_QUADRANTS,
    EXIF_STORED_SIZE,
    png_header,
    write_bad_input_corpus,
)
from grand.core.rle import decode_mask, encode_mask
from grand.io.images import ImageDecodeError, open_rgb, prepare_image
from grand.io.sa1b import parse_sa1b_sidecar

MAX_PIXELS = 89_478_485


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expected = write_bad_input_corpus(root)
    return {name: ((root / name).read_bytes(), status) for name, status in expected.items()}


def _prepared(corpus, name: str) -> tuple[bytes, np.ndarray]:
    data, w, h = prepare_image(corpus[name][0], MAX_PIXELS)
    im = open_rgb(data)
    assert im.mode == "RGB" and im.size == (w, h)
    return data, np.asarray(im)


def test_corpus_covers_the_promised_cases(corpus):
    statuses = {name: status for name, (_, status) in corpus.items()}
    assert {n for n, s in statuses.items() if s == "error"} == set(CORPUS_REASONS)
    assert {n for n, s in statuses.items() if s == "ok"} == set(CORPUS_SIZES)
    assert len(corpus["bomb.png"][0]) < 1024  # the bomb is small on disk, large only in its header


def test_every_corpus_file_gets_its_expected_status_and_reason(corpus):
    for name, (data, status) in corpus.items():
        if status == "error":
            with pytest.raises(ImageDecodeError) as info:
                prepare_image(data, MAX_PIXELS)
            assert CORPUS_REASONS[name] in info.value.reason, (name, info.value.reason)
            assert str(info.value) == info.value.reason
        else:
            out, w, h = prepare_image(data, MAX_PIXELS)
            assert (w, h) == CORPUS_SIZES[name], name
            im = open_rgb(out)
            assert im.mode == "RGB" and im.size == (w, h), name


def test_reasons_are_specific(corpus):
    reasons = {}
    for name in CORPUS_REASONS:
        with pytest.raises(ImageDecodeError) as info:
            prepare_image(corpus[name][0], MAX_PIXELS)
        reasons[name] = info.value.reason
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["corrupt.jpg"].startswith("not an image: cannot identify")
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["bomb.png"] == "decompression bomb: 900000000 pixels exceeds max_image_pixels=89478485"


def test_plain_jpeg_and_png_are_passed_through_unchanged(corpus):
    for name in ("good.jpg", "good.png", "gray.jpg", "gray.png"):
        data = corpus[name][0]
        assert prepare_image(data, MAX_PIXELS)[0] is data, name


def test_everything_else_is_reencoded_as_png(corpus):
    for name in set(CORPUS_SIZES) - {"good.jpg", "good.png", "gray.jpg", "gray.png"}:
        out, _, _ = prepare_image(corpus[name][0], MAX_PIXELS)
        assert out[:8] == b"\x89PNG\r\n\x1a\n", name
        assert Image.open(io.BytesIO(out)).mode == "RGB", name


def test_pixel_limit_is_checked_from_the_header_of_a_real_image(corpus):
    data = corpus["good.png"][0]  # 64×48 = 3072 pixels
    assert prepare_image(data, 3072)[1:] == (64, 48)
    with pytest.raises(ImageDecodeError, match="decompression bomb: 64×48 pixels exceeds max_image_pixels=3071"):
        prepare_image(data, 3071)


def test_our_limit_not_pils_decides_and_pils_stays_on(corpus):
    # Between PIL's default (89 Mpx, a warning) and twice that (PIL refuses), the configured limit
    # decides; above, PIL refuses at open and the reason still names the pixels and our key.
    header = png_header(10_000, 10_000)  # 100 Mpx
    with pytest.raises(ImageDecodeError, match="10000×10000 pixels exceeds max_image_pixels=99999999"):
        prepare_image(header, 99_999_999)
    for limit in (1_000, 178_956_970):
        with pytest.raises(ImageDecodeError, match=f"900000000 pixels exceeds max_image_pixels={limit}"):
            prepare_image(corpus["bomb.png"][0], limit)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # not disabled for the whole process


def test_exif_rotation_swaps_size_and_rotates_pixels(corpus):
    data = corpus["exif_rotated.jpg"][0]
    assert Image.open(io.BytesIO(data)).size == EXIF_STORED_SIZE
    _, a = _prepared(corpus, "exif_rotated.jpg")
    h, w = a.shape[:2]
    assert (w, h) == (EXIF_STORED_SIZE[1], EXIF_STORED_SIZE[0])
    # Orientation 6: rotate the stored image 90° clockwise. Stored top-left ends up top-right,
    # stored top-right bottom-right, stored bottom-left top-left, stored bottom-right bottom-left.
    tl, tr, bl, br = (np.array(c) for c in EXIF_QUADRANTS)
    qh, qw = h // 4, w // 4
    assert np.abs(a[qh, w - qw].astype(int) - tl).max() < 40
    assert np.abs(a[h - qh, w - qw].astype(int) - tr).max() < 40
    assert np.abs(a[qh, qw].astype(int) - bl).max() < 40
    assert np.abs(a[h - qh, qw].astype(int) - br).max() < 40


def test_16_bit_is_scaled_not_clipped(corpus):
    _, a = _prepared(corpus, "gray16.png")
    ramp = a[0, :, 0].astype(int)
    expected = np.rint(np.linspace(0, 65535, 256).round() / 257).astype(int)  # 0..255, one step per column
    assert np.array_equal(ramp, expected)
    assert (a[2] == 100).all()  # 257 * 100 -> 100
    assert (a[3] == 255).all()  # 65535 -> 255
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])


def test_alpha_is_composited_on_white(corpus):
    _, pal = _prepared(corpus, "palette_transparent.png")
    assert (pal[:, :16] == 255).all()  # transparent index -> white, not black
    assert (pal[:, 16:] == [255, 0, 0]).all()
    _, rgba = _prepared(corpus, "rgba.png")
    src = np.asarray(Image.open(io.BytesIO(corpus["rgba.png"][0])))
    alpha = src[..., 3:4].astype(float) / 255
    want = np.rint(src[..., :3] * alpha + 255 * (1 - alpha))
    assert np.abs(rgba.astype(float) - want).max() <= 1
    assert (rgba[0] > 250).all()  # row 0 is fully transparent in the gradient alpha


def test_other_modes_decode_to_sensible_rgb(corpus):
    _, cmyk = _prepared(corpus, "cmyk.jpg")
    _, good = _prepared(corpus, "good.png")
    small = np.asarray(Image.fromarray(good).resize((32, 24)))
    assert np.abs(cmyk.astype(int) - small.astype(int)).mean() < 40
    _, bilevel = _prepared(corpus, "bilevel.png")
    assert set(np.unique(bilevel)) <= {0, 255}
    _, flt = _prepared(corpus, "float.tif")
    _, gray = _prepared(corpus, "gray.png")
    assert np.abs(flt.astype(int) - gray.astype(int)).max() <= 1  # [0, 1] floats -> 0..255


def test_animated_gif_uses_the_first_frame(corpus):
    _, a = _prepared(corpus, "animated.gif")
    assert (a == [255, 0, 0]).all()


def test_open_rgb_returns_loaded_rgb(corpus):
    im = open_rgb(corpus["gray.jpg"][0])
    assert im.mode == "RGB" and im.size == (32, 24)


# -- SA-1B sidecars ----------------------------------------------------------------------------
def _sidecar(height: int = 6, width: int = 8) -> tuple[str, np.ndarray]:
    mask = np.zeros((height, width), dtype=bool)
    mask[1:4, 2:7] = True
    rle = encode_mask(mask)
    doc = {
        "image": {"image_id": 7, "width": width, "height": height, "file_name": "sa_7.jpg"},
        "annotations": [
            {"id": 1, "segmentation": rle, "bbox": [2, 1, 5, 3], "area": 15, "predicted_iou": 0.9},
            {"id": 2, "segmentation": rle, "area": 15},  # no bbox: derived from the mask
        ],
    }
    return json.dumps(doc), mask


def test_sa1b_sidecar_gives_boxes_and_masks():
    text, mask = _sidecar()
    anns = parse_sa1b_sidecar(text)
    assert [a["bbox_xyxy"] for a in anns] == [[2.0, 1.0, 7.0, 4.0], [2.0, 1.0, 7.0, 4.0]]
    for a in anns:
        assert a["segmentation"]["size"] == [6, 8] and isinstance(a["segmentation"]["counts"], str)
        assert np.array_equal(decode_mask(a["segmentation"]), mask)


def test_sa1b_sidecar_without_annotations_is_empty():
    assert parse_sa1b_sidecar(json.dumps({"image": {}, "annotations": []})) == []


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "no 'annotations' list"),
        (json.dumps({"annotations": [{"bbox": [0, 0, 1, 1]}]}), "annotations[0]: missing 'segmentation'"),
        (json.dumps({"annotations": [{"segmentation": {"size": [2], "counts": "x"}}]}), "annotations[0]"),
    ],
)
def test_malformed_sa1b_sidecar_raises_with_reason(text, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_sa1b_sidecar(text)


def test_sa1b_mask_of_another_size_is_refused():
    text, _ = _sidecar()
    doc = json.loads(text)
    doc["image"]["height"] = 12
    with pytest.raises(ValueError, match=r"annotations\[0\].*does not match"):
        parse_sa1b_sidecar(json.dumps(doc))
