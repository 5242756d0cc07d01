"""Every column that flows between the steps, declared once: name, Arrow type, default, meaning.

Results travel as JSON strings (type `string` here): every Ray block then has the same Arrow schema
whatever an image holds (empty lists included), and the sink types them once, at the end, with
grand.schema. A step reads a column that an optional step (a config without taggers, depth or
grounding) never wrote as its declared default (`ensure`), so no step tests whether a column exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: str  # pyarrow type name of the column in a block
    default: object  # the value of a row no step wrote
    doc: str


COLUMNS: dict[str, Column] = {c.name: c for c in [
    # every row, from the read step
    Column("image_id", "string", "", "stable id of the image (path in the folder, tar member, ...)"),
    Column("source", "string", "", "where the image came from"),
    Column("shard", "string", "", "planned shard"),
    Column("index", "int64", 0, "position in the shard"),
    Column("image", "binary", b"", "encoded image bytes (levels 1-2; dropped before level 3)"),
    Column("sidecar", "string", "", "SA-1B annotation JSON, if any"),
    Column("status", "string", "ok", "ok / error at levels 1-2 (levels 3-4 keep level 2's)"),
    Column("error", "string", "", "why the row failed at levels 1-2, naming the step"),
    Column("width", "int64", 0, "decoded width"),
    Column("height", "int64", 0, "decoded height"),
    Column("step_seconds", "string", "{}", "JSON {step: busy seconds of this row}"),
    # level 1
    Column("tags", "string", "[]", "JSON [[tag, score, model], ...] of every tagger"),
    Column("objects", "string", "[]", "JSON list of object records (voted)"),
    Column("floating_objects", "string", "[]", "JSON list of object records (single-model)"),
    Column("depth_stats", "string", "null", "JSON DepthStats of the image"),
    Column("record_l1", "string", "", "JSON level-1 record"),
    # level 2
    Column("landmark", "string", "null", "JSON landmark answers"),
    Column("phrases", "string", "{}", "JSON {captioner: [phrase, ...]}"),
    Column("grounding", "string", "null", "JSON {links, boxes, relationships} of phrase grounding"),
    Column("record_l2", "string", "", "JSON level-2 record"),
    # levels 3-4
    Column("scene_graph", "string", "null", "JSON SceneGraph"),
    Column("dense_caption", "string", "null", "JSON verified dense caption with its attempts"),
    Column("details", "string", "[]", "JSON grounded phrases of the dense caption"),
    Column("context", "string", "", "level-4 extra-context paragraph"),
    Column("error_l3", "string", "", "why level 3 failed for this row (never touches status)"),
    Column("error_l4", "string", "", "why level 4 failed for this row"),
    Column("record_l3", "string", "", "JSON level-3 record"),
    Column("record_l4", "string", "", "JSON level-4 record"),
]}

# one column per model of these roles
PREFIXED: dict[str, Column] = {
    "det__": Column("det__<detector>", "string", None, "JSON Detections of one detector"),
    "cap__": Column("cap__<captioner>", "string", "", "short caption of one captioner"),
}


def column(name: str) -> Column:
    if name in COLUMNS:
        return COLUMNS[name]
    for prefix, col in PREFIXED.items():
        if name.startswith(prefix):
            return col
    raise KeyError(f"column {name!r} is not declared in grand.runtime.columns")


def fill(batch: dict, name: str, value=None) -> None:
    """(Re)create column `name` for every row with `value` (default: the declared default)."""
    batch[name] = [column(name).default if value is None else value] * len(batch["image_id"])


def ensure(batch: dict, names) -> None:
    """Columns a step reads that no step before it wrote (an optional step absent from the config)
    get their declared default."""
    for name in names:
        if name not in batch:
            fill(batch, name)
