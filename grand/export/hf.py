"""Export an output folder as a Hugging Face dataset folder: `datasets.load_dataset(dest)` (or
`load_dataset("parquet", data_dir=dest)`) gives one `train` split with one row per image, every
level joined, nested features restored and, with `embed_images`, the `image` column as an Image.

Layout of `dest`:
    data/train-00000-of-0000N.parquet   Parquet with the `huggingface` features metadata, each file
                                        at most `max_shard_bytes` (500 MB), row groups of a few
                                        dozen images (what the Hub's viewer and streaming expect)
    README.md                           dataset card: YAML header (configs, features, splits), how the
                                        data was made (levels, models, versions) and its statistics

Rows are written as they are read, shard by shard and batch by batch; memory holds one row group.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
from collections.abc import Sequence
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grand.export import shard_names
from grand.export.privacy import redacted_manifest, relative_source, strip_metadata
from grand.export.rows import Committed, LEVELS, ImageReader, image_rows, ok, require_levels
from grand.export.stats import dataset_stats, stats_text, summary_table
from grand.io.manifest import load_plan
from grand.io.output import OutputDir
from grand.schema import SCHEMA_VERSION, SCHEMAS

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 500 * 1000 * 1000  # the Hub's recommended upper bound for one Parquet file
ROWS_PER_GROUP = 128  # annotations only: an image's masks are a few KB per object
ROWS_PER_GROUP_IMAGES = 64  # with image bytes: small row groups keep streaming readers light
_MAX_GROUP_BYTES = 64 * 1000 * 1000  # flush a row group early when its images get this big
_SPLIT = "train"

# Columns every level repeats (identity and bookkeeping); everything else is a level's annotation.
_IDENTITY = ("image_id", "shard", "index", "source", "width", "height")
_PER_LEVEL = {"image_id", "source", "shard", "index", "status", "error", "width", "height", "provenance"}
_LEVEL_STATUS = pa.list_(pa.struct([pa.field("level", pa.int32()), pa.field("status", pa.string()),
                                    pa.field("error", pa.string())]))
_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def annotation_columns(levels: Sequence[int]) -> dict[str, list[int]]:
    """column -> the levels that write it (ascending), in schema order. A column written by several
    levels (objects, floating_objects: level 2 rewrites level 1's after phrase grounding) takes the
    value of the highest level whose row is ok."""
    cols: dict[str, list[int]] = {}
    for lv in sorted(levels):
        for name in SCHEMAS[lv].names:
            if name not in _PER_LEVEL:
                cols.setdefault(name, []).append(lv)
    return cols


def hf_schema(levels: Sequence[int], embed_images: bool) -> pa.Schema:
    """The joined row's Arrow schema with the `datasets` features in its metadata."""
    from datasets import Features, Image

    l1 = SCHEMAS[1]
    fields = [l1.field(name) for name in _IDENTITY]
    if embed_images:
        fields.append(pa.field("image", _IMAGE))
    fields += [pa.field("status", pa.string()), pa.field("error", pa.string()), pa.field("levels", _LEVEL_STATUS)]
    for name, lvls in annotation_columns(levels).items():
        fields.append(SCHEMAS[lvls[-1]].field(name))
    features = Features.from_arrow_schema(pa.schema(fields))
    if embed_images:
        features["image"] = Image()
    schema = features.arrow_schema
    meta = dict(schema.metadata or {})
    meta[b"grand.schema_version"] = SCHEMA_VERSION.encode()
    meta[b"grand.levels"] = ",".join(map(str, sorted(levels))).encode()
    return schema.with_metadata(meta)


def joined_record(rows: dict[int, dict | None], levels: Sequence[int], columns: dict[str, list[int]]) -> dict:
    """One image's row of the dataset from its rows at each level (None where a level has none)."""
    base = next(rows[lv] for lv in sorted(rows) if rows[lv] is not None)
    l1 = rows.get(1) or {}
    rec = {name: l1.get(name, base.get(name)) for name in _IDENTITY}
    present = [(lv, rows[lv]) for lv in sorted(levels) if rows.get(lv) is not None]
    rec["levels"] = [{"level": lv, "status": r["status"], "error": r.get("error")} for lv, r in present]
    failed = [(lv, r) for lv, r in present if r["status"] != "ok"]
    rec["status"] = "error" if failed else "ok"
    rec["error"] = f"level {failed[0][0]}: {failed[0][1].get('error')}" if failed else None
    for name, lvls in columns.items():
        source = next((rows[lv] for lv in reversed(lvls) if ok(rows.get(lv))), None)
        if source is None:
            source = next((rows[lv] for lv in lvls if rows.get(lv) is not None), None)
        rec[name] = source.get(name) if source is not None else None
    return rec


class ParquetPieces:
    """Row groups appended to `data/<split>-NNNNN.parquet` pieces, a new piece whenever the next
    group would push the current one past `max_bytes`; `close` renames them to the Hub's
    `<split>-NNNNN-of-MMMMM.parquet` once their count is known."""

    def __init__(self, fs: fsspec.AbstractFileSystem, folder: str, schema: pa.Schema, max_bytes: int,
                 rows_per_group: int, split: str = _SPLIT):
        self.fs, self.folder, self.schema = fs, folder, schema
        self.max_bytes, self.rows_per_group, self.split = max_bytes, rows_per_group, split
        self.rows = 0
        self.nbytes = 0  # Arrow bytes written: the card's split size
        self.paths: list[str] = []
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._file = None
        self._writer: pq.ParquetWriter | None = None
        self._groups = 0  # row groups in the open piece
        self._footer, self._group_meta = _footer_sizes(schema)

    def add(self, record: dict, approx_bytes: int = 0) -> None:
        self._buffer.append(record)
        self._buffer_bytes += approx_bytes
        if len(self._buffer) >= self.rows_per_group or self._buffer_bytes >= _MAX_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._write(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._buffer, self._buffer_bytes = [], 0

    def _write(self, table: pa.Table) -> None:
        # Arrow's in-memory size bounds the encoded size from above (compression only shrinks,
        # images do not grow), so a piece that stays under max_bytes here does on disk too.
        size = table.nbytes
        if size > self.max_bytes and table.num_rows > 1:
            half = table.num_rows // 2
            self._write(table.slice(0, half))
            self._write(table.slice(half))
            return
        if self._writer is not None:
            # What the piece would be: its row groups so far, this one, and the footer (schema plus
            # per-group column metadata; twice the measured per-group size, as statistics vary).
            footer = self._footer + 2 * self._group_meta * (self._groups + 1)
            if self._file.tell() + size + footer > self.max_bytes:
                self._close_piece()
        if self._writer is None:
            path = f"{self.folder}/{self.split}-{len(self.paths):05d}.parquet.partial"
            self._file = self.fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd")
            self.paths.append(path)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._groups += 1
        self.rows += table.num_rows
        self.nbytes += table.nbytes

    def _close_piece(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None
            self._groups = 0

    def close(self) -> list[str]:
        self._flush()
        if not self.paths:  # an empty dataset still gets one (empty) file with the schema
            self._write(self.schema.empty_table())
        self._close_piece()
        final = []
        n = len(self.paths)
        for i, path in enumerate(self.paths):
            dest = f"{self.folder}/{self.split}-{i:05d}-of-{n:05d}.parquet"
            self.fs.mv(path, dest)
            final.append(dest)
        return final


def _footer_sizes(schema: pa.Schema) -> tuple[int, int]:
    """(bytes of a Parquet file with this schema and no rows, bytes one more row group adds): the
    footer repeats the schema and its features metadata, and describes every column of every group."""
    sizes = []
    for table in (schema.empty_table(), pa.Table.from_pylist([{}], schema=schema)):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        sizes.append(len(buf.getvalue()))
    return sizes[0], max(0, sizes[1] - sizes[0])


def export_hf(
    output_uri: str,
    dest: str,
    embed_images: bool = False,
    levels: Sequence[int] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: int | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    public: bool = False,
    relative_sources: bool = False,
) -> dict:
    """Write the Hugging Face dataset folder of `output_uri` to `dest` (local path or fsspec URI).

    `levels`: which levels' columns to include (default: every level with committed shards).
    `embed_images`: re-read each image through the folder's shard plan and store its bytes (as the
    pipeline saw them: EXIF-rotated images are stored upright, so boxes and masks line up), without
    their EXIF/XMP/IPTC metadata (grand.export.privacy.strip_metadata).
    `push_to_hub`: a Hub repo id ("user/name") to upload `dest` to afterwards (needs network and a
    token, see huggingface_hub); the repo is created private unless `public`.
    `relative_sources`: write `source` relative to the run's input root, and only the input's and
    the output folder's names in the card. Returns a summary dict.
    """
    try:
        import datasets  # noqa: F401  (the features metadata is datasets' own format)
    except ImportError:
        raise ValueError("`grand export hf` needs the `datasets` package: pip install datasets==5.2.0") from None
    if public and not push_to_hub:
        raise ValueError("--public only applies with --push-to-hub REPO")
    out = OutputDir(output_uri)
    available = [lv for lv in LEVELS if out.committed_shards(lv)]
    if levels is None:
        require_levels(out, [1], "grand export hf")
        levels = available
    levels = sorted(set(int(lv) for lv in levels))
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"levels must be among 1-4, got {bad}")
    missing = [lv for lv in levels if lv not in available]
    if missing:
        require_levels(out, missing[:1], "grand export hf")
    columns = annotation_columns(levels)
    schema = hf_schema(levels, embed_images)
    input_root = _input_root(out) if relative_sources else None

    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    data_dir = f"{root}/data"
    _prepare_dest(fs, root, data_dir, overwrite)
    pieces = ParquetPieces(fs, data_dir, schema, max_shard_bytes,
                           rows_per_group or (ROWS_PER_GROUP_IMAGES if embed_images else ROWS_PER_GROUP))
    reader = ImageReader(out) if embed_images else None
    read_levels = sorted(set(levels) | {1}) if 1 in available else levels
    n_images = n_ok = missing_images = 0
    committed = Committed(out)
    for shard in shard_names(out, tuple(read_levels)):
        images = reader.shard(shard) if reader is not None else None
        for rows in image_rows(out, shard, read_levels, committed=committed):
            rec = joined_record(rows, levels, columns)
            if input_root is not None and rec.get("source"):
                rec["source"] = relative_source(rec["source"], input_root)
            size = 0
            if images is not None:
                data = images.get(int(rec["index"]), rec["image_id"]) if ok(rows.get(1)) else None
                missing_images += data is None and ok(rows.get(1))
                data = strip_metadata(data) if data else data  # GPS & co. stay home; pixels unchanged
                rec["image"] = {"bytes": data, "path": PurePosixPath(rec["image_id"]).name} if data else None
                size = len(data or b"")
            pieces.add(rec, size)
            n_images += 1
            n_ok += rec["status"] == "ok"
    files = pieces.close()

    stats = dataset_stats(output_uri, levels)
    manifest = out.read_json(out.manifest_path) or {}
    shown_output = output_uri
    if relative_sources:
        manifest, shown_output = redacted_manifest(manifest), PurePosixPath(output_uri.rstrip("/")).name
        stats = {**stats, "output": shown_output}
    card = dataset_card(stats, manifest, schema, levels, embed_images, pieces.rows, pieces.nbytes, shown_output)
    with fs.open(f"{root}/README.md", "w", encoding="utf-8") as f:
        f.write(card)
    summary = {"dest": dest, "rows": pieces.rows, "ok": n_ok, "files": [PurePosixPath(p).name for p in files],
               "levels": levels, "embedded_images": embed_images, "unreadable_images": missing_images}
    if push_to_hub:
        summary["pushed_to"] = push_folder(root, push_to_hub, public=public)
    return summary


def _input_root(out: OutputDir) -> str:
    plan = load_plan(out)
    if plan is None:
        raise ValueError(f"{out.uri!r} has no shard plan ({out.plan_path}), so the input root is unknown: "
                         "export without --relative-sources")
    return plan[0]


def _prepare_dest(fs: fsspec.AbstractFileSystem, root: str, data_dir: str, overwrite: bool) -> None:
    old = [p for p in (fs.ls(data_dir, detail=False) if fs.exists(data_dir) else [])
           if PurePosixPath(p).name.endswith((".parquet", ".partial"))]
    if old and not overwrite:
        raise ValueError(f"{data_dir!r} already holds {len(old)} Parquet file(s): pass --overwrite to replace "
                         "them, or choose an empty destination")
    for p in old:
        fs.rm(p)
    fs.makedirs(data_dir, exist_ok=True)


def push_folder(folder: str, repo_id: str, public: bool = False) -> str:
    """Upload the dataset folder to the Hub as a dataset repo (created if needed: private unless
    `public`); returns its URL. An existing public repo is refused unless `public`: the data would
    be published. Needs network access and a token (`hf auth login` or HF_TOKEN)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=not public)
    if not public and not api.dataset_info(repo_id).private:
        raise ValueError(f"the Hub dataset repo {repo_id!r} already exists and is public: pass --public to upload "
                         "to it anyway, or make it private on the Hub first")
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset",
                      commit_message="grand export hf")
    return f"https://huggingface.co/datasets/{repo_id}"


# -- the dataset card --------------------------------------------------------------------------------
_COLUMN_DOCS = {
    "image_id": "stable id: path in the input folder, tar member stem, or the Parquet id column",
    "shard": "input shard the image belongs to", "index": "position in that shard",
    "source": "where the image bytes were read from", "width": "image width (EXIF-oriented)",
    "height": "image height (EXIF-oriented)", "image": "the image as the pipeline saw it (upright)",
    "status": "ok when every exported level is ok for this image", "error": "first failing level and why",
    "levels": "per-level status and error", "tags": "image tags (level 1)", "tag_scores": "tag confidences",
    "objects": "regions seen by >= 2 models: id, bbox [x1,y1,x2,y2], label(s), score, attributes, depth, "
               "segmentation (COCO RLE {size: [h, w], counts}); after phrase grounding when level 2 exists",
    "floating_objects": "regions seen by one model (same fields)",
    "depth_stats": "relative inverse depth of the image (min/max/mean/median)",
    "short_captions": "level 2: captions per model with grounded phrases (tokens_positive [start, end), ids)",
    "landmark": "level 2: scene category and fine category", "relationships": "level 2: phrase -> object ids",
    "scene_graph": "level 3: depth layers of object groups and the text given to the LLM",
    "dense_caption": "level 3: verified dense caption, its phrases grounded to object ids, every attempt",
    "additional_context": "level 4: a paragraph of extra context",
}


def dataset_card(stats: dict, manifest: dict, schema: pa.Schema, levels: Sequence[int], embed_images: bool,
                 rows: int, nbytes: int, output_uri: str) -> str:
    """README.md: YAML header the Hub and `datasets` read, then the human part."""
    from datasets import Features

    features = Features.from_arrow_schema(schema)
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": _SPLIT, "path": f"data/{_SPLIT}-*"}]}],
        "dataset_info": {"features": features._to_yaml_list(), "splits": [{"name": _SPLIT, "num_bytes": nbytes, "num_examples": rows}]},
        "task_categories": ["image-segmentation", "image-to-text", "object-detection"],
        "tags": ["grand", "grounding", "dense-captioning", "referring-expressions", "segmentation"],
        "pretty_name": "GranD-style densely grounded images",
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += ["# GranD-style densely grounded image dataset", "",
              f"Made with grand from the output folder `{output_uri}`: levels "
              f"{', '.join(map(str, levels))} of the GranD annotation pipeline (GLaMM, CVPR 2024), one row per "
              f"image{' with the image embedded' if embed_images else ' (images not embedded: see `source`)'}.", ""]
    lines += ["## Statistics", "", "| | count |", "|---|---:|"]
    lines += [f"| {name} | {value:,} |" for name, value in summary_table(stats)]
    lines += ["", "Counted as in the GLaMM paper's Table 2 (GranD): regions are objects plus floating objects; "
              "referring expressions are region attributes plus relationship phrases; tokens are the words of "
              "every caption and context.", "", "<details><summary>every count</summary>", "", "```",
              stats_text(stats), "```", "", "</details>", ""]
    lines += ["## How it was made", ""] + _provenance_lines(manifest, levels) + [""]
    lines += ["## Columns", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_COLUMN_DOCS.get(name, '')} |" for name in schema.names]
    lines += ["", "## Use", "", "```python", "from datasets import load_dataset",
              "from pycocotools import mask as mask_utils", "",
              'ds = load_dataset("path/to/this/folder", split="train")   # or the Hub repo id',
              "row = ds[0]", 'obj = row["objects"][0]',
              'seg = {"size": obj["segmentation"]["size"], "counts": obj["segmentation"]["counts"].encode()}',
              "mask = mask_utils.decode(seg)  # (h, w) uint8", "```", "",
              "Caption spans are character offsets: `caption[start:end] == phrase`; `ids` name objects of the "
              "same row (objects and floating_objects share one id space).", ""]
    return "\n".join(lines)


def _provenance_lines(manifest: dict, levels: Sequence[int]) -> list[str]:
    runs = [r for r in manifest.get("runs") or [] if r.get("command", "run") == "run"]
    if not runs:
        return ["No run is recorded in the folder's manifest."]
    lines = []
    for lv in levels:
        # The latest run that computed this level made its committed shards (older ones were skipped).
        run = next((r for r in reversed(runs) if lv in (r.get("levels") or [])), None)
        if run is None:
            lines.append(f"- level {lv}: no recorded run")
            continue
        models = (run.get("models") or {}).get(f"level{lv}") or []
        names = ", ".join(f"{m.get('role')}: {m.get('name')} (`{m.get('checkpoint')}`, {m.get('backend')})"
                          for m in models) or "no models"
        lines.append(f"- level {lv}: {names}; run started {run.get('started', '?')}, {run.get('state', '?')}")
    last = runs[-1]
    cfg = last.get("config") or {}
    versions = last.get("versions") or {}
    lines.append(f"- pipeline config: `{cfg.get('name', '?')}`; input: `{last.get('input', '?')}`")
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "host"))
    lines.append(f"- exported {_dt.datetime.now(_dt.timezone.utc).date().isoformat()}")
    return lines
