"""Input sources: plan an input once into named shards, then stream each shard's images.

Three layouts are understood, on any fsspec filesystem (local paths, s3://, gs://, ...):

* an image folder (recursive) -> shards of `InputSpec.shard_size` images, `<folder>-00000`, ...
  with image_id = the path relative to the folder (stable across runs and machines);
* SA-1B style tars (a .tar, a folder of them, or a glob) -> member ranges of about
  `InputSpec.shard_size` images per tar (a tar that fits is one shard named by its stem, a larger
  one `<stem>-00000`, `<stem>-00001`, ...), image_id = the member's path without suffix
  (`sa_223750`), sidecar = the same-stem .json text; a range never separates an image from its
  sidecar, and it starts at a byte offset recorded in the plan, so reading it skips the rest;
* Parquet files (one, a folder such as a Hugging Face dataset, or a glob) -> ranges of whole row
  groups, up to `InputSpec.shard_size` rows each (a row group is never split), images from
  `InputSpec.image_column` (binary or the HF Image struct {bytes, path}).

The plan fixes each shard's image count. `read_shard` always yields exactly that many rows, in
index order: a file or member whose *content* cannot be used (over `input.max_file_bytes`, a FIFO,
a device, a symlink out of the input root, a sparse tar member, a damaged tar) becomes a row with
`error` set, and a container that ends early is padded with error rows, so a shard's output never
silently loses images. Failing to *reach* the bytes (I/O errors, a vanished file or tar, object-store
errors) is retried with backoff and then raised as `grand.io.errors.TransientReadError`: the run
fails that shard without committing it, and the next run reads it again (grand.io.errors).

Hostile containers are bounded: tar planning refuses negative sizes, non-increasing member offsets
and absurd member counts; compressed tars (.tar.gz, .tar.bz2, .tar.xz) and Parquet row groups may
expand at most `input.max_compression_ratio` times their compressed size.

Planning reads every container's headers (or Parquet footer). `plan_shards` takes a `mapper` that
runs those scans elsewhere (grand.runtime.plan runs them as Ray tasks); without one they run here,
one after the other. Either way the plan is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from grand.config import InputSpec
from grand.io.bounded import Retry, TarStructureError, open_container, read_file_bytes, walk_tar
from grand.io.errors import ContentError, TransientReadError

log = logging.getLogger(__name__)

SHARD_KINDS = ("folder", "tar", "parquet")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_PARQUET_SUFFIX = ".parquet"
_SIDECAR_SUFFIX = ".json"
_FOLDER_READ_CHUNK = 8  # files fetched concurrently: hides object-store latency, bounds memory
_PARQUET_BATCH_ROWS = 32  # rows per Arrow batch: images are large, so keep batches small


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work, persisted in the run's plan (JSON) so every run sees the same shards.

    A tar or Parquet shard is a range of its container: `num_images` images from image `start`
    (tar images / Parquet rows, counted from the container's beginning), read from `offset` (tar:
    the byte, in the decompressed stream, of the header where the range's first sample begins;
    Parquet: the first row group). A plan written before ranges existed has neither: its container
    shards are whole containers, which is what start = offset = 0 reads."""

    name: str  # unique, stable, filesystem-safe: <out>/level1/<name>.parquet
    kind: str  # "folder" | "tar" | "parquet"
    uri: str  # folder root, tar file or parquet file (local path or fsspec URI)
    num_images: int
    members: tuple[str, ...] = ()  # folder shards: image paths relative to uri, posix, sorted
    start: int = 0  # tar and Parquet ranges: the first image's position in the container
    offset: int = 0  # tar ranges: byte offset of their first header; Parquet ranges: first row group
    container: str = ""  # ranges of a split container: its unsplit name (Parquet ids <container>/<row>)

    def __post_init__(self) -> None:
        if self.kind not in SHARD_KINDS:
            raise ValueError(f"shard {self.name!r}: kind must be one of {SHARD_KINDS}, got {self.kind!r}")
        if self.kind == "folder" and len(self.members) != self.num_images:
            raise ValueError(
                f"shard {self.name!r}: {len(self.members)} members but num_images={self.num_images}"
            )
        if min(self.num_images, self.start, self.offset) < 0:
            raise ValueError(f"shard {self.name!r}: num_images, start and offset must be >= 0")
        if self.kind == "folder" and (self.start or self.offset):
            raise ValueError(f"shard {self.name!r}: a folder shard lists its members; it has no start or offset")

    @property
    def container_name(self) -> str:
        """The name of the whole tar or Parquet file this shard reads (its own name when unsplit)."""
        return self.container or self.name

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "kind": self.kind,
            "uri": self.uri,
            "num_images": self.num_images,
            "members": list(self.members),
        }
        if self.kind != "folder":
            d.update(start=self.start, offset=self.offset)
            if self.container:
                d["container"] = self.container
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardSpec":
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            uri=str(d["uri"]),
            num_images=int(d["num_images"]),
            members=tuple(d.get("members") or ()),
            start=int(d.get("start", 0)),
            offset=int(d.get("offset", 0)),
            container=str(d.get("container") or ""),
        )


