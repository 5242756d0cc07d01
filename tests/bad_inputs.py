"""A small corpus of awkward image files, shared by the decode tests and the end-to-end runs.

`write_bad_input_corpus(folder)` writes every file (flat, well under a second, a few KB each) and
returns {relative path: "ok" | "error"}. `CORPUS_REASONS` gives the expected substring of the
error reason for the "error" files and `CORPUS_SIZES` the upright (width, height) of the "ok" ones.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Orientation 6 = "rotate 90° clockwise to display": stored 60×40, shown 40×60.
EXIF_STORED_SIZE = (60, 40)
# Quadrant colours of the EXIF test image as stored (top-left, top-right, bottom-left, bottom-right).
EXIF_QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
BOMB_SIZE = (30000, 30000)

CORPUS_REASONS: dict[str, str] = {
    "corrupt.jpg": "not an image",
    "truncated.jpg": "truncated",
    "empty.jpg": "empty file",
    "text.png": "not an image",
    "bomb.png": "decompression bomb: 30000×30000 pixels",
}

CORPUS_SIZES: dict[str, tuple[int, int]] = {
    "good.jpg": (64, 48),
    "good.png": (64, 48),
    "good.webp": (64, 48),
    "gray.jpg": (32, 24),
    "gray.png": (32, 24),
    "rgba.png": (32, 24),
    "la.png": (32, 24),
    "cmyk.jpg": (32, 24),
    "gray16.png": (256, 4),
    "palette_transparent.png": (32, 24),
    "bilevel.png": (32, 24),
    "float.tif": (32, 24),
    "exif_rotated.jpg": (EXIF_STORED_SIZE[1], EXIF_STORED_SIZE[0]),
    "animated.gif": (20, 10),
}


def write_bad_input_corpus(folder: str | Path) -> dict[str, str]:
    """Write the corpus into `folder` (created if needed); returns {relative path: expected status}."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    files = _corpus_bytes()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: ("error" if name in CORPUS_REASONS else "ok") for name in files}


# -- builders ----------------------------------------------------------------------------------
def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _noise_jpeg() -> bytes:
    # Noise compresses badly, so half of the file cuts deep into the entropy-coded scan.
    rng = np.random.default_rng(0)
    return _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"), "JPEG", quality=90)


def _exif_rotated_jpeg() -> bytes:
    w, h = EXIF_STORED_SIZE
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = EXIF_QUADRANTS[0], EXIF_QUADRANTS[1]
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = EXIF_QUADRANTS[2], EXIF_QUADRANTS[3]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return _encode(Image.fromarray(a, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png() -> bytes:
    # A valid PNG header claiming 30000×30000 1-bit pixels, with only a few rows of data: a reader
    # that trusts the header would allocate ~900 Mpx; the file is under 100 bytes.
    w, h = BOMB_SIZE
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((w + 7) // 8 + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def _gray16_png() -> bytes:
    # Row 0 spans the full 16-bit range; a clipping converter would make nearly all of it white.
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    a = np.stack([ramp, ramp, np.full(256, 257 * 100, np.uint16), np.full(256, 65535, np.uint16)])
    return _encode(Image.fromarray(a), "PNG")


def _palette_transparent_png() -> bytes:
    im = Image.new("P", (32, 24), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (16, 0, 32, 24))  # right half red, left half index 0 = transparent
    return _encode(im, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _corpus_bytes() -> dict[str, bytes]:
    good = _gradient(64, 48)
    small = _gradient(32, 24)
    rgba = small.convert("RGBA")
    # alpha 0 (row 0, fully transparent) to 255 (last row, opaque)
    alpha = np.linspace(0, 255, small.height).round().astype(np.uint8)[:, None].repeat(small.width, 1)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    jpeg = _noise_jpeg()
    files = {
        "good.jpg": _encode(good, "JPEG", quality=90),
        "good.png": _encode(good, "PNG"),
        "good.webp": _encode(good, "WEBP", lossless=True),
        "corrupt.jpg": random.Random(0).randbytes(2048),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "text.png": b"this is not a picture, just a text file with a .png name\n",
        "bomb.png": _bomb_png(),
        "gray.jpg": _encode(small.convert("L"), "JPEG"),
        "gray.png": _encode(small.convert("L"), "PNG"),
        "rgba.png": _encode(rgba, "PNG"),
        "la.png": _encode(rgba.convert("LA"), "PNG"),
        "cmyk.jpg": _encode(small.convert("CMYK"), "JPEG"),
        "gray16.png": _gray16_png(),
        "palette_transparent.png": _palette_transparent_png(),
        "bilevel.png": _encode(small.convert("1"), "PNG"),
        "float.tif": _encode(Image.fromarray(np.asarray(small.convert("L"), np.float32) / 255.0, "F"), "TIFF"),
        "exif_rotated.jpg": _exif_rotated_jpeg(),
        "animated.gif": _animated_gif(),
    }
    return files
