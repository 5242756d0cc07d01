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
    "bomb.png": "decompression bomb: 900000000 pixels exceeds max_image_pixels",
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
    return png_header(*BOMB_SIZE)


def png_header(w: int, h: int) -> bytes:
    """A PNG claiming w×h 1-bit pixels with only 4 rows of data (truncated when decoded)."""
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


# -- hostile inputs (issue 13): files that must be refused without being read ---------------------
STRIP_SIZE = (40000, 50)  # 2 Mpx, but padded to 4:1 for the detectors it would be 400 Mpx
EPS_BYTES = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"

HOSTILE_REASONS: dict[str, str] = {
    "fifo.jpg": "not a regular file (FIFO)",
    "zero.jpg": "symlink resolves outside the input root",  # to /dev/zero, which reads forever
    "outside.jpg": "symlink resolves outside the input root",
    "huge.png": "over input.max_file_bytes=",
    "bomb.png": "decompression bomb",
    "strip.png": "extreme aspect ratio: 40000×50 would be padded to 40000×10000",
    "postscript.jpg": "not an image",
}


def write_hostile_folder(root: str | Path, outside: str | Path, max_file_bytes: int) -> dict[str, str]:
    """Write the hostile folder corpus into `root` (plus one good image and a secret file in
    `outside`, which must never be read); returns {relative path: expected status}."""
    import os

    root, outside = Path(root), Path(outside)
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (root / "good.jpg").write_bytes(_encode(_gradient(64, 48), "JPEG", quality=90))
    os.mkfifo(root / "fifo.jpg")  # reading it would block forever
    (root / "zero.jpg").symlink_to("/dev/zero")  # reading it would run until MemoryError
    (outside / "secret.jpg").write_bytes(_encode(_gradient(8, 8), "JPEG"))
    (root / "outside.jpg").symlink_to(outside / "secret.jpg")
    (root / "huge.png").write_bytes(_encode(_gradient(8, 8), "PNG") + bytes(max_file_bytes))
    (root / "bomb.png").write_bytes(_bomb_png())
    (root / "strip.png").write_bytes(_encode(Image.new("L", STRIP_SIZE, 128), "PNG"))
    (root / "postscript.jpg").write_bytes(EPS_BYTES)
    return {"good.jpg": "ok", **{name: "error" for name in HOSTILE_REASONS}}


def tar_header(name: str, size: int = 0, *, raw_size: int | None = None, sparse_realsize: int | None = None) -> bytes:
    """One GNU tar header block. `raw_size` writes any size in base-256 (negative ones included);
    `sparse_realsize` makes a GNU sparse member ('S') claiming that many bytes from `size` stored."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    if raw_size is not None:
        buf[124:136] = b"\xff" + (256**11 + raw_size).to_bytes(11, "big")
    if sparse_realsize is not None:
        buf[156:157] = tarfile.GNUTYPE_SPARSE
        buf[386:398] = tarfile.itn(sparse_realsize - size, 12, tarfile.GNU_FORMAT)  # one data run, at the end
        buf[398:410] = tarfile.itn(size, 12, tarfile.GNU_FORMAT)
        buf[483:495] = tarfile.itn(sparse_realsize, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def tar_member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + bytes(-len(data) % 512)


def good_jpeg(width: int = 32, height: int = 24) -> bytes:
    return _encode(_gradient(width, height), "JPEG", quality=90)
