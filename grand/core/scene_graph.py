"""Level-3 scene graph: an image's objects in depth layers and spatial groups, rendered as the text
the dense-caption LLM reads (reference: docs/REFERENCE_PIPELINE.md, "Level 3").

Rules, as implemented (input: a level-2 record dict, `dataclasses.asdict(Level2Row)`):

- Objects: `objects`, plus `floating_objects` when `spec.include_floating`. When an image has no
  `objects` at all, its floating objects are used instead (the reference does the same, so that an
  image whose detectors never agreed still gets a non-empty graph). Objects whose box is missing or
  not finite are left out (they have no centre to group by). At most `spec.max_objects`, the
  largest box area first (ties: lower id); this order is also the order of objects everywhere below.
- Depth layer: n = 1 - (d - min) / (max - min) over the included objects that have a depth (larger
  depth = nearer, so the nearest object gets n = 0); n = 0.5 for all of them when all depths are
  equal. n < t0: "immediate foreground", < t1: "foreground", < t2: "midground", else "background".
- An object without a depth (None or not finite; e.g. the depth stage was off) is not guessed into
  a layer: it goes to a fifth layer, "unknown depth", listed last. Putting it in the midground would
  make the LLM write "in the middle distance" about something nobody measured.
- Groups: within a layer, objects whose box centres are closer than `spec.group_distance_px`
  (strictly) are linked, and a group is a connected component of that relation (transitive: A-B and
  B-C close puts A, B, C in one group even when A-C are far apart). The reference grows a group
  greedily from its first object only, so its result depends on list order; components do not.
  Groups are ordered by their largest object; objects inside a group largest first.
- Layers without objects are left out of `SceneGraph.layers` and of the text.

The text (`SceneGraph.text`, reference layout):

    Immediate Foreground:
    Group 1: dog (a brown dog lying on the grass); person (x2)
    Background:
    Group 2: tree (x3); building (a tall brick building)

    Short Captions:
    A man and his dog in a park.

    Relationships:
    a man with a dog (Group 1)

    Landmarks:
    Outdoor, Natural landscape

Group numbers run over the whole graph, so that relationships can name them. Every string in it
comes from a model (labels, attributes, captions, phrases) and is passed through `clean_text`: one
line, capped length, nothing that looks like a prompt delimiter or a chat-role marker. So the text
cannot close the `<scene_graph>` block the prompt puts it in or start a new chat turn (see
grand.core.llm_prompts, which also re-checks the whole block).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Iterable

import numpy as np

from grand.config import SceneGraphSpec
from grand.core.text import MAX_MODEL_TEXT_CHARS, squash_spaces
from grand.schema import SceneGraph, SceneLayer

LAYER_NAMES: tuple[str, ...] = ("immediate foreground", "foreground", "midground", "background")
UNKNOWN_DEPTH = "unknown depth"

# caps on model strings in the prompt (characters); a runaway caption must not fill the context
MAX_LABEL_CHARS = 60
MAX_ATTRIBUTE_CHARS = 150
MAX_CAPTION_CHARS = 400
MAX_PHRASE_CHARS = 150
MAX_ATTRIBUTES_PER_OBJECT = 2
MAX_RELATIONSHIPS = 40

# -- sanitising model strings -----------------------------------------------------------------------
# Anything tag-like: our own delimiters (<scene_graph>, </image_details>), </s>, <s>, <|im_start|>,
# <<SYS>>, [INST] ... and then any stray angle bracket.
_TAG_RE = re.compile(r"<\|[^<>|]{0,40}\|>|<<\s*/?\s*sys\s*>>|\[\s*/?\s*inst\s*\]|</?\s*[a-z_][^<>]{0,40}>", re.IGNORECASE)
_ANGLE_RE = re.compile(r"[<>]")
# chat-role markers of the common templates (Vicuna "USER:"/"ASSISTANT:", Alpaca "### Instruction:",
# "Human:", ChatML role names); the marker is dropped, the rest of the text stays
_ROLE_RE = re.compile(r"\b(?:user|assistant|system|human|gpt|instruction|instructions|response)\s*:", re.IGNORECASE)
# markdown-ish rules and headers ("###", "---", "===", "```") that prompts use as separators
_RULE_RE = re.compile(r"#{2,}|-{3,}|={3,}|_{3,}|\*{3,}|~{3,}|`{3,}")
_SPACE_RE = re.compile(r"\s+")


def clean_text(text: object, max_chars: int | None = None) -> str:
    """A model-written string made safe to place inside a prompt's data block: one line, NFKC
    normalised (full-width look-alikes become plain ASCII first, so they are caught too), control
    characters removed, tag-like markup, chat-role markers and separator rules removed, at most
    `max_chars` characters (cut at a word boundary). None -> ""."""
    if text is None:
        return ""
    s = unicodedata.normalize("NFKC", str(text)[:MAX_MODEL_TEXT_CHARS])
    s = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s)
    s = "".join(c for c in s if unicodedata.category(c) not in ("Cf", "Co", "Cs"))
    s = squash_spaces(s)  # linear; the patterns below must never see a long run of spaces
    # repeated: removing one marker must not join the pieces of another ("<sc<x>ene_graph>")
    for _ in range(3):
        before = s
        s = _TAG_RE.sub(" ", s)
        s = _ANGLE_RE.sub(" ", s)
        s = _ROLE_RE.sub(" ", s)
        s = _RULE_RE.sub(" ", s)
        if s == before:
            break
    s = _SPACE_RE.sub(" ", s).strip()
    if max_chars is not None and len(s) > max_chars:
        cut = s[:max_chars]
        if " " in cut[max_chars // 2:]:
            cut = cut[: cut.rindex(" ")]
        s = cut.rstrip(" ,;:")
    return s


def clean_label(text: object) -> str:
    """An object label for the prompt: cleaned, LVIS-style underscores as spaces ("traffic_light")."""
    return clean_text(str(text or "").replace("_", " "), MAX_LABEL_CHARS)


def object_label(obj: dict) -> str:
    """The object's final label, else its first candidate label, else "object"."""
    for cand in [obj.get("label"), *(obj.get("labels") or [])]:
        label = clean_label(cand)
        if label:
            return label
    return "object"


