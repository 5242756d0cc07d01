"""What every export needs from an output folder: one image's rows at several levels, its objects,
its re-read image bytes, and files written so that a crash never leaves a truncated one at `dest`.

All of it streams: `image_rows` walks each level's shard file batch by batch in lock-step (rows are
written in index order, so the look-ahead buffer stays empty in practice), and `ImageReader` walks
each input shard once, front to back, as the pipeline did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

import fsspec

from grand.config import InputSpec
from grand.core.rle import mask_area
from grand.export import iter_rows, shard_names
from grand.io.images import ImageDecodeError, prepare_image
from grand.io.manifest import load_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec, read_shard

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4)


class Committed:
    """Each level's committed shard names, listed once per export (not once per shard and level)."""

    def __init__(self, out: OutputDir):
        self.out = out
        self._sets: dict[int, set[str]] = {}

    def __call__(self, level: int) -> set[str]:
        if level not in self._sets:
            self._sets[level] = self.out.committed_shards(level)
        return self._sets[level]


class _LevelCursor:
    """One level's rows of one shard, fetched by index in ascending order."""

    def __init__(self, out: OutputDir, level: int, shard: str, columns: Sequence[str] | None, present: bool):
        self._rows = iter_rows(out, level, shard, columns) if present else iter(())
        self._ahead: dict[int, dict] = {}

    def get(self, index: int) -> dict | None:
        if index in self._ahead:
            return self._ahead.pop(index)
        for row in self._rows:
            if row["index"] == index:
                return row
            self._ahead[row["index"]] = row  # out of order (never written so): keep it for later
        return None


def image_rows(
    out: OutputDir, shard: str, levels: Sequence[int], columns: dict[int, Sequence[str]] | None = None,
    committed: Committed | None = None,
) -> Iterator[dict[int, dict | None]]:
    """For each image of `shard`, in index order, {level: its row at that level, or None}.

    The images are those of the lowest of `levels` (normally 1) that has this shard; `columns`
    optionally narrows what is read per level ("index" is always added). Pass one `committed` for
    a whole export: listing every level's folder for every shard costs O(shards^2) on big outputs.
    """
    committed = committed or Committed(out)
    levels = sorted(set(levels))
    base = next((lv for lv in levels if shard in committed(lv)), None)
    if base is None:
        return
    cols = {lv: (None if not columns or columns.get(lv) is None else list(dict.fromkeys(["index", *columns[lv]])))
            for lv in levels}
    cursors = {lv: _LevelCursor(out, lv, shard, cols[lv], shard in committed(lv)) for lv in levels if lv != base}
    for row in iter_rows(out, base, shard, cols[base]):
        joined: dict[int, dict | None] = {base: row}
        for lv, cursor in cursors.items():
            joined[lv] = cursor.get(row["index"])
        yield joined


def ok(row: dict | None) -> bool:
    return row is not None and row.get("status") == "ok"


def good_images(out: OutputDir, columns: dict[int, Sequence[str]] | None = None,
                levels: Sequence[int] = (1, 2)) -> Iterator[dict[int, dict | None]]:
    """`image_rows` of every shard, in plan order, for the images whose level-1 row is ok."""
    committed = Committed(out)
    for shard in shard_names(out, levels):
        for rows in image_rows(out, shard, levels, columns, committed=committed):
            if ok(rows.get(1)):
                yield rows


def flagged_objects(rows: dict[int, dict | None], floating: bool = True) -> list[tuple[dict, bool]]:
    """`objects_of` as (object, is it a floating object) pairs."""
    src = rows.get(2) if ok(rows.get(2)) else rows.get(1)
    if src is None:
        return []
    found = [(o, False) for o in src.get("objects") or []]
    if floating:
        found += [(o, True) for o in src.get("floating_objects") or []]
    return found


def objects_of(rows: dict[int, dict | None], floating: bool = True) -> list[dict]:
    """The image's objects: level 2's (after phrase grounding: the ids captions refer to) when its
    level-2 row is ok, else level 1's. Floating objects follow the objects when `floating`."""
    src = rows.get(2) if ok(rows.get(2)) else rows.get(1)
    if src is None:
        return []
    found = list(src.get("objects") or [])
    if floating:
        found += list(src.get("floating_objects") or [])
    return found


def image_size(rows: dict[int, dict | None]) -> tuple[int | None, int | None]:
    """(width, height) from level 1, else from any mask of the image."""
    l1 = rows.get(1)
    if l1 and l1.get("width") is not None and l1.get("height") is not None:
        return int(l1["width"]), int(l1["height"])
    for o in objects_of(rows):
        if o.get("segmentation"):
            h, w = o["segmentation"]["size"]
            return int(w), int(h)
    return None, None


def require_levels(out: OutputDir, levels: Iterable[int], command: str) -> None:
    """Raise ValueError saying how to make the missing levels when none of `levels` has a shard."""
    levels = sorted(levels)
    if any(out.committed_shards(lv) for lv in levels):
        return
    if not out.exists(out.root):
        raise ValueError(f"{out.uri!r} does not exist: give the output folder of a `grand run`")
    need = levels[0]
    have = [lv for lv in LEVELS if lv < need and out.committed_shards(lv)]
    # A run may start above level 1 only over the folder's committed lower levels.
    todo = [lv for lv in LEVELS if (max(have) if have else 0) < lv <= need]
    names = " or ".join(f"level-{lv}" for lv in levels)
    raise ValueError(
        f"no {names} shards in {out.uri!r}, which `{command}` needs: run "
        f"`grand run CONFIG --output {out.uri} --levels {','.join(map(str, todo))}` first "
        f"(`grand status {out.uri}` shows what is there)"
    )


