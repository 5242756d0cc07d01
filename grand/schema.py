"""The output schema, defined once: dataclasses here, the Arrow schema derived from them.

The sink, the exports and the tests all use these. Masks are COCO compressed RLE
`{size: [h, w], counts: str}` (grand.core.rle encodes/decodes them with pycocotools).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_VERSION = "1"


@dataclass
class RLE:
    size: list[int]  # [height, width]
    counts: str  # COCO compressed RLE string


@dataclass
class ObjectRecord:
    """One region. `objects` were seen by >= 2 models (or are a confident lone person); `floating_objects`
    by one. Ids are unique per image across both lists."""

    id: int
    bbox: list[float]  # [x1, y1, x2, y2] pixels in the EXIF-oriented image
    label: str  # the final label
    labels: list[str]  # every candidate label, priority order
    score: float  # score of the group's highest-priority box
    models: list[str]  # models that saw it, priority order
    attributes: list[str] = field(default_factory=list)  # short region descriptions
    depth: float | None = None  # median relative inverse depth in the box (larger = nearer)
    segmentation: RLE | None = None
    segmentation_source: str | None = None  # "sa1b_gt" or the segmenter's model name


@dataclass
class DepthStats:
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    median: float | None = None
    # With level1.depth.store_map: the image's relative inverse depth map as a base64 16-bit
    # grayscale PNG (0 = no measurement, 1..65535 = min..max; grand.core.depth.decode_depth_map).
    map_png: str | None = None


@dataclass
class ModelProvenance:
    role: str  # tagger | detector | segmenter | depth
    name: str
    backend: str
    checkpoint: str


@dataclass
class Level1Row:
    image_id: str  # stable: relative path (folders), member stem (tars), id column or shard/row (parquet)
    source: str  # where the bytes came from (path, or tar/parquet uri + member)
    shard: str
    index: int  # position in the shard
    status: str  # "ok" | "error"
    error: str | None = None  # reason when status == "error"
    width: int | None = None  # after EXIF orientation
    height: int | None = None
    tags: list[str] = field(default_factory=list)
    tag_scores: list[float] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)
    floating_objects: list[ObjectRecord] = field(default_factory=list)
    depth_stats: DepthStats | None = None
    provenance: list[ModelProvenance] = field(default_factory=list)


@dataclass
class GroundedPhrase:
    """A phrase of a caption: its character span in that caption and the objects it names."""

    phrase: str
    tokens_positive: list[int]  # [start, end) character offsets: caption[start:end] == phrase
    ids: list[int] = field(default_factory=list)  # object ids (objects or floating_objects of this row)
    bbox: list[float] | None = None  # [x1, y1, x2, y2] of the best phrase box, when grounded


@dataclass
class ShortCaption:
    model: str
    caption: str
    details: list[GroundedPhrase] = field(default_factory=list)


@dataclass
class Landmark:
    category: str | None = None  # e.g. "Outdoor"; None when the answer could not be parsed
    fine_category: str | None = None  # e.g. "Urban"
    answers: list[str] = field(default_factory=list)  # the model's raw answers, stage 1 then stage 2


@dataclass
class Relationship:
    phrase: str
    object_ids: list[int]


@dataclass
class Level2Row:
    """Level 2 of one image. `objects` / `floating_objects` are level 1's after phrase grounding:
    phrase nouns added to `labels`, floating objects that gained a second label promoted, unmatched
    phrase boxes added as new floating objects (model "phrase_grounding:<name>"). Level 1's shard
    is never rewritten."""

    image_id: str
    shard: str
    index: int
    status: str  # "ok" | "error"
    error: str | None = None
    short_captions: list[ShortCaption] = field(default_factory=list)
    landmark: Landmark | None = None
    relationships: list[Relationship] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)
    floating_objects: list[ObjectRecord] = field(default_factory=list)
    provenance: list[ModelProvenance] = field(default_factory=list)


@dataclass
class SceneLayer:
    """One depth layer of the scene graph: its spatial groups, each a list of object ids."""

    name: str  # "immediate foreground" | "foreground" | "midground" | "background" | "unknown depth"
    groups: list[list[int]] = field(default_factory=list)


@dataclass
class SceneGraph:
    """What level 3 tells the LLM about an image: depth layers of object groups (reference rules),
    plus the text rendered from it (with level 2's captions, relationships and landmark) that the
    prompt holds between delimiters."""

    layers: list[SceneLayer] = field(default_factory=list)
    text: str = ""


@dataclass
class CaptionAttempt:
    """One dense caption the LLM wrote, and its chain-of-thought check against the scene graph."""

    caption: str
    reasoning: str = ""  # the LLM's checklist answer, as written
    checklist: list[str] = field(default_factory=list)  # objects the caption claims, parsed from `reasoning`
    missing: list[str] = field(default_factory=list)  # checklist objects not found in the scene graph
    passed: bool = False


@dataclass
class DenseCaption:
    """Level 3's caption: the last attempt (kept and flagged when no attempt passed), its phrases
    grounded to objects, and every attempt."""

    caption: str
    verified: bool  # the kept caption passed verification (False: flagged, still kept)
    details: list[GroundedPhrase] = field(default_factory=list)
    attempts: list[CaptionAttempt] = field(default_factory=list)


@dataclass
class Level3Row:
    """Level 3 of one image: scene graph and verified dense caption. An error row keeps level 2's
    reason, or names the LLM failure (levels 1-2 are unaffected)."""

    image_id: str
    shard: str
    index: int
    status: str  # "ok" | "error"
    error: str | None = None
    scene_graph: SceneGraph | None = None
    dense_caption: DenseCaption | None = None
    provenance: list[ModelProvenance] = field(default_factory=list)


@dataclass
class Level4Row:
    """Level 4 of one image: the extra-context paragraph (history, usage, dangers, what may happen)."""

    image_id: str
    shard: str
    index: int
    status: str  # "ok" | "error"
    error: str | None = None
    additional_context: str | None = None
    provenance: list[ModelProvenance] = field(default_factory=list)


# -- Arrow schema derived from the dataclasses ------------------------------------------------------
_SCALARS = {str: pa.string(), int: pa.int32(), float: pa.float32(), bool: pa.bool_(), bytes: pa.binary()}


def arrow_type(tp) -> pa.DataType:
    """Arrow type for a (possibly Optional / list / dataclass) annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        return arrow_type(args[0])
    if origin is list:
        return pa.list_(arrow_type(typing.get_args(tp)[0]))
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return pa.struct([pa.field(f.name, arrow_type(hints[f.name])) for f in dataclasses.fields(tp)])
    if tp in _SCALARS:
        return _SCALARS[tp]
    raise TypeError(f"no Arrow type for {tp}")


def arrow_schema(row_type, level: int) -> pa.Schema:
    hints = typing.get_type_hints(row_type)
    fields = [pa.field(f.name, arrow_type(hints[f.name])) for f in dataclasses.fields(row_type)]
    return pa.schema(fields, metadata={"grand.schema_version": SCHEMA_VERSION, "grand.level": str(level)})


LEVEL1_SCHEMA = arrow_schema(Level1Row, level=1)
LEVEL2_SCHEMA = arrow_schema(Level2Row, level=2)
LEVEL3_SCHEMA = arrow_schema(Level3Row, level=3)
LEVEL4_SCHEMA = arrow_schema(Level4Row, level=4)
ROW_TYPES = {1: Level1Row, 2: Level2Row, 3: Level3Row, 4: Level4Row}
SCHEMAS = {1: LEVEL1_SCHEMA, 2: LEVEL2_SCHEMA, 3: LEVEL3_SCHEMA, 4: LEVEL4_SCHEMA}
