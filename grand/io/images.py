"""Robust image decoding: validate once on CPU, then decode cheaply in every model stage.

`prepare_image` is the single gate every input image passes. It refuses what cannot become a
training image (empty, not an image, truncated, decompression bomb) with an `ImageDecodeError`
whose message is the short reason stored in the row's `error` column, and it normalises what it
accepts so that `open_rgb` never has to think: the returned bytes decode straight to the correctly
oriented RGB image. Plain RGB / grayscale JPEG and PNG files without EXIF rotation (the vast
majority) are passed through untouched; everything else is re-encoded once, losslessly, as PNG.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from grand.models.preprocess import padded_size

# Decoders grand lets PIL use: the formats of photo datasets. PIL would otherwise sniff every format
# it knows, EPS included (which runs Ghostscript). Anything else is "not an image".
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_OPEN_FORMATS = tuple(f for f in ALLOWED_FORMATS if f != "MPO")  # PIL opens MPO with its JPEG opener

# grand enforces its own limit (InputSpec.max_image_pixels) from the header before decoding, with a
# reason that names the size. PIL's process-wide Image.MAX_IMAGE_PIXELS is left as it is: it warns
# above its default (silenced here, our limit decides) and raises above twice that, which is why
# input.max_image_pixels cannot exceed 2 x PIL's default.

# Formats whose plain RGB / L files we hand on as-is: every model stage decodes them directly.
# MPO is a JPEG with extra pictures appended (phone cameras); PIL's default frame is the photo.
_PASSTHROUGH_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
_PREPARED_FORMATS = ("JPEG", "PNG")  # what prepare_image returns (MPO opens as JPEG; re-encodes are PNG)

# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# PNG level 1: re-encoding happens for a minority of images, on the CPU path of every run; the
# higher levels cost several times the CPU for ~10 % smaller bytes that only live between stages.
_PNG_COMPRESS_LEVEL = 1


class ImageDecodeError(ValueError):
    """An input that cannot be used as an image; `reason` is short and goes into the error row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def prepare_image(data: bytes, max_pixels: int) -> tuple[bytes, int, int]:
    """Validate and normalise one encoded image.

    Returns (bytes, width, height): `open_rgb(bytes)` gives the upright RGB image of that size.
    Raises ImageDecodeError for empty / non-image / truncated / corrupt data and for images with
    more than `max_pixels` pixels (checked from the header, before any pixel is decoded).
    """
    if not data:
        raise ImageDecodeError("empty file")
    with warnings.catch_warnings():
        # PIL warns about odd-but-readable files (bad EXIF, palette quirks); the row says enough.
        warnings.simplefilter("ignore")
        im = _open_header(data, max_pixels)
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"decompression bomb: {width}×{height} pixels exceeds max_image_pixels={max_pixels}"
            )
        pad_w, pad_h = padded_size(width, height)
        if pad_w * pad_h > max_pixels:
            # the detectors and depth models pad extreme strips to MAX_ASPECT:1 (grand.models.preprocess)
            raise ImageDecodeError(
                f"extreme aspect ratio: {width}×{height} would be padded to {pad_w}×{pad_h} pixels for the "
                f"models, over max_image_pixels={max_pixels}"
            )
        try:
            im.seek(0)  # animated images (GIF, APNG, WebP): the first frame is the image
            im.load()  # full decode: truncation only shows up here
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
            raise ImageDecodeError(f"corrupt or truncated image: {_describe(exc)}") from None
        fix = _ORIENTATION_FIX.get(_exif_orientation(im))
        if fix is None and _is_passthrough(im):
            return data, width, height
        try:
            rgb = _to_rgb(im)
        except Exception as exc:
            raise ImageDecodeError(f"cannot convert {im.mode} image to RGB: {_describe(exc)}") from None
    if fix is not None:
        rgb = rgb.transpose(fix)
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue(), rgb.width, rgb.height


def open_rgb(data: bytes) -> Image.Image:
    """Decode bytes returned by `prepare_image` to a loaded RGB image (no further checks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # prepare_image checked the size
        im = Image.open(io.BytesIO(data), formats=_PREPARED_FORMATS)
        if im.mode != "RGB":
            im = im.convert("RGB")  # grayscale pass-through files
        else:
            im.load()
    return im


# -- helpers -----------------------------------------------------------------------------------
def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not an image: cannot identify image format (accepted: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as exc:  # over twice PIL's default: PIL refuses at open
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{pixels.group(1)} pixels" if pixels else str(exc)
        raise ImageDecodeError(f"decompression bomb: {size} exceeds max_image_pixels={max_pixels}") from None
    except Exception as exc:  # a recognised format whose header is broken
        raise ImageDecodeError(f"corrupt image header: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        # Unreadable EXIF is common on old cameras; it must not reject a good image.
        return 1


def _is_passthrough(im: Image.Image) -> bool:
    if im.format not in _PASSTHROUGH_FORMATS or im.mode not in ("RGB", "L"):
        return False
    if im.format == "PNG" and (getattr(im, "is_animated", False) or "transparency" in im.info):
        return False  # tRNS colour keys mean alpha, which must be composited like RGBA
    return True


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha is composited on white so transparent areas look like paper."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(im)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")  # also applies palette / colour-key transparency
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    return im.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, RGBX ...


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """Scale 16-bit / 32-bit int / float pixels to 0..255 (PIL's own convert would clip at 255)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _round_u8(a.astype(np.float64) / 257.0)  # 65535 -> 255 exactly
    if im.mode == "I":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 65535:
            return _round_u8(a.astype(np.float64) / 257.0)  # 16-bit data widened to 32 bits
        return _stretch(a.astype(np.float64))
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        return _round_u8(a * 255.0)  # the usual normalised float image
    return _stretch(a)


def _stretch(a: np.ndarray) -> np.ndarray:
    # Values outside any known range (signed ints, HDR floats): use the image's own range.
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return _round_u8((a - lo) * (255.0 / (hi - lo)))


def _round_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