# -- images ------------------------------------------------------------------------------------------
def input_spec(out: OutputDir) -> InputSpec:
    """The input settings of the folder's latest run (image column, id column, size limit), from
    the manifest; defaults when it has none."""
    manifest = out.read_json(out.manifest_path) or {}
    for run in reversed(manifest.get("runs") or []):
        cfg = (run.get("config") or {}).get("input")
        if cfg:
            try:
                return InputSpec(**cfg)
            except Exception as err:  # an older/newer config: defaults still read most inputs
                log.warning("manifest input settings unusable (%s); using defaults", err)
                break
    return InputSpec()


class ImageReader:
    """Re-reads the images of an output folder through its shard plan, one shard at a time."""

    def __init__(self, out: OutputDir):
        self.out = out
        plan = load_plan(out)
        if plan is None:
            raise ValueError(
                f"{out.uri!r} has no shard plan ({out.plan_path}), so its images cannot be re-read; "
                "export without images, or point at the folder `grand run` wrote"
            )
        self.specs: dict[str, ShardSpec] = {s.name: s for s in plan[1]}
        self.cfg = input_spec(out)

    def shard(self, shard: str) -> "_ShardImages":
        spec = self.specs.get(shard)
        if spec is None:
            raise ValueError(f"shard {shard!r} is not in the plan of {self.out.uri!r}")
        return _ShardImages(spec, self.cfg)


class _ShardImages:
    """The prepared (EXIF-oriented, exactly as the pipeline saw them) bytes of one shard's images,
    asked for in ascending index order; the input shard is read once, front to back."""

    def __init__(self, spec: ShardSpec, cfg: InputSpec):
        self._it = read_shard(spec, cfg)
        self._cfg = cfg
        self._spec = spec

    def get(self, index: int, image_id: str) -> bytes | None:
        """The bytes of image `index`, or None (logged) when it can no longer be read or changed."""
        got = self.get_both(index, image_id)
        return None if got is None else got[1]

    def get_both(self, index: int, image_id: str) -> tuple[bytes, bytes] | None:
        """(the input file's own bytes, the prepared bytes) of image `index`, or None as `get`."""
        for src in self._it:
            if src.index < index:
                continue
            if src.index > index:
                break
            if src.error:
                log.warning("image %r of shard %s: %s", image_id, self._spec.name, src.error)
                return None
            if src.image_id != image_id:
                log.warning("shard %s position %d holds %r, not %r: the input changed since the run",
                            self._spec.name, index, src.image_id, image_id)
                return None
            try:
                data, _, _ = prepare_image(src.data, self._cfg.max_image_pixels)
            except ImageDecodeError as err:
                log.warning("image %r of shard %s: %s", image_id, self._spec.name, err.reason)
                return None
            return src.data, data
        return None


# -- masks -------------------------------------------------------------------------------------------
def has_mask(seg: dict | None, size: tuple[int, int] | None = None) -> bool:
    """A real mask: an RLE with at least one foreground pixel (and of `size` (h, w) when given).
    An all-zero RLE is no mask: clients would train on, or score, an empty target."""
    if not seg or not seg.get("counts") or not seg.get("size"):
        return False
    if size is not None and [int(v) for v in seg["size"]] != [int(size[0]), int(size[1])]:
        return False
    return mask_area(seg) > 0


def merged_mask(segs: Iterable[dict | None], size: tuple[int, int] | None = None) -> dict | None:
    """The union (pycocotools `merge`) of the real masks among `segs`, or None when there is none.
    One merged mask per phrase: GLaMM's and Sa2VA's loaders add a phrase's masks into one uint8
    array, so overlapping objects given separately would make targets of 2s."""
    from grand.eval.gcg import merge_masks

    real = [s for s in segs if has_mask(s, size)]
    return merge_masks(real) if real else None


# -- output files ------------------------------------------------------------------------------------
def _open_dest(dest: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(dest)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return fs, path


class SampleWriter:
    """Samples to a JSON list (`.json`, what json.load and GLaMM's loaders read) or to JSON Lines
    (any other suffix, e.g. `.jsonl`: one sample per line, for streaming readers). Written to
    `<dest>.partial` and renamed at the end, so `dest` is always complete. Use as a context manager."""

    def __init__(self, dest: str):
        self.dest = str(dest)
        self.json_list = self.dest.lower().endswith(".json")
        self.fs, self.path = _open_dest(self.dest)
        self.count = 0
        self._f: IO[str] | None = None

    def __enter__(self) -> "SampleWriter":
        self._f = self.fs.open(self.path + ".partial", "w", encoding="utf-8")
        if self.json_list:
            self._f.write("[")
        return self

    def write(self, sample: dict) -> None:
        assert self._f is not None
        text = json.dumps(sample, ensure_ascii=False)
        if self.json_list:
            self._f.write(("\n" if self.count == 0 else ",\n") + text)
        else:
            self._f.write(text + "\n")
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._f is not None
        if self.json_list:
            self._f.write("\n]\n")
        self._f.close()
        if exc_type is None:
            self.fs.mv(self.path + ".partial", self.path)
        else:
            self.fs.rm(self.path + ".partial")
