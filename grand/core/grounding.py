"""Level-2 phrase grounding: link phrase boxes to level-1 objects (reference: docs/REFERENCE_PIPELINE.md,
"Level 2 — Grounding").

    "A phrase box links to a level-1 object (or floating object) if IoU > 0.75; the noun is added to
    its labels; floating objects that gain a second label are promoted to objects; unmatched phrase
    boxes become new floating objects. Relationships = phrase + linked object ids."

Rules, as implemented (objects are grand.schema.ObjectRecord, as they travel between pipeline steps:
id, bbox [x1, y1, x2, y2], label, labels, score, models, attributes, depth, segmentation,
segmentation_source):

- Phrases are processed in the given order, and each phrase's boxes in the given order; every box
  sees the objects as left by the boxes before it, so a region found by two phrases becomes one
  object. The result is a pure function of the input (no randomness, no dict-order surprises).
- A box links to the single object or floating object with the highest IoU, if that IoU is strictly
  greater than `match_iou`; equal IoUs go to the lower id.
- Linking appends the phrase's noun to `labels` unless already there (case-insensitive); `label`
  (the final label chosen at level 1) is left alone. The grounding model is appended to `models`
  (once), since it too has now seen the region.
- A floating object that gains a label and then holds >= 2 distinct labels (case-insensitive) is
  promoted: moved to `objects`, keeping its id. `objects` keeps level-1 order with promoted ones
  appended in promotion order; `floating_objects` keeps level-1 order with new ones appended.
  Objects made from phrase boxes follow the same rule (the reference promotes on a second label,
  not on a second model).
- A box that links to nothing becomes a new floating object with a fresh id (max id over both lists
  + 1, so ids stay unique per image), and the phrase links to it.
- Boxes with a non-finite coordinate or zero area are ignored: they cannot overlap anything, and a
  zero-area region is no object.
- `links` and `boxes` are keyed by phrase text; a phrase text given twice (e.g. by two captions)
  pools its ids and keeps the better box.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from grand.core.geometry import box_area, box_iou
from grand.schema import ObjectRecord

MODEL_PREFIX = "phrase_grounding:"


@dataclass
class PhraseBoxes:
    """The boxes a grounding model returned for one phrase."""

    phrase: str
    label: str  # the phrase's head-noun lemma, added to the labels of linked objects
    boxes: np.ndarray  # (K, 4) xyxy pixels
    scores: np.ndarray  # (K,)


@dataclass
class GroundingResult:
    objects: list[ObjectRecord]
    floating_objects: list[ObjectRecord]
    links: dict[str, list[int]] = field(default_factory=dict)  # phrase -> linked ids, first-link order
    relationships: list[dict] = field(default_factory=list)  # {phrase, object_ids}, phrases with >= 1 id
    boxes: dict[str, list[float]] = field(default_factory=dict)  # phrase -> its best-scoring box


def _fold(text: str) -> str:
    return text.strip().casefold()


def _distinct_label_count(labels: Sequence[str]) -> int:
    return len({_fold(x) for x in labels if _fold(x)})


def _add_label(obj: ObjectRecord, label: str) -> bool:
    """Append `label` to obj.labels unless present (case-insensitive); True when it was added."""
    label = label.strip()
    if not label or _fold(label) in {_fold(x) for x in obj.labels}:
        return False
    obj.labels.append(label)
    return True


def _add_model(obj: ObjectRecord, model: str) -> None:
    if model not in obj.models:
        obj.models.append(model)


def _valid_boxes(pb: PhraseBoxes) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of one phrase with unusable boxes dropped; raises on malformed arrays."""
    boxes = np.asarray(pb.boxes, dtype=np.float64)
    scores = np.asarray(pb.scores, dtype=np.float64).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"phrase {pb.phrase!r}: boxes must be (K, 4), got shape {boxes.shape}")
    if len(scores) != len(boxes):
        raise ValueError(f"phrase {pb.phrase!r}: {len(boxes)} boxes but {len(scores)} scores")
    keep = np.isfinite(boxes).all(axis=1) & (box_area(boxes) > 0)
    return boxes[keep], scores[keep]


def _best_match(box: np.ndarray, candidates: list[ObjectRecord], match_iou: float) -> ObjectRecord | None:
    """The candidate with the highest IoU > match_iou (ties -> lower id), or None."""
    if not candidates:
        return None
    ious = box_iou(box, np.array([c.bbox for c in candidates], dtype=np.float64))[0]
    best = float(ious.max())
    if not best > match_iou:
        return None
    tied = [c for c, v in zip(candidates, ious) if v == best]
    return min(tied, key=lambda c: c.id)


