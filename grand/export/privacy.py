"""What exports do so that published data carries no more than it should (issue 13, item 9):

- `strip_metadata`: image bytes without EXIF (GPS, camera serials, times), XMP, IPTC, comments or
  PNG text chunks. Lossless: JPEG and PNG are rewritten segment by segment, pixels untouched. The
  orientation tag goes too: the pipeline's bytes are already upright (`prepare_image` rotated any
  image whose tag asked for it), so a kept tag would rotate them twice.
- `relative_source`: a `source` ("/data/photos/a/b.jpg", "s3://bkt/in/x.tar::m") relative to the
  run's input root ("a/b.jpg", "x.tar::m"), so absolute paths and bucket names stay home.
- `redacted_manifest`: the manifest with each run's input reduced to its last path component (the
  HF dataset card prints it).
"""

from __future__ import annotations

import copy
import os
import posixpath
import re

import fsspec

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary PNG chunks that only say how to show the pixels (colour, transparency, pixel size).
# Everything else ancillary goes: eXIf, tEXt, zTXt, iTXt (XMP lives there), tIME, vendor chunks.
_PNG_KEEP = {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs"}


def strip_metadata(data: bytes) -> bytes:
    """`data` (JPEG, MPO or PNG: what `prepare_image` returns) without metadata; other formats are
    returned as they are (prepare_image re-encodes those as PNG, which carries none)."""
    if data[:2] == b"\xff\xd8":
        return _strip_jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _strip_png(data)
    return data


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xE0:  # APP0: JFIF header
        return True
    if marker == 0xE2:  # APP2: keep the ICC colour profile, drop MPF (the MPO index) and FlashPix
        return payload.startswith(b"ICC_PROFILE\0")
    if marker == 0xEE:  # APP14 "Adobe": how to read the colour channels
        return True
    # APP1 (EXIF, XMP), APP3-APP13 (vendor blocks, IPTC/Photoshop), APP15, COM: metadata.
    return not (0xE1 <= marker <= 0xEF or marker == 0xFE)


def _strip_jpeg(data: bytes) -> bytes:
    """Copy every segment but the metadata ones; stop at the first image's EOI, which also drops the
    further frames of an MPO (each with its own EXIF) and trailing bytes. Raises ValueError on bytes
    that are not a well-formed JPEG stream."""
    out = bytearray(b"\xff\xd8")
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"not a JPEG marker at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == 0xD9:  # EOI
            out += b"\xff\xd9"
            return bytes(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            out += bytes((0xFF, marker))
            continue
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError(f"JPEG segment 0x{marker:02X} at byte {i - 2} runs past the end")
        payload = data[i + 2:i + length]
        if _keep_jpeg_segment(marker, payload):
            out += bytes((0xFF, marker)) + data[i:i + length]
        i += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            j = i
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    out += data[i:]
                    return bytes(out)
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte, restart marker
                    j += 2
                    continue
                break
            out += data[i:j]
            i = j
    return bytes(out)


def _strip_png(data: bytes) -> bytes:
    out = bytearray(_PNG_SIGNATURE)
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if end > n:
            raise ValueError(f"PNG chunk {kind!r} at byte {i} runs past the end")
        # Critical chunks (upper-case first letter) are the image; keep them all.
        if kind[:1].isupper() or kind in _PNG_KEEP:
            out += data[i:end]
        i = end
        if kind == b"IEND":
            break
    return bytes(out)


def _glob_base(uri: str) -> str:
    m = re.search(r"[*?\[]", uri)
    return uri if m is None else posixpath.dirname(uri[:m.start()])


def _path_of(uri: str) -> str:
    """The path part of a URI, local paths made absolute (no filesystem is touched or imported)."""
    protocol, path = fsspec.core.split_protocol(uri)
    if protocol in (None, "file", "local"):
        return os.path.abspath(path).replace(os.sep, "/")
    return path.rstrip("/")


def relative_source(source: str, input_uri: str) -> str:
    """`source` relative to the input root `input_uri` (the folder, container or pattern the run was
    given). A source outside the root keeps only its file name: never an absolute path."""
    path, sep, member = source.partition("::")
    p, root = _path_of(path), _path_of(_glob_base(input_uri))
    if p.startswith(root + "/"):
        rel = p[len(root) + 1:]
    else:  # the root itself (one tar, one parquet, one image) or somewhere else
        rel = posixpath.basename(p)
    return rel + (sep + member if sep else "")


def redacted_manifest(manifest: dict) -> dict:
    """A copy whose runs name their input by its last path component only."""
    red = copy.deepcopy(manifest)
    for run in red.get("runs") or []:
        if run.get("input"):
            run["input"] = posixpath.basename(str(run["input"]).rstrip("/")) or "input"
    return red
