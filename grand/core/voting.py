"""Cross-model merge of detector boxes: the reference GranD level-1 merge (steps A and B).

Every rule below cites docs/REFERENCE_PIPELINE.md ("Level 1"); the thresholds themselves live in
the config (`DetectorSpec`, `VotingSpec`), whose defaults are the reference values.

    per model:   normalise labels -> drop score < 0.1 -> class-agnostic NMS (IoU > 0.9)   (step A)
                 -> per-model score threshold ("person" may have its own)                 (step B)
    all models:  greedy grouping in model-priority order (IoU >= 0.65, one box per model)
                 -> groups seen by >= 2 models are objects, the rest float, except a lone
                    high-confidence person                                                 (step B)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from grand.config import DetectorSpec, VotingSpec
from grand.core.detections import Detections
from grand.core.geometry import box_iou, nms

PERSON = "person"


@dataclass
class VotedObject:
    """One group of agreeing boxes (or one lone box)."""

    bbox: np.ndarray  # (4,) xyxy float32 of the group's first (highest-priority) box
    score: float  # that box's score
    label: str  # first entry of `labels` (see _group_to_object for groups without one)
    labels: list[str]  # distinct normalised labels of the group, priority order
    models: list[str]  # model name of each member, priority order (distinct by construction)
    attributes: list[str]  # descriptions from gives_attributes models (GRiT), not put in labels
    indices: list[int] = field(default_factory=list)  # each member's index in its model's input Detections

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for passing between pipeline stages)."""
        return {
            "bbox": [float(v) for v in self.bbox],
            "score": float(self.score),
            "label": self.label,
            "labels": list(self.labels),
            "models": list(self.models),
            "attributes": list(self.attributes),
            "indices": [int(i) for i in self.indices],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VotedObject":
        return cls(
            bbox=np.asarray(d["bbox"], dtype=np.float32).reshape(4),
            score=float(d["score"]),
            label=d["label"],
            labels=list(d["labels"]),
            models=list(d["models"]),
            attributes=list(d.get("attributes", [])),
            indices=[int(i) for i in d.get("indices", [])],
        )


@dataclass
class VoteResult:
    objects: list[VotedObject]
    floating_objects: list[VotedObject]


# -- per-model steps --------------------------------------------------------------------------
def _clean(text) -> str:
    return " ".join(str(text).lower().split())


def normalize_label(label: str, aliases: Mapping[str, str]) -> str:
    """Lower-case, trim and collapse spaces, then map aliases (reference: man/woman/men/women ->
    person). Alias keys and values are normalised the same way, so a config may write "Man"."""
    return _normalize_labels([label], aliases)[0]


def _normalize_labels(labels, aliases: Mapping[str, str]) -> list[str]:
    table = {_clean(k): _clean(v) for k, v in aliases.items()}
    return [table.get(key, key) for key in map(_clean, labels)]


def filter_score(det: Detections, min_score: float) -> Detections:
    """Boxes with score >= min_score (step A drops 'score < 0.1')."""
    return det[det.scores >= min_score]


def nms_detections(det: Detections, iou_threshold: float) -> Detections:
    """Class-agnostic greedy NMS; the result is in descending-score order."""
    return det[nms(det.xyxy, det.scores, iou_threshold)]


def _step_b_keep(det: Detections, spec: DetectorSpec) -> np.ndarray:
    """Boolean mask of boxes passing the model's step-B threshold. The reference gives "person"
    boxes of some models (EVA, Co-DETR) their own, lower threshold (0.2)."""
    # Compared in float32, the scores' own precision: a score of 0.7 stored as float32
    # (0.69999999) must pass a 0.7 threshold.
    thresholds = np.full(len(det), spec.score_threshold, dtype=np.float32)
    if spec.person_threshold is not None:
        thresholds[det.labels == PERSON] = spec.person_threshold
    return det.scores >= thresholds


def prepare_model_detections(det: Detections, spec: DetectorSpec, voting: VotingSpec) -> tuple[Detections, np.ndarray]:
    """Steps A and B for one model. Returns the surviving boxes in descending-score order (ties:
    input order) with normalised labels, and each survivor's index in the input `det`."""
    labels = np.asarray(_normalize_labels(det.labels, voting.label_aliases), dtype=object)
    det = Detections(det.xyxy, det.scores, labels, spec.name, det.attributes)
    index = np.arange(len(det))
    keep = det.scores >= np.float32(voting.pre_score_threshold)  # step A: drop score < 0.1
    det, index = det[keep], index[keep]
    order = nms(det.xyxy, det.scores, voting.pre_nms_iou)  # step A: NMS suppressing IoU > 0.9
    det, index = det[order], index[order]
    keep = _step_b_keep(det, spec)  # step B: per-model thresholds; NMS order is preserved
    return det[keep], index[keep]


# -- grouping ---------------------------------------------------------------------------------
def vote_detections(
    per_model: Mapping[str, Detections],
    detectors: Sequence[DetectorSpec],
    voting: VotingSpec,
) -> VoteResult:
    """Merge one image's detections of several models into objects and floating objects.

    `per_model` maps a detector's config name to its boxes; a configured detector missing from it
    counts as a model that found nothing (e.g. an open-vocabulary detector on an image without
    tags). `detectors` is the priority order (reference: EVA-1, Co-DETR, EVA-2, OV-SAM, OWL-ViT,
    POMP, GRiT): the first model of a group gives its box, score and first label.
    """
    names = [d.name for d in detectors]
    unknown = sorted(set(per_model) - set(names))
    if unknown:
        raise ValueError(f"detections from models that are not configured detectors: {', '.join(unknown)}")

    prepared = [prepare_model_detections(per_model.get(s.name, Detections.empty(s.name)), s, voting) for s in detectors]
    dets = [p[0] for p in prepared]
    used = [np.zeros(len(d), dtype=bool) for d in dets]
    # IoU of every box with every box of each later model, computed once per model pair.
    ious = {(p, q): box_iou(dets[p].xyxy, dets[q].xyxy) for p in range(len(dets)) for q in range(p + 1, len(dets))}

    objects: list[VotedObject] = []
    floating: list[VotedObject] = []
    for p, det in enumerate(dets):
        for i in range(len(det)):
            if used[p][i]:
                continue
            # Each unused box anchors a group (reference: greedy, priority order). Boxes of earlier
            # models are all used by now, so only later models can join; this also means two boxes
            # of the same model never share a group.
            used[p][i] = True
            members = [(p, i)]
            for q in range(p + 1, len(dets)):
                if len(dets[q]) == 0:
                    continue
                row = np.where(used[q], -1.0, ious[(p, q)][i])
                j = int(row.argmax())  # first maximum: the higher-scored box of model q on ties
                # Matched against the anchor box (not the growing group); at most
                # one box per model joins, and it is used up.
                if row[j] >= voting.match_iou:
                    used[q][j] = True
                    members.append((q, j))
            obj = _group_to_object(members, dets, prepared, detectors)
            (objects if _is_object(obj, members, detectors, voting) else floating).append(obj)
    return VoteResult(objects=objects, floating_objects=floating)


def _is_object(
    obj: VotedObject,
    members: list[tuple[int, int]],
    detectors: Sequence[DetectorSpec],
    voting: VotingSpec,
) -> bool:
    # Reference: "kept only if detected by at least two models" is a split, not a deletion.
    if len(members) >= voting.min_models:
        return True
    # Reference exception: a lone, confident "person" (EVA > 0.75, Co-DETR > 0.5) is an object.
    if len(members) == 1:
        spec = detectors[members[0][0]]
        return (
            spec.lone_person_threshold is not None
            and obj.label == PERSON
            and np.float32(obj.score) > np.float32(spec.lone_person_threshold)
        )
    return False


def _group_to_object(
    members: list[tuple[int, int]],
    dets: list[Detections],
    prepared: list[tuple[Detections, np.ndarray]],
    detectors: Sequence[DetectorSpec],
) -> VotedObject:
    labels: list[str] = []
    attributes: list[str] = []
    for p, i in members:
        text = str(dets[p].labels[i])
        # GRiT-style models name regions with descriptions: they go to attributes (reference).
        target = attributes if detectors[p].gives_attributes else labels
        if text and text not in target:
            target.append(text)
        # A model may also return descriptions beside its labels (Detections.attributes).
        if dets[p].attributes is not None:
            extra = " ".join(str(dets[p].attributes[i]).split())
            if extra and extra not in attributes:
                attributes.append(extra)
    p0, i0 = members[0]
    # A group made only of description boxes has no label; its first description names it, so
    # every object has a non-empty label when any member had text.
    label = labels[0] if labels else (attributes[0] if attributes else "")
    return VotedObject(
        bbox=dets[p0].xyxy[i0].astype(np.float32).copy(),
        score=float(dets[p0].scores[i0]),
        label=label,
        labels=labels,
        models=[detectors[p].name for p, _ in members],
        attributes=attributes,
        indices=[int(prepared[p][1][i]) for p, i in members],
    )