@dataclass
class SourceImage:
    """One image as read from its container; `data` is b"" when `error` says why it is missing."""

    image_id: str
    source: str  # where the bytes came from: a file URI, or "<container uri>::<member or row>"
    index: int  # position in the shard, 0..num_images-1
    data: bytes
    sidecar: str | None = None  # SA-1B annotation JSON text, when the tar has one for this image
    error: str | None = None


# -- planning ----------------------------------------------------------------------------------
# A mapper runs `fn(*args)` for each args tuple and returns the results in order; `what` names the
# items for progress lines ("tars"). grand.runtime.plan's runs them as Ray tasks.
Mapper = Callable[[Callable, list, str], list]

# (offset, start, count) of one range of a container; see ShardSpec.
Range = tuple[int, int, int]


class PlanProgress:
    """Planning progress on stderr: a line every `interval_s`, and a last one if any was printed or
    planning took over a second (a few local files plan silently)."""

    def __init__(self, what: str, total: int, interval_s: float = 5.0, stream=None) -> None:
        self.what, self.total, self.interval_s = what, total, interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()
        self.printed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.interval_s:
            self._print()

    def close(self) -> None:
        if self.printed or time.monotonic() - self.start >= 1.0:
            self._print()

    def _print(self) -> None:
        self.last, self.printed = time.monotonic(), True
        print(f"[grand] planning: {self.done}/{self.total} {self.what} read ({self.last - self.start:.0f}s)",
              file=self.stream, flush=True)


def sequential_map(fn: Callable, items: list, what: str) -> list:
    """The mapper that runs every scan here, one after the other."""
    progress = PlanProgress(what, len(items))
    out = []
    for args in items:
        out.append(fn(*args))
        progress.advance()
    progress.close()
    return out


def plan_shards(input_uri: str, cfg: InputSpec, mapper: Mapper | None = None) -> list[ShardSpec]:
    """Split an input into shards. Raises ValueError when it does not exist or holds no images.

    `mapper` runs the per-container scans (and the listing of a folder's subfolders) where it likes;
    it is used only where there are at least two of them. The plan does not depend on it."""
    fs, root = url_to_fs(input_uri)
    root = root.rstrip("/") or root
    image_exts = _normalise_extensions(cfg.extensions)

    if _has_glob(input_uri) and not fs.exists(root):
        files = sorted(p for p in fs.glob(root) if fs.isfile(p))
        if not files:
            raise ValueError(f"input {input_uri!r}: the pattern matches no files")
        return _plan_containers(fs, input_uri, files, {p: p for p in files}, cfg, mapper)
    if not fs.exists(root):
        raise ValueError(f"input {input_uri!r} does not exist")

    if fs.isfile(root):
        name = posixpath.basename(root)
        if _suffix(name) in image_exts:  # a single image: a folder shard of one
            parent = posixpath.dirname(root)
            return _plan_folder(_full_uri(fs, parent), posixpath.basename(parent), [name], cfg)
        if _is_tar(name) or name.lower().endswith(_PARQUET_SUFFIX):
            return _plan_containers(fs, input_uri, [root], {root: root}, cfg, mapper)
        raise ValueError(
            f"input {input_uri!r} is not an image folder, a .tar or a .parquet file "
            f"(image suffixes: {', '.join(sorted(image_exts))})"
        )

    rel_files = _visible_files(fs, root, mapper)
    images = sorted(r for r in rel_files if _suffix(r) in image_exts)
    if images:
        return _plan_folder(_full_uri(fs, root), posixpath.basename(root), images, cfg)
    containers = [r for r in rel_files if _is_tar(r) or r.lower().endswith(_PARQUET_SUFFIX)]
    if not containers:
        raise ValueError(
            f"input {input_uri!r} holds no images: looked for files ending in "
            f"{', '.join(sorted(image_exts))}, .tar or .parquet (hidden files and folders are skipped)"
        )
    paths = [f"{root}/{r}" for r in sorted(containers)]
    return _plan_containers(fs, input_uri, paths, {f"{root}/{r}": r for r in containers}, cfg, mapper)


