"""Which image file an exported sample points at, so that its client reads pixels that match the masks.

Clients (GLaMM's GranD-f loaders, Sa2VA's GranD loader, LLaVA) open `os.path.join(image_dir,
file_name)` and take the size from the raw file (`Image.open(path).size`, no EXIF applied) while
grand's boxes and masks are in the upright frame the pipeline saw. So:

- With `images_dir`, every exported image is written there as the pipeline saw it: the input's own
  bytes when they decode upright as they are (plain JPEG/PNG), else the upright pixels re-encoded
  as PNG. `file_name` is the path under `images_dir`.
- Without it, `file_name` names the input file, and an image whose input carries an EXIF
  orientation (2-8) is skipped and counted: its raw pixels are not the ones annotated.
  (`check=False` trusts the inputs and reads nothing: no re-read, no skip.)
- `file_name` always ends in the image's real extension: SA-1B tar members give `sa_223750.jpg`
  (the member's suffix), a re-encoded image `.png`.
- Images whose shorter side is under `min_side` pixels are skipped and counted (GLaMM's loaders
  drop images under 32 px; CLIP preprocessing fails on them).

Ask in the order of `rows.good_images` / `image_rows` (shard by shard, ascending index): each input
shard is then read once, front to back.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from collections import Counter

import fsspec
from PIL import ExifTags, Image

from grand.export.privacy import strip_metadata
from grand.export.rows import ImageReader
from grand.io.output import OutputDir

log = logging.getLogger(__name__)

MIN_SIDE = 32  # GLaMM's Flickr GCG loader drops images whose shorter side is under 32 px
LEVEL1_COLUMNS = ["image_id", "status", "shard", "index", "source", "width", "height"]
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
               "GIF": ".gif"}
_SAME_FORMAT = {".jpg": {".jpg", ".jpeg", ".jpe"}, ".tif": {".tif", ".tiff"}}

SKIP_SMALL = "image smaller than the minimum side"
SKIP_ROTATED = "input image has an EXIF orientation (give --images DIR to write it upright)"
SKIP_UNREADABLE = ("input image can no longer be read (it must stay where the run read it; without --images, "
                   "--no-image-check trusts the file names instead)")


def _format_of(data: bytes) -> tuple[str | None, int]:
    """(PIL format, EXIF orientation) from the header only."""
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:
        return None, 1
    try:
        orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        orientation = 1
    return im.format, orientation


def with_extension(name: str, ext: str | None) -> str:
    """`name` ending in `ext`: kept when it already ends in a spelling of it, else `ext` replaces or
    follows its suffix (an id without suffix, or a re-encoded `x.jpg` that became `x.png`)."""
    if not ext:
        return name
    stem, suffix = posixpath.splitext(name)
    if suffix.lower() in _SAME_FORMAT.get(ext, {ext}):
        return name
    known = {e for group in _SAME_FORMAT.values() for e in group} | set(_EXTENSIONS.values())
    return (stem if suffix.lower() in known else name) + ext


def input_file_name(row: dict) -> str:
    """The input file's name for a level-1 row: the image id, with the tar member's real suffix
    when the id is a member key without one (`sa_223750` from `x.tar::sa_223750.jpg`)."""
    image_id = str(row["image_id"])
    source = str(row.get("source") or "")
    if "::" in source:
        member = source.rsplit("::", 1)[1]
        suffix = posixpath.splitext(member)[1]
        if suffix and not image_id.lower().endswith(suffix.lower()):
            return image_id + suffix
    return image_id


def _safe_path(name: str) -> str:
    """A relative path without `..`, absolute parts or odd characters (it becomes a file)."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("_") for p in name.replace("\\", "/").split("/")]
    parts = [p for p in parts if p and p not in (".", "..")]
    return "/".join(parts) or "image"


class ImageFiles:
    """file_name per exported image (see the module docstring); `skipped` counts skipped images by reason."""

    def __init__(self, out: OutputDir, images_dir: str | None = None, min_side: int = MIN_SIDE, check: bool = True):
        if min_side < 0:
            raise ValueError(f"min_side must be >= 0 pixels, got {min_side}")
        self.images_dir = images_dir
        self.min_side = int(min_side)
        self.check = check or images_dir is not None
        self.skipped: Counter = Counter()
        self.written = 0
        self._reader: ImageReader | None = None
        self._shard: str | None = None
        self._images = None
        self._used: set[str] = set()
        if images_dir is not None:
            self._fs, root = fsspec.core.url_to_fs(images_dir)
            self._root = root.rstrip("/")
            self._fs.makedirs(self._root, exist_ok=True)
        if self.check:
            try:
                self._reader = ImageReader(out)
            except ValueError:
                if images_dir is not None:
                    raise
                # No shard plan (a hand-assembled folder): nothing to re-read; trust the inputs.
                log.warning("%s has no shard plan: EXIF orientations of the inputs are not checked", out.uri)
                self.check = False

    def small(self, row: dict) -> bool:
        """True (and counted) when the image's shorter side is under `min_side`."""
        w, h = row.get("width"), row.get("height")
        if w is not None and h is not None and min(int(w), int(h)) < self.min_side:
            self.skipped[SKIP_SMALL] += 1
            return True
        return False

    def resolve(self, row: dict) -> str | None:
        """`file_name` of an image with samples to write, or None (counted) when they are skipped."""
        return None if self.small(row) else self.file_name(row)

    def attach(self, row: dict, records: list[dict], keys=("file_name",)) -> list[dict]:
        """`records` of one image with `keys` set to its file name (its image written first when
        exporting images), or [] when the image is skipped (counted)."""
        if not records:
            return []
        name = self.resolve(row)
        if name is None:
            return []
        for rec in records:
            rec.update(dict.fromkeys(keys, name))
        return records

    def file_name(self, row: dict) -> str | None:
        """The sample's `file_name` for a level-1 row (columns LEVEL1_COLUMNS), or None when its
        samples must be skipped (counted in `skipped`). Call once per image, after `small`."""
        name = input_file_name(row)
        if not self.check:
            return name
        if self._shard != row["shard"]:
            self._shard, self._images = row["shard"], self._reader.shard(row["shard"])
        got = self._images.get_both(int(row["index"]), row["image_id"])
        if got is None:
            self.skipped[SKIP_UNREADABLE] += 1
            return None
        raw, prepared = got
        fmt, orientation = _format_of(raw)
        if self.images_dir is None:
            if orientation not in (0, 1):
                self.skipped[SKIP_ROTATED] += 1
                return None
            # The input file itself: its name stays, an id without suffix (Parquet rows) gains one.
            return name if posixpath.splitext(name)[1] else name + _EXTENSIONS.get(fmt or "", "")
        out_fmt = fmt if prepared is raw else _format_of(prepared)[0]
        target = with_extension(_safe_path(name), _EXTENSIONS.get(out_fmt or "", ".png"))
        stem, ext = posixpath.splitext(target)
        k = 1
        while target in self._used:  # two ids that sanitise alike, or x.jpg re-encoded beside x.png
            k += 1
            target = f"{stem}_{k}{ext}"
        self._used.add(target)
        path = f"{self._root}/{target}"
        parent = posixpath.dirname(path)
        if parent:
            self._fs.makedirs(parent, exist_ok=True)
        with self._fs.open(path, "wb") as f:
            f.write(strip_metadata(prepared))  # no EXIF GPS or camera data leaves with the pixels
        self.written += 1
        return target

    def summary(self) -> dict:
        found = {"skipped_images": dict(self.skipped.most_common())}
        if self.images_dir is not None:
            found.update(images_dir=self.images_dir, images_written=self.written)
        return found
