"""grand's mask encoding and cross-model vote as they were before issue 18, kept verbatim as the
baseline (so the loops below deliberately repeat today's grand/core code in their old form): benchmarks/postprocess.py times the current code against it in the same run, and
tests/test_voting.py checks on random inputs that the current vote returns exactly what this one does.
Not used by the pipeline."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from grand.core.detections import Detections
from grand.core.geometry import _nms_low_memory, box_iou
from grand.core.voting import VoteResult, VotedObject, _is_object, _normalize_labels, _step_b_keep


def encode_masks(masks: np.ndarray) -> list[dict]:
    """pycocotools on the whole frames, after the transposing copy into (H, W, N) Fortran order."""
    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return []
    stacked = np.asfortranarray(np.moveaxis(masks.astype(bool), 0, -1).astype(np.uint8))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in mask_utils.encode(stacked)]


def gather_masks(chunks) -> np.ndarray:
    """The SAM adapter's old host copy: each chunk to numpy, then one concatenation."""
    return np.concatenate([c.cpu().numpy() for c in chunks]).astype(bool, copy=False)


def nms(xyxy, scores, iou_threshold: float) -> np.ndarray:
    """The old NMS: each kept box against the survivors, for any number of boxes (today's nms keeps
    this loop, _nms_low_memory, only above 2048 boxes)."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    return _nms_low_memory(boxes, order, iou_threshold)


def prepare_model_detections(det, spec, voting):
    labels = np.asarray(_normalize_labels(det.labels, voting.label_aliases), dtype=object)
    det = Detections(det.xyxy, det.scores, labels, spec.name, det.attributes)
    index = np.arange(len(det))
    keep = det.scores >= np.float32(voting.pre_score_threshold)
    det, index = det[keep], index[keep]
    order = nms(det.xyxy, det.scores, voting.pre_nms_iou)
    det, index = det[order], index[order]
    keep = _step_b_keep(det.scores, det.labels, spec)
    return det[keep], index[keep]


def vote_detections(per_model, detectors, voting) -> VoteResult:
    names = [d.name for d in detectors]
    unknown = sorted(set(per_model) - set(names))
    if unknown:
        raise ValueError(f"detections from models that are not configured detectors: {', '.join(unknown)}")
    prepared = [prepare_model_detections(per_model.get(s.name, Detections.empty(s.name)), s, voting) for s in detectors]
    dets = [p[0] for p in prepared]
    used = [np.zeros(len(d), dtype=bool) for d in dets]
    ious = {(p, q): box_iou(dets[p].xyxy, dets[q].xyxy) for p in range(len(dets)) for q in range(p + 1, len(dets))}
    objects: list[VotedObject] = []
    floating: list[VotedObject] = []
    for p, det in enumerate(dets):
        for i in range(len(det)):
            if used[p][i]:
                continue
            used[p][i] = True
            members = [(p, i)]
            for q in range(p + 1, len(dets)):
                if len(dets[q]) == 0:
                    continue
                row = np.where(used[q], -1.0, ious[(p, q)][i])
                j = int(row.argmax())
                if row[j] >= voting.match_iou:
                    used[q][j] = True
                    members.append((q, j))
            obj = _group_to_object(members, dets, prepared, detectors)
            (objects if _is_object(obj, members, detectors, voting) else floating).append(obj)
    return VoteResult(objects=objects, floating_objects=floating)


def _group_to_object(members, dets, prepared, detectors) -> VotedObject:
    labels: list[str] = []
    attributes: list[str] = []
    for p, i in members:
        text = str(dets[p].labels[i])
        target = attributes if detectors[p].gives_attributes else labels
        if text and text not in target:
            target.append(text)
        if dets[p].attributes is not None:
            extra = " ".join(str(dets[p].attributes[i]).split())
            if extra and extra not in attributes:
                attributes.append(extra)
    p0, i0 = members[0]
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