def _plan_folder(root_uri: str, folder_name: str, images: list[str], cfg: InputSpec) -> list[ShardSpec]:
    prefix = _safe_name(folder_name) or "images"
    size = cfg.shard_size
    return [
        ShardSpec(
            name=f"{prefix}-{i // size:05d}",
            kind="folder",
            uri=root_uri,
            num_images=len(images[i : i + size]),
            members=tuple(images[i : i + size]),
        )
        for i in range(0, len(images), size)
    ]


def _plan_containers(
    fs: fsspec.AbstractFileSystem, input_uri: str, paths: list[str], rel: dict[str, str], cfg: InputSpec,
    mapper: Mapper | None,
) -> list[ShardSpec]:
    """Ranges of about shard_size images per tar or parquet file; a mixture of both is refused as
    ambiguous. A container that fits in one shard is one shard named by its stem; a larger one is
    split into `<stem>-00000`, `<stem>-00001`, ..."""
    tars = [p for p in paths if _is_tar(p)]
    parquets = [p for p in paths if p.lower().endswith(_PARQUET_SUFFIX)]
    if tars and parquets:
        raise ValueError(f"input {input_uri!r} mixes .tar and .parquet files; point it at one kind")
    if not tars and not parquets:
        raise ValueError(f"input {input_uri!r}: no .tar or .parquet files among {len(paths)} matches")
    kind, chosen = ("tar", tars) if tars else ("parquet", parquets)
    scan = _scan_tar if tars else _scan_parquet
    items = [(fs, p, cfg) for p in chosen]
    run = mapper if mapper is not None and len(items) > 1 else sequential_map
    scans = run(scan, items, "tars" if tars else "Parquet files")
    specs = []
    for path, name, ranges in zip(chosen, _unique_shard_names([rel[p] for p in chosen]), scans):
        uri = _full_uri(fs, path)
        if len(ranges) == 1:  # the whole container, read from its start (as plans before ranges)
            specs.append(ShardSpec(name, kind, uri, ranges[0][2]))
            continue
        for k, (offset, start, count) in enumerate(ranges):
            specs.append(ShardSpec(f"{name}-{k:05d}", kind, uri, count, start=start, offset=offset, container=name))
    if not any(s.num_images for s in specs):
        raise ValueError(f"input {input_uri!r} holds no images in its {len(chosen)} container file(s)")
    names = _dedupe(s.name for s in specs)  # "a.tar" split into a-00000 beside an "a-00000.tar"
    return [s if s.name == n else dataclasses.replace(s, name=n) for s, n in zip(specs, names)]


def _scan_tar(fs: fsspec.AbstractFileSystem, path: str, cfg: InputSpec) -> list[Range]:
    """The tar's ranges of about shard_size images. Only the 512-byte headers are read (random-access
    mode: member data is skipped by seek, or decompressed and dropped for .tar.gz within the byte
    budget). A range starts at the first member of a sample (members sharing a key: an image and
    its sidecar, in either order), so a sample is never split."""
    image_exts = _normalise_extensions(cfg.extensions)
    uri = _full_uri(fs, path)
    retry = Retry(posixpath.basename(path), cfg.read_attempts, cfg.read_backoff_s)
    ranges: list[list[int]] = []
    count = 0
    key, group_offset, placed = None, 0, False
    global_headers = False
    try:
        with _open_tar_stream(fs, path, retry, uri, cfg) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in walk_tar(tar, uri):
                member_key = _member_key(member.name)
                if member_key != key:
                    key, group_offset, placed = member_key, member.offset, False
                if not _is_image_member(member, image_exts):
                    continue
                if not placed:  # this sample's first image: it opens a range when the last is full
                    if not ranges or ranges[-1][2] >= cfg.shard_size:
                        ranges.append([group_offset, count, 0])
                    placed = True
                ranges[-1][2] += 1
                count += 1
            global_headers = bool(tar.pax_headers)
    except TransientReadError:
        raise
    except TarStructureError as exc:
        raise ValueError(f"cannot plan {exc.reason}; fix or remove that tar") from None
    except Exception as exc:  # tarfile.TarError, EOFError, zlib / lzma errors: the bytes are damaged
        _planned_damaged(path, count, exc)
    if global_headers and len(ranges) > 1:
        # A global pax header applies to every member after it: a range read from its own offset
        # would miss it, so such a (rare) tar stays one shard.
        log.warning("tar %s has global pax headers; planning it as one shard of %d images", path, count)
        return [(0, 0, count)]
    return [tuple(r) for r in ranges] or [(0, 0, 0)]