def _new_floating(object_id: int, box: np.ndarray, score: float, label: str, model: str) -> ObjectRecord:
    label = label.strip()
    return ObjectRecord(
        id=object_id, bbox=[round(float(v), 2) for v in box], label=label, labels=[label] if label else [],
        score=round(float(score), 5),  # same precision as level-1 objects
        models=[model],
    )


class _Grounder:
    """Mutable state of one image's grounding pass (private: the API is apply_phrase_grounding)."""

    def __init__(self, objects: list[ObjectRecord], floating: list[ObjectRecord], match_iou: float, model: str):
        # Deep copies: callers keep their level-1 objects untouched (they may be reused or compared).
        self.objects = copy.deepcopy(list(objects))
        self.floating = copy.deepcopy(list(floating))
        self.match_iou = match_iou
        self.model = model
        ids = [int(o.id) for o in self.objects + self.floating]
        if len(ids) != len(set(ids)):
            raise ValueError("object ids must be unique across objects and floating_objects")
        self.next_id = max(ids) + 1 if ids else 0
        self.links: dict[str, list[int]] = {}
        self.best: dict[str, tuple[float, list[float]]] = {}

    def ground_box(self, phrase: str, label: str, box: np.ndarray, score: float) -> None:
        target = _best_match(box, self.objects + self.floating, self.match_iou)
        if target is None:
            target = _new_floating(self.next_id, box, score, label, self.model)
            self.next_id += 1
            self.floating.append(target)
        else:
            gained = _add_label(target, label)
            _add_model(target, self.model)
            if gained and _distinct_label_count(target.labels) >= 2 and self._is_floating(target):
                self._promote(target)
        ids = self.links.setdefault(phrase, [])
        if target.id not in ids:
            ids.append(target.id)
        # Strictly greater: the earlier box keeps a tied best score.
        if phrase not in self.best or score > self.best[phrase][0]:
            self.best[phrase] = (score, [round(float(v), 2) for v in box])

    def _is_floating(self, obj: ObjectRecord) -> bool:
        return any(o is obj for o in self.floating)

    def _promote(self, obj: ObjectRecord) -> None:
        # Remove by identity: equality could hit a look-alike object with another id.
        self.floating = [o for o in self.floating if o is not obj]
        self.objects.append(obj)

    def result(self) -> GroundingResult:
        relationships = [{"phrase": p, "object_ids": list(ids)} for p, ids in self.links.items() if ids]
        return GroundingResult(
            objects=self.objects,
            floating_objects=self.floating,
            links={p: list(ids) for p, ids in self.links.items()},
            relationships=relationships,
            boxes={p: box for p, (_, box) in self.best.items()},
        )


def apply_phrase_grounding(
    objects: Sequence[ObjectRecord],
    floating: Sequence[ObjectRecord],
    phrases: Sequence[PhraseBoxes],
    *,
    source_model: str,
    match_iou: float = 0.75,
) -> GroundingResult:
    """Link every phrase box to a level-1 object, or make it a new floating object (rules: module doc).

    `links` has an entry (possibly empty) for every phrase; `relationships` only for phrases with ids,
    in phrase order; `boxes` only for phrases with at least one usable box. Inputs are not mutated.
    """
    state = _Grounder(objects, floating, match_iou, f"{MODEL_PREFIX}{source_model}")
    for pb in phrases:
        state.links.setdefault(pb.phrase, [])
        boxes, scores = _valid_boxes(pb)
        for box, score in zip(boxes, scores):
            state.ground_box(pb.phrase, pb.label, box, float(score))
    return state.result()


def caption_details(
    caption: str,
    phrases: Sequence[tuple[str, int, int]],
    links: dict[str, list[int]],
    boxes: dict[str, list[float]],
) -> list[dict]:
    """GroundedPhrase-shaped dicts {phrase, tokens_positive, ids, bbox} for one caption, in span order.

    Spans are [start, end) character offsets; one that does not spell its phrase is a bug upstream
    (the phrase extractor produced it from this very caption), so it raises ValueError.
    """
    details = []
    for text, start, end in sorted(phrases, key=lambda p: (p[1], p[2])):
        if not (0 <= start < end <= len(caption)) or caption[start:end] != text:
            raise ValueError(f"span [{start}, {end}) of caption {caption!r} is not the phrase {text!r}")
        bbox = boxes.get(text)
        details.append(
            {
                "phrase": text,
                "tokens_positive": [int(start), int(end)],
                "ids": list(links.get(text, [])),
                "bbox": list(bbox) if bbox is not None else None,
            }
        )
    return details
