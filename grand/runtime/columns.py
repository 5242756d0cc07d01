"""Every column that flows between the steps, declared once: name, Arrow type, default, meaning.

Ray blocks carry these columns as typed Arrow data. Each step turns its output into an Arrow table
with the declared types (`Batch.to_arrow`), so every block has the same schema whatever an image
holds (empty lists and absent values included), and a column a step does not touch passes through
as Arrow, untouched. Inside a step, a column is a Python list of typed values (`Batch[name]`):
object lists are `grand.schema.ObjectRecord`s, detections are `grand.core.detections.Detections`,
depth statistics, landmark, scene graph and dense caption are their grand.schema records.

Types come from grand.schema's dataclasses, the records the committed Parquet holds. Between steps
their floats are float64 (`_working`): a step reads exactly the values the step before it wrote,
and only the committed record (`record_l<N>`, the schema's own float32 types) rounds them, once,
as the sink always did. A step reads a column that an optional step (a config without taggers,
depth or grounding) never wrote as its declared default (`ensure`), so no step tests whether a
column exists.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from grand.schema import (
    RLE,
    SCHEMAS,
    CaptionAttempt,
    DenseCaption,
    DepthStats,
    GroundedPhrase,
    Landmark,
    ObjectRecord,
    SceneGraph,
    SceneLayer,
    arrow_type,
)


def _working(t: pa.DataType) -> pa.DataType:
    """`t` with float32 widened to float64 (and int32 to int64) at every depth."""
    if t == pa.float32():
        return pa.float64()
    if t == pa.int32():
        return pa.int64()
    if pa.types.is_list(t):
        return pa.list_(_working(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _working(f.type)) for f in t])
    return t


# -- typed records <-> the plain values Arrow converts --------------------------------------------
def rle(d: dict | None) -> RLE | None:
    return RLE(list(d["size"]), d["counts"]) if d else None


def object_record(d: dict) -> ObjectRecord:
    return ObjectRecord(
        id=d["id"], bbox=list(d["bbox"]), label=d["label"], labels=list(d["labels"]), score=d["score"],
        models=list(d["models"]), attributes=list(d.get("attributes") or []), depth=d.get("depth"),
        segmentation=rle(d.get("segmentation")), segmentation_source=d.get("segmentation_source"),
    )


def object_plain(o: ObjectRecord) -> dict:
    seg = o.segmentation
    return {"id": o.id, "bbox": o.bbox, "label": o.label, "labels": o.labels, "score": o.score, "models": o.models,
            "attributes": o.attributes, "depth": o.depth,
            "segmentation": None if seg is None else {"size": seg.size, "counts": seg.counts},
            "segmentation_source": o.segmentation_source}


def _record(tp):
    """Decoder of a (nested) grand.schema dataclass from its plain dict."""
    hints = typing.get_type_hints(tp)

    def field_decoder(hint):
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if origin is list and dataclasses.is_dataclass(args[0]):
            sub = _record(args[0])
            return lambda v: None if v is None else [sub(x) for x in v]
        if origin is list:
            return lambda v: None if v is None else list(v)
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            sub = _record(args[0])
            return lambda v: None if v is None else sub(v)
        return lambda v: v

    decoders = {f.name: field_decoder(hints[f.name]) for f in dataclasses.fields(tp)}
    return lambda d: None if d is None else tp(**{k: dec(d.get(k)) for k, dec in decoders.items() if k in d})


def _plain(value):
    return None if value is None else dataclasses.asdict(value)


def _objects_decode(v):
    return [object_record(d) for d in v]


def _objects_encode(v):
    return [object_plain(o) for o in v]


def _detections_decode(v):
    from grand.core.detections import Detections

    return None if v is None else Detections.from_dict(v)


def _detections_encode(v):
    return None if v is None else v.to_dict()


_RLE_TYPE = arrow_type(RLE)
DETECTIONS_TYPE = pa.struct([  # grand.core.detections.Detections.to_dict: boxes and scores are float32 there
    ("model", pa.string()), ("xyxy", pa.list_(pa.list_(pa.float32()))), ("scores", pa.list_(pa.float32())),
    ("labels", pa.list_(pa.string())), ("attributes", pa.list_(pa.string())), ("masks", pa.list_(_RLE_TYPE)),
])
OBJECTS_TYPE = pa.list_(_working(arrow_type(ObjectRecord)))
TAGS_TYPE = pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float64()), ("model", pa.string())]))
_PHRASE_TYPE = pa.struct([("text", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("head", pa.string()),
                          ("head_lemma", pa.string())])
PHRASES_TYPE = pa.list_(pa.struct([("captioner", pa.string()), ("phrases", pa.list_(_PHRASE_TYPE))]))
GROUNDING_TYPE = pa.struct([
    ("links", pa.list_(pa.struct([("phrase", pa.string()), ("ids", pa.list_(pa.int64()))]))),
    ("boxes", pa.list_(pa.struct([("phrase", pa.string()), ("bbox", pa.list_(pa.float64()))]))),
    ("relationships", pa.list_(pa.struct([("phrase", pa.string()), ("object_ids", pa.list_(pa.int64()))]))),
])


def _tags_decode(v):
    return [(d["tag"], d["score"], d["model"]) for d in v]


def _tags_encode(v):
    return [{"tag": t, "score": s, "model": m} for t, s, m in v]


def _phrases_decode(v):
    from grand.core.phrases import Phrase

    return {d["captioner"]: [Phrase(**p) for p in d["phrases"]] for d in v}


def _phrases_encode(v):
    return [{"captioner": c, "phrases": [dataclasses.asdict(p) for p in ps]} for c, ps in v.items()]


def _grounding_decode(v):
    if v is None:
        return None
    return {"links": {d["phrase"]: d["ids"] for d in v["links"]}, "boxes": {d["phrase"]: d["bbox"] for d in v["boxes"]},
            "relationships": v["relationships"]}


def _grounding_encode(v):
    if v is None:
        return None
    return {"links": [{"phrase": p, "ids": ids} for p, ids in v["links"].items()],
            "boxes": [{"phrase": p, "bbox": b} for p, b in v["boxes"].items()], "relationships": v["relationships"]}


def _seconds_decode(v):
    return dict(v)


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType
    default: object  # the in-step value of a row no step wrote (copied per row)
    doc: str
    decode: Callable[[Any], Any] | None = None  # Arrow's Python value -> the in-step value (None: as is)
    encode: Callable[[Any], Any] | None = None  # the in-step value -> what pa.array takes (None: as is)

    def new_default(self):
        return copy.deepcopy(self.default)


def _dataclass_column(name: str, tp, doc: str) -> Column:
    return Column(name, _working(arrow_type(tp)), None, doc, _record(tp), _plain)


def _record_column(level: int) -> Column:
    # The level's committed record, typed exactly as its Parquet shard (float32): a later level reads
    # the same values whether it runs in the same pipeline or from the committed shard.
    return Column(f"record_l{level}", pa.struct(list(SCHEMAS[level])), None, f"level-{level} record (grand.schema)")


COLUMNS: dict[str, Column] = {c.name: c for c in [
    # every row, from the read step
    Column("image_id", pa.string(), "", "stable id of the image (path in the folder, tar member, ...)"),
    Column("source", pa.string(), "", "where the image came from"),
    Column("shard", pa.string(), "", "planned shard"),
    Column("index", pa.int64(), 0, "position in the shard"),
    Column("image", pa.binary(), b"", "encoded image bytes (levels 1-2; dropped before level 3)"),
    # the input's own SA-1B annotation file, parsed where it is used (grand.io.sa1b): free-form JSON
    Column("sidecar", pa.string(), "", "SA-1B annotation JSON, if any"),
    Column("status", pa.string(), "ok", "ok / error at levels 1-2 (levels 3-4 keep level 2's)"),
    Column("error", pa.string(), "", "why the row failed at levels 1-2, naming the step"),
    Column("width", pa.int64(), 0, "decoded width"),
    Column("height", pa.int64(), 0, "decoded height"),
    Column("step_seconds", pa.map_(pa.string(), pa.float64()), {}, "{step: busy seconds of this row}",
           _seconds_decode),
    # level 1
    Column("tags", TAGS_TYPE, [], "(tag, score, model) of every tagger", _tags_decode, _tags_encode),
    Column("objects", OBJECTS_TYPE, [], "ObjectRecords seen by >= 2 models (voted)", _objects_decode, _objects_encode),
    Column("floating_objects", OBJECTS_TYPE, [], "ObjectRecords of one model", _objects_decode, _objects_encode),
    _dataclass_column("depth_stats", DepthStats, "DepthStats of the image"),
    _record_column(1),
    # level 2
    _dataclass_column("landmark", Landmark, "Landmark answers"),
    Column("phrases", PHRASES_TYPE, {}, "{captioner: [grand.core.phrases.Phrase, ...]}", _phrases_decode,
           _phrases_encode),
    Column("grounding", GROUNDING_TYPE, None, "{links: {phrase: ids}, boxes: {phrase: bbox}, relationships} of "
           "phrase grounding", _grounding_decode, _grounding_encode),
    _record_column(2),
    # levels 3-4
    _dataclass_column("scene_graph", SceneGraph, "SceneGraph"),
    _dataclass_column("dense_caption", DenseCaption, "verified DenseCaption with its attempts (details: empty)"),
    Column("details", pa.list_(_working(arrow_type(GroundedPhrase))), [], "GroundedPhrases of the dense caption",
           lambda v: [_record(GroundedPhrase)(d) for d in v], lambda v: [dataclasses.asdict(d) for d in v]),
    Column("context", pa.string(), "", "level-4 extra-context paragraph"),
    Column("error_l3", pa.string(), "", "why level 3 failed for this row (never touches status)"),
    Column("error_l4", pa.string(), "", "why level 4 failed for this row"),
    _record_column(3),
    _record_column(4),
]}

# one column per model of these roles
PREFIXED: dict[str, Column] = {
    "det__": Column("det__<detector>", DETECTIONS_TYPE, None, "Detections of one detector", _detections_decode,
                    _detections_encode),
    "cap__": Column("cap__<captioner>", pa.string(), "", "short caption of one captioner"),
}

# re-exported for the records the steps build
__all__ = ["Batch", "COLUMNS", "Column", "column", "ensure", "fill", "to_table", "CaptionAttempt", "SceneLayer"]


def column(name: str) -> Column:
    if name in COLUMNS:
        return COLUMNS[name]
    for prefix, col in PREFIXED.items():
        if name.startswith(prefix):
            return col
    raise KeyError(f"column {name!r} is not declared in grand.runtime.columns")


class Batch:
    """The columns of one batch as a step sees them: `batch[name]` is a Python list of in-step values
    (decoded from Arrow on first use); `to_arrow()` gives the typed table, where the columns no one
    touched are the input's Arrow arrays as they were. Built from a pyarrow Table (Ray blocks), a
    Batch, or a dict of in-step value lists (tests, the read steps)."""

    def __init__(self, data):
        self._arrow: dict[str, pa.ChunkedArray | pa.Array] = {}
        self._py: dict[str, list] = {}
        if isinstance(data, Batch):
            data = data.to_arrow()
        if isinstance(data, pa.Table):
            self._order = list(data.column_names)
            self._arrow = {name: data.column(name) for name in data.column_names}
            self.num_rows = data.num_rows
        else:
            self._order = list(data)
            self._py = {k: list(v) for k, v in data.items()}
            self.num_rows = len(self._py["image_id"]) if "image_id" in self._py else len(next(iter(self._py.values()), []))

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        return iter(list(self._order))

    def keys(self):
        return list(self._order)

    def __contains__(self, name) -> bool:
        return name in self._arrow or name in self._py

    def __getitem__(self, name: str) -> list:
        if name not in self._py:
            if name not in self._arrow:
                raise KeyError(name)
            decode = column(name).decode
            values = self._arrow.pop(name).to_pylist()
            self._py[name] = [decode(v) for v in values] if decode else values
        return self._py[name]

    def __setitem__(self, name: str, values) -> None:
        column(name)  # undeclared columns fail here, not in a later step
        values = list(values)
        if len(values) != self.num_rows:
            raise ValueError(f"column {name}: {len(values)} values for {self.num_rows} rows")
        if name not in self:
            self._order.append(name)
        self._arrow.pop(name, None)
        self._py[name] = values

    def select(self, names) -> "Batch":
        out = Batch.__new__(Batch)
        out._order = [n for n in self._order if n in set(names)]
        out._arrow = {n: v for n, v in self._arrow.items() if n in out._order}
        out._py = {n: v for n, v in self._py.items() if n in out._order}
        out.num_rows = self.num_rows
        return out

    def to_arrow(self) -> pa.Table:
        arrays, fields = [], []
        for name in self._order:
            col = column(name)
            if name in self._arrow:
                arr = self._arrow[name]
                arr = arr if arr.type == col.arrow_type else arr.cast(col.arrow_type)
            else:
                values = self._py[name]
                arr = pa.array([col.encode(v) for v in values] if col.encode else values, type=col.arrow_type)
            arrays.append(arr)
            fields.append(pa.field(name, col.arrow_type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def to_table(batch) -> pa.Table:
    """A Ray block (pyarrow Table) of `batch` (a Batch, a dict of in-step values or a Table)."""
    return batch if isinstance(batch, pa.Table) else Batch(batch).to_arrow()


def fill(batch, name: str, value=None) -> None:
    """(Re)create column `name` for every row with `value` (default: the declared default)."""
    col = column(name)
    batch[name] = [col.new_default() if value is None else copy.deepcopy(value) for _ in range(len(batch))]


def ensure(batch, names) -> None:
    """Columns a step reads that no step before it wrote (an optional step absent from the config)
    get their declared default."""
    for name in names:
        if name not in batch:
            fill(batch, name)