def _planned_damaged(path: str, count: int, exc: Exception) -> None:
    if count == 0:
        raise ValueError(f"cannot read tar {path!r}: {_describe(exc)}") from None
    # A damaged tail: plan what the headers showed; reading will report the damaged members.
    log.warning("tar %s is damaged after %d images (%s); planning those", path, count, _describe(exc))


def _open_tar_stream(fs, path: str, retry: Retry, uri: str, cfg: InputSpec):
    return open_container(fs, path, retry, uri, cfg.max_compression_ratio, cfg.max_file_bytes, decompress=True)


def _scan_parquet(fs: fsspec.AbstractFileSystem, path: str, cfg: InputSpec) -> list[Range]:
    """Ranges of whole row groups (first row group, first row, rows) of at most shard_size rows,
    except where one row group alone is larger: splitting it would decompress it once per range.
    Only the footer is read."""
    retry = Retry(posixpath.basename(path), cfg.read_attempts, cfg.read_backoff_s)
    try:
        with open_container(fs, path, retry, _full_uri(fs, path), 0, 0, decompress=False) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            group_rows = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except TransientReadError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet data
        raise ValueError(f"cannot read Parquet file {path!r}: {exc}") from None
    _check_image_column(path, schema, cfg)
    ranges: list[list[int]] = []
    row = 0
    for group, n in enumerate(group_rows):
        if not ranges or (ranges[-1][2] and ranges[-1][2] + n > cfg.shard_size):
            ranges.append([group, row, 0])
        ranges[-1][2] += n
        row += n
    return [tuple(r) for r in ranges] or [(0, 0, 0)]


def _check_image_column(path: str, schema: pa.Schema, cfg: InputSpec) -> None:
    columns = ", ".join(schema.names)
    if cfg.image_column not in schema.names:
        raise ValueError(
            f"Parquet file {path!r} has no image column {cfg.image_column!r} "
            f"(input.image_column); its columns are: {columns}"
        )
    kind = schema.field(cfg.image_column).type
    ok = _is_binary(kind) or (
        pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and _is_binary(kind.field("bytes").type)
    )
    if not ok:
        raise ValueError(
            f"Parquet file {path!r}: column {cfg.image_column!r} must be binary or a struct "
            f"{{bytes, path}} (Hugging Face Image), got {kind}"
        )
    if cfg.id_column is not None and cfg.id_column not in schema.names:
        raise ValueError(
            f"Parquet file {path!r} has no id column {cfg.id_column!r} (input.id_column); "
            f"its columns are: {columns}"
        )


# -- reading -----------------------------------------------------------------------------------
def read_shard(spec: ShardSpec, cfg: InputSpec) -> Iterator[SourceImage]:
    """Stream a shard's images: exactly `spec.num_images` rows, indices 0..n-1, never raising for
    a bad file, member or container (those become rows with `error` set and empty `data`)."""
    readers = {"folder": _read_folder, "tar": _read_tar, "parquet": _read_parquet}
    emitted = 0
    for row in readers[spec.kind](spec, cfg):
        if emitted == spec.num_images:
            # The container grew since planning; the plan is what the run promised to write.
            log.warning("shard %s holds more images than the %d planned; ignoring the rest", spec.name, emitted)
            return
        yield row
        emitted += 1


