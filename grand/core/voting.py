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
    done: dict = {}  # a model repeats a few labels many times: clean each distinct one once
    out = []
    for label in labels:
        if label not in done:
            key = _clean(label)
            done[label] = table.get(key, key)
        out.append(done[label])
    return out


def filter_score(det: Detections, min_score: float) -> Detections:
    """Boxes with score >= min_score (step A drops 'score < 0.1')."""
    return det[det.scores >= min_score]


def nms_detections(det: Detections, iou_threshold: float) -> Detections:
    """Class-agnostic greedy NMS; the result is in descending-score order."""
    return det[nms(det.xyxy, det.scores, iou_threshold)]


def _step_b_keep(scores: np.ndarray, labels: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """Boolean mask of boxes passing the model's step-B threshold. The reference gives "person"
    boxes of some models (EVA, Co-DETR) their own, lower threshold (0.2)."""
    # Compared in float32, the scores' own precision: a score of 0.7 stored as float32
    # (0.69999999) must pass a 0.7 threshold.
    thresholds = np.full(len(scores), spec.score_threshold, dtype=np.float32)
    if spec.person_threshold is not None:
        thresholds[labels == PERSON] = spec.person_threshold
    return scores >= thresholds


def prepare_model_detections(det: Detections, spec: DetectorSpec, voting: VotingSpec) -> tuple[Detections, np.ndarray]:
    """Steps A and B for one model. Returns the surviving boxes in descending-score order (ties:
    input order) with normalised labels, and each survivor's index in the input `det`."""
    labels = np.asarray(_normalize_labels(det.labels, voting.label_aliases), dtype=object)
    # the surviving indices are narrowed step by step; the boxes are selected once at the end
    index = np.flatnonzero(det.scores >= np.float32(voting.pre_score_threshold))  # step A: drop score < 0.1
    index = index[nms(det.xyxy[index], det.scores[index], voting.pre_nms_iou)]  # step A: NMS, IoU > 0.9
    index = index[_step_b_keep(det.scores[index], labels[index], spec)]  # step B; NMS order is preserved
    attributes = None if det.attributes is None else det.attributes[index]
    return Detections(det.xyxy[index], det.scores[index], labels[index], spec.name, attributes), index


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
    used = [[False] * len(d) for d in dets]
    # For each box of model p and each later model q: q's boxes that could join it, best first.
    joinable = {(p, q): _joinable(dets[p], dets[q], voting.match_iou) for p in range(len(dets)) for q in range(p + 1, len(dets))}
    rows = [_PlainRows(d, i) for d, (_, i) in zip(dets, prepared)]

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
                # Matched against the anchor box (not the growing group): the unused box of model q
                # with the highest IoU (the higher-scored one on ties) joins if that IoU reaches
                # match_iou; at most one box per model joins, and it is used up.
                for j in joinable[(p, q)].get(i, ()):
                    if not used[q][j if j >= 0 else ~j]:
                        if j >= 0:  # (a NaN IoU blocks the anchor, see _joinable)
                            used[q][j] = True
                            members.append((q, j))
                        break
            obj = _group_to_object(members, rows, detectors)
            (objects if _is_object(obj, members, detectors, voting) else floating).append(obj)
    return VoteResult(objects=objects, floating_objects=floating)


def _joinable(anchors: Detections, candidates: Detections, match_iou: float) -> dict[int, list[int]]:
    """anchor index -> indices of the candidate boxes whose IoU with it reaches match_iou, highest
    IoU first (lower index on ties): the first unused one joins the anchor's group.

    A NaN IoU (boxes with infinite coordinates) blocks the anchor while that candidate is unused,
    as an argmax over the row would pick it and then fail the threshold: such a candidate is
    listed as ~j = -j-1 < 0, ahead of the others.
    """
    if len(anchors) == 0 or len(candidates) == 0:
        return {}
    iou = box_iou(anchors.xyxy, candidates.xyxy)
    nan = np.isnan(iou)
    ii, jj = np.nonzero((iou >= match_iou) | nan)
    if len(ii) == 0:
        return {}
    ranked = np.where(nan[ii, jj], np.inf, iou[ii, jj])
    order = np.lexsort((jj, -ranked, ii))  # by anchor, then NaN first, then IoU descending, then index
    out: dict[int, list[int]] = {}
    for i, j, is_nan in zip(ii[order].tolist(), jj[order].tolist(), nan[ii, jj][order].tolist()):
        out.setdefault(i, []).append(~j if is_nan else j)
    return out


class _PlainRows:
    """One model's surviving boxes as Python values, read once per group member."""

    def __init__(self, det: Detections, input_index: np.ndarray) -> None:
        self.xyxy = det.xyxy.astype(np.float32, copy=False)
        self.scores = det.scores.tolist()
        self.labels = [str(x) for x in det.labels]
        self.extra = None if det.attributes is None else [" ".join(str(x).split()) for x in det.attributes]
        self.input_index = [int(x) for x in input_index]


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
    rows: list[_PlainRows],
    detectors: Sequence[DetectorSpec],
) -> VotedObject:
    labels: list[str] = []
    attributes: list[str] = []
    for p, i in members:
        text = rows[p].labels[i]
        # GRiT-style models name regions with descriptions: they go to attributes (reference).
        target = attributes if detectors[p].gives_attributes else labels
        if text and text not in target:
            target.append(text)
        # A model may also return descriptions beside its labels (Detections.attributes).
        if rows[p].extra is not None:
            extra = rows[p].extra[i]
            if extra and extra not in attributes:
                attributes.append(extra)
    p0, i0 = members[0]
    # A group made only of description boxes has no label; its first description names it, so
    # every object has a non-empty label when any member had text.
    label = labels[0] if labels else (attributes[0] if attributes else "")
    return VotedObject(
        bbox=rows[p0].xyxy[i0].copy(),
        score=rows[p0].scores[i0],
        label=label,
        labels=labels,
        models=[detectors[p].name for p, _ in members],
        attributes=attributes,
        indices=[rows[p].input_index[i] for p, i in members],
    )