def object_attributes(obj: dict, limit: int = MAX_ATTRIBUTES_PER_OBJECT) -> list[str]:
    """Up to `limit` distinct (case-insensitive) cleaned attributes, not repeating the label."""
    label = object_label(obj).casefold()
    out: list[str] = []
    seen = {label}
    for attr in obj.get("attributes") or []:
        a = clean_text(attr, MAX_ATTRIBUTE_CHARS)
        if a and a.casefold() not in seen:
            seen.add(a.casefold())
            out.append(a)
            if len(out) >= limit:
                break
    return out


def describe_objects(objects: Iterable[dict]) -> list[str]:
    """'label (attr1 / attr2)' per object; identical descriptions merged as 'label (x3)', first-seen order."""
    counts: dict[str, int] = {}
    for obj in objects:
        attrs = object_attributes(obj)
        text = object_label(obj) + (f" ({' / '.join(attrs)})" if attrs else "")
        counts[text] = counts.get(text, 0) + 1
    return [text if n == 1 else f"{text} (x{n})" for text, n in counts.items()]


# -- geometry ---------------------------------------------------------------------------------------
def _box(obj: dict) -> tuple[float, float, float, float] | None:
    b = obj.get("bbox")
    try:
        x1, y1, x2, y2 = (float(v) for v in b)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return x1, y1, x2, y2


def box_area(obj: dict) -> float:
    b = _box(obj)
    return 0.0 if b is None else max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _depth(obj: dict) -> float | None:
    d = obj.get("depth")
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if math.isfinite(d) else None


# -- selection, layers, groups ------------------------------------------------------------------------
def scene_objects(record: dict, spec: SceneGraphSpec) -> list[dict]:
    """The objects the scene graph of `record` shows (rules: module doc), largest box first. These are
    the record's own dicts: do not mutate them."""
    objects = list(record.get("objects") or [])
    floating = list(record.get("floating_objects") or [])
    pool = objects + floating if (spec.include_floating or not objects) else objects
    pool = [o for o in pool if _box(o) is not None]
    pool.sort(key=lambda o: (-box_area(o), int(o["id"])))
    return pool[: spec.max_objects]


def depth_layer(n: float, thresholds: list[float]) -> str:
    """Layer name of a normalised nearness n (0 = nearest object, 1 = farthest)."""
    for name, t in zip(LAYER_NAMES, thresholds):
        if n < t:
            return name
    return LAYER_NAMES[-1]