def _read_folder(spec: ShardSpec, cfg: InputSpec) -> Iterator[SourceImage]:
    fs, root = url_to_fs(spec.uri)
    root = root.rstrip("/") or root
    retry = _retry(spec, cfg)

    def fetch(member: str) -> bytes | Exception:
        uri = f"{spec.uri.rstrip('/')}/{member}"
        try:
            return retry(lambda: read_file_bytes(fs, root, member, cfg.max_file_bytes), uri)
        except TransientReadError:
            raise  # fails the shard: the file may be back on the next run
        except Exception as exc:  # content: too big, a FIFO, a folder where the file was ...
            return exc

    with ThreadPoolExecutor(max_workers=_FOLDER_READ_CHUNK) as pool:
        for start in range(0, len(spec.members), _FOLDER_READ_CHUNK):
            chunk = spec.members[start : start + _FOLDER_READ_CHUNK]
            for offset, (member, got) in enumerate(zip(chunk, pool.map(fetch, chunk))):
                source = f"{spec.uri.rstrip('/')}/{member}"
                if isinstance(got, Exception):
                    yield SourceImage(member, source, start + offset, b"", error=f"cannot read file: {_describe(got)}")
                else:
                    yield SourceImage(member, source, start + offset, got)


def _retry(spec: ShardSpec, cfg: InputSpec) -> Retry:
    return Retry(spec.name, cfg.read_attempts, cfg.read_backoff_s)


def _read_tar(spec: ShardSpec, cfg: InputSpec) -> Iterator[SourceImage]:
    """Stream the shard's range of the tar once, front to back (cheap on object stores), from the
    planned offset to the end of its last sample, pairing each image with the .json member of the
    same name. Members of one sample are adjacent in SA-1B and WebDataset tars, so a sample is
    complete when the next member has a different key."""
    image_exts = _normalise_extensions(cfg.extensions)
    index = 0
    problem = "tar ended early"
    group_key: str | None = None
    group_images: list[tuple[str, bytes | Exception]] = []
    group_sidecar: str | None = None
    try:
        fs, path = url_to_fs(spec.uri)
        with _open_tar_stream(fs, path, _retry(spec, cfg), spec.uri, cfg) as f:
            if spec.offset:
                f.seek(spec.offset)  # a range: its first header (decompressing up to it for .tar.gz)
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for member in walk_tar(tar, spec.uri):
                    key = _member_key(member.name)
                    if key != group_key:
                        for row in _tar_group_rows(spec, group_key, group_images, group_sidecar, index):
                            yield row
                            index += 1
                        group_key, group_images, group_sidecar = key, [], None
                        if spec.container and index >= spec.num_images:
                            break  # the range's last sample is complete; the next range starts here
                    if _is_image_member(member, image_exts):
                        group_images.append((member.name, _read_member(tar, member, cfg.max_file_bytes)))
                        got = group_images[-1][1]
                        if isinstance(got, Exception) and not isinstance(got, ContentError):
                            problem = "tar is damaged"
                            break  # in stream mode a failed read leaves the stream unusable
                    elif member.isfile() and member.name.lower().endswith(_SIDECAR_SUFFIX):
                        sidecar = _read_member(tar, member, cfg.max_file_bytes)
                        if isinstance(sidecar, bytes):
                            group_sidecar = sidecar.decode("utf-8", errors="replace")
    except TransientReadError:
        raise  # the tar could not be reached: fail the shard, the next run reads it again
    except ContentError as exc:
        problem = f"tar is damaged: {exc.reason}"
    except Exception as exc:
        problem = f"cannot read tar: {_describe(exc)}"
    # the last sample (or the one the damage interrupted, with what was read of it)
    for row in _tar_group_rows(spec, group_key, group_images, group_sidecar, index):
        yield row
        index += 1
    yield from _missing_rows(spec, index, f"{problem} (read {index} of {spec.num_images} planned images)")


def _tar_group_rows(
    spec: ShardSpec, key: str | None, images: list[tuple[str, bytes | Exception]], sidecar: str | None, start: int
) -> Iterator[SourceImage]:
    for offset, (name, got) in enumerate(images):
        # One image per key (SA-1B): the key is the id; two images share a key only in odd tars,
        # where the member name keeps their ids distinct.
        image_id = key if len(images) == 1 else _strip_dot_slash(name)
        source = f"{spec.uri}::{name}"
        if isinstance(got, Exception):
            yield SourceImage(image_id, source, start + offset, b"", sidecar, f"cannot read tar member: {_describe(got)}")
        else:
            yield SourceImage(image_id, source, start + offset, got, sidecar)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int) -> bytes | Exception:
    """A member's bytes, or the exception saying why not. Sparse members (GNU or PAX) are refused:
    their few stored bytes may stand for gigabytes of holes. A TransientReadError is raised."""
    if member.issparse():
        return ContentError("sparse tar member; not read")
    if member.size > max_bytes:
        return ContentError(f"member is {member.size} bytes, over input.max_file_bytes={max_bytes}; not read")
    try:
        f = tar.extractfile(member)
        if f is None:
            raise tarfile.ReadError("member has no data")
        return f.read(member.size)
    except TransientReadError:
        raise
    except Exception as exc:
        return exc


def _read_parquet(spec: ShardSpec, cfg: InputSpec) -> Iterator[SourceImage]:
    """The shard's rows: its range of row groups (from `spec.offset`), or the whole file. Rows without
    an id column get `<container>/<row in the file>` as id, the same whichever range holds them."""
    index = 0
    problem = "Parquet file ended early"

    def row_id(value) -> str:
        return str(value) if value is not None else f"{spec.container_name}/{spec.start + index}"

    try:
        fs, path = url_to_fs(spec.uri)
        with open_container(fs, path, _retry(spec, cfg), spec.uri, 0, 0, decompress=False) as f:
            pf = pq.ParquetFile(f)
            _check_image_column(spec.uri, pf.schema_arrow, cfg)
            columns = [cfg.image_column] + ([cfg.id_column] if cfg.id_column else [])
            for group in range(spec.offset, pf.metadata.num_row_groups):
                if spec.container and index >= spec.num_images:
                    break  # the range is complete; the next row group belongs to the next shard
                bomb = _row_group_bomb(pf.metadata, group, cfg)
                if bomb:  # refused from the metadata, before a byte is decompressed
                    n = pf.metadata.row_group(group).num_rows
                    for _ in range(n):
                        yield SourceImage(row_id(None), f"{spec.uri}::{spec.start + index}", index, b"", error=bomb)
                        index += 1
                    continue
                # one batch at a time: memory stays at a batch of a row group, not the file
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
                    images = _image_values(batch.column(cfg.image_column))
                    ids = batch.column(cfg.id_column).to_pylist() if cfg.id_column else [None] * len(images)
                    for value, (data, ref) in zip(ids, images):
                        image_id = row_id(value)
                        source = f"{spec.uri}::{spec.start + index}"
                        if data is None:
                            why = f"no image bytes in row (path {ref!r} only)" if ref else "image value is null"
                            yield SourceImage(image_id, source, index, b"", error=why)
                        elif len(data) > cfg.max_file_bytes:
                            why = f"image value is {len(data)} bytes, over input.max_file_bytes={cfg.max_file_bytes}"
                            yield SourceImage(image_id, source, index, b"", error=why)
                        else:
                            yield SourceImage(image_id, source, index, data)
                        index += 1
    except TransientReadError:
        raise
    except Exception as exc:
        problem = f"cannot read Parquet file: {_describe(exc)}"
    yield from _missing_rows(spec, index, f"{problem} (read {index} of {spec.num_images} planned rows)")


def _row_group_bomb(meta: pq.FileMetaData, group: int, cfg: InputSpec) -> str | None:
    """Why a row group's image column must not be decompressed (None: it may). Encoded images barely
    compress, so a column that expands far beyond its stored size is a compression bomb."""
    rg = meta.row_group(group)
    stored = expanded = 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        if col.path_in_schema.split(".")[0] == cfg.image_column:
            stored += col.total_compressed_size
            expanded += col.total_uncompressed_size
    budget = max(cfg.max_file_bytes, int(cfg.max_compression_ratio * stored))
    if expanded > budget:
        return (f"Parquet row group {group} expands its image column from {stored} to {expanded} bytes, beyond "
                f"{budget} (input.max_compression_ratio): a compression bomb; not read")
    return None


def _image_values(column: pa.Array) -> list[tuple[bytes | None, str | None]]:
    """(bytes, path) per row of a binary column or a Hugging Face Image struct column."""
    if pa.types.is_struct(column.type):
        data = column.field("bytes").to_pylist()
        has_path = column.type.get_field_index("path") >= 0
        paths = column.field("path").to_pylist() if has_path else [None] * len(data)
        valid = column.is_valid().to_pylist()
        return [(d if ok else None, p if ok else None) for d, p, ok in zip(data, paths, valid)]
    return [(d, None) for d in column.to_pylist()]