def assign_layers(objects: list[dict], thresholds: list[float]) -> dict[int, str]:
    """Object id -> layer name (reference normalisation; objects without depth -> UNKNOWN_DEPTH)."""
    depths = {int(o["id"]): _depth(o) for o in objects}
    known = [d for d in depths.values() if d is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
    out = {}
    for oid, d in depths.items():
        if d is None:
            out[oid] = UNKNOWN_DEPTH
            continue
        n = 0.5 if hi == lo else 1.0 - (d - lo) / (hi - lo)
        out[oid] = depth_layer(n, thresholds)
    return out


def group_by_distance(objects: list[dict], distance_px: float) -> list[list[int]]:
    """Connected components of "box centres closer than distance_px" (strict), as lists of ids.
    Groups keep the input order: a group sits where its first object does, members in input order."""
    if not objects:
        return []
    boxes = np.array([_box(o) for o in objects], dtype=np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    close = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1) < distance_px
    component = [-1] * len(objects)
    groups: list[list[int]] = []
    for start in range(len(objects)):
        if component[start] >= 0:
            continue
        component[start] = len(groups)
        members, stack = [start], [start]
        while stack:
            k = stack.pop()
            for j in np.flatnonzero(close[k]):
                if component[j] < 0:
                    component[j] = component[start]
                    members.append(int(j))
                    stack.append(int(j))
        groups.append(sorted(members))
    return [[int(objects[k]["id"]) for k in members] for members in groups]


# -- the graph --------------------------------------------------------------------------------------
def build_scene_graph(record: dict, spec: SceneGraphSpec | None = None) -> SceneGraph:
    """Depth layers of spatial groups for one level-2 record, and its rendered text (module doc)."""
    spec = spec or SceneGraphSpec()
    objects = scene_objects(record, spec)
    layer_of = assign_layers(objects, spec.layer_thresholds)
    layers = []
    for name in (*LAYER_NAMES, UNKNOWN_DEPTH):
        members = [o for o in objects if layer_of[int(o["id"])] == name]
        if members:
            layers.append(SceneLayer(name=name, groups=group_by_distance(members, spec.group_distance_px)))
    return SceneGraph(layers=layers, text=render_scene_graph(record, layers, objects))


def render_scene_graph(record: dict, layers: list[SceneLayer], objects: list[dict]) -> str:
    """The scene graph as prompt text (layout: module doc); every model string cleaned."""
    by_id = {int(o["id"]): o for o in objects}
    lines: list[str] = []
    group_of: dict[int, int] = {}
    number = 0
    for layer in layers:
        lines.append(f"{layer.name.title()}:")
        for group in layer.groups:
            number += 1
            for oid in group:
                group_of[oid] = number
            lines.append(f"Group {number}: " + "; ".join(describe_objects(by_id[oid] for oid in group)))

    lines += ["", "Short Captions:"]
    seen: set[str] = set()
    for cap in record.get("short_captions") or []:
        text = clean_text(cap.get("caption") if isinstance(cap, dict) else cap, MAX_CAPTION_CHARS)
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            lines.append(text)

    lines += ["", "Relationships:"]
    seen = set()
    for rel in record.get("relationships") or []:
        phrase = clean_text(rel.get("phrase"), MAX_PHRASE_CHARS)
        ids = [i for i in rel.get("object_ids") or [] if isinstance(i, (int, float)) and not isinstance(i, bool)]
        if not phrase or not ids or phrase.casefold() in seen or len(seen) >= MAX_RELATIONSHIPS:
            continue
        seen.add(phrase.casefold())
        groups = sorted({group_of[int(i)] for i in ids if int(i) in group_of})
        lines.append(phrase + (f" ({', '.join(f'Group {g}' for g in groups)})" if groups else ""))

    lines += ["", "Landmarks:"]
    landmark = landmark_text(record.get("landmark"))
    if landmark:
        lines.append(landmark)
    return "\n".join(lines)


def landmark_text(landmark: dict | None) -> str:
    """'Category, Fine category' from a level-2 landmark (the parts that were understood), or ""."""
    if not landmark:
        return ""
    parts = [clean_text(landmark.get(k), MAX_LABEL_CHARS) for k in ("category", "fine_category")]
    return ", ".join(p for p in parts if p)