def _missing_rows(spec: ShardSpec, start: int, reason: str) -> Iterator[SourceImage]:
    for index in range(start, spec.num_images):
        yield SourceImage(f"{spec.name}:{index}", spec.uri, index, b"", error=reason)


# -- small helpers -----------------------------------------------------------------------------
def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _is_tar(path: str) -> bool:
    return path.lower().endswith(_TAR_SUFFIXES)


def _has_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def _is_hidden(rel_path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in rel_path.split("/"))


def _visible_files(fs: fsspec.AbstractFileSystem, root: str, mapper: Mapper | None = None) -> list[str]:
    """Files below root as relative posix paths, skipping hidden files and hidden folders. With a
    mapper, each top-level subfolder is listed by its own call (a big bucket lists in parallel)."""
    if mapper is None:
        return _find_visible(fs, root, root)
    entries = fs.ls(root, detail=True)
    subdirs = sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory")
    subdirs = [d for d in subdirs if d.startswith(root + "/") and not _is_hidden(d[len(root) + 1 :])]
    if len(subdirs) < 2:
        return _find_visible(fs, root, root)
    out = []
    for e in entries:
        name = e["name"].rstrip("/")
        if e.get("type") != "directory" and name.startswith(root + "/") and not _is_hidden(name[len(root) + 1 :]):
            out.append(name[len(root) + 1 :])
    for part in mapper(_find_visible, [(fs, root, d) for d in subdirs], "folders"):
        out.extend(part)
    return out


def _find_visible(fs: fsspec.AbstractFileSystem, root: str, below: str) -> list[str]:
    """Files below `below` (root or a folder in it), relative to root, hidden ones skipped."""
    out = []
    for path in fs.find(below, withdirs=False):
        if not path.startswith(root + "/"):
            continue
        rel = path[len(root) + 1 :]
        if not _is_hidden(rel):
            out.append(rel)
    return out


def _is_image_member(member: tarfile.TarInfo, image_exts: frozenset[str]) -> bool:
    # "._sa_1.jpg" AppleDouble files from macOS tar are hidden files, not images.
    return member.isfile() and not _is_hidden(_strip_dot_slash(member.name)) and _suffix(member.name) in image_exts


def _strip_dot_slash(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _member_key(name: str) -> str:
    """Sample key of a tar member: its path without suffix ("./sa_1.jpg" -> "sa_1")."""
    return posixpath.splitext(_strip_dot_slash(name))[0]


def _container_stem(rel_path: str) -> str:
    base = posixpath.basename(rel_path)
    for suffix in (*_TAR_SUFFIXES, _PARQUET_SUFFIX):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return posixpath.splitext(base)[0]


def _safe_name(text: str) -> str:
    # Shard names become file names on every filesystem: keep a portable character set, and no
    # leading dot (that would hide the output file).
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")


def _unique_shard_names(rel_paths: list[str]) -> list[str]:
    """File stems, prefixed with the parent folder (then the whole path) only where stems clash,
    e.g. two HF splits `train/data-00000.parquet`, `test/data-00000.parquet`."""
    stems = [_safe_name(_container_stem(p)) or "shard" for p in rel_paths]
    names = list(stems)
    for i, p in enumerate(rel_paths):
        if stems.count(stems[i]) > 1:
            parent = posixpath.basename(posixpath.dirname(p))
            names[i] = _safe_name(f"{parent}-{stems[i]}") if parent else stems[i]
    for i, p in enumerate(rel_paths):
        if names.count(names[i]) > 1:
            parts = posixpath.dirname(p).split("/")
            names[i] = _safe_name("-".join([*filter(None, parts), stems[i]]))
    return _dedupe(names)  # last resort, e.g. "a b.tar" and "a_b.tar"


def _dedupe(names: Iterable[str]) -> list[str]:
    """`names` with a `-1`, `-2` ... suffix on each repeat of an earlier name."""
    out: list[str] = []
    used: set[str] = set()
    for name in names:
        candidate, k = name, 0
        while candidate in used:
            k += 1
            candidate = f"{name}-{k}"
        out.append(candidate)
        used.add(candidate)
    return out


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return path if "file" in protocols or "local" in protocols else fs.unstrip_protocol(path)


def _is_binary(kind: pa.DataType) -> bool:
    checks = [pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary]
    if hasattr(pa.types, "is_binary_view"):
        checks.append(pa.types.is_binary_view)
    return any(check(kind) for check in checks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ContentError):
        return exc.reason
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
