"""A vectorised container for one image's boxes from one model (in the spirit of supervision's
`Detections`): filtering and NMS are methods over arrays instead of loops over dicts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Boxes of one model on one image.

    xyxy:   (N, 4) float32, absolute pixel coordinates [x1, y1, x2, y2] in the oriented image.
    scores: (N,) float32 in [0, 1].
    labels: (N,) object array of str (already lower-case, stripped).
    model:  the config name of the model that produced them (e.g. "grounding_dino").
    """

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    model: str = ""
    attributes: np.ndarray | None = field(default=None)  # optional (N,) str, e.g. GRiT descriptions
    # optional (N,) instance masks the detector predicted (COCO RLE dicts, grand.core.rle), e.g. a
    # detectron2 Mask R-CNN / EVA-02's: offered to the segmentation step before the segmenter runs
    masks: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(list(self.labels), dtype=object).reshape(-1)
        if self.attributes is not None:
            self.attributes = np.asarray(list(self.attributes), dtype=object).reshape(-1)
        if self.masks is not None:
            masks = np.empty(len(self.masks), dtype=object)
            masks[:] = list(self.masks)  # element-wise: dicts must not become a 2-D array
            self.masks = masks
        n = len(self.xyxy)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"Detections arrays disagree: {n} boxes, {len(self.scores)} scores, {len(self.labels)} labels"
            )
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"Detections arrays disagree: {n} boxes, {len(self.masks)} masks")

    @classmethod
    def empty(cls, model: str = "") -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, object), model)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> "Detections":
        """Select by boolean mask or integer index array; keeps the model name."""
        index = np.asarray(index)
        if index.dtype != bool:
            index = index.astype(np.int64).reshape(-1)
        attrs = None if self.attributes is None else self.attributes[index]
        masks = None if self.masks is None else self.masks[index]
        return Detections(self.xyxy[index], self.scores[index], self.labels[index], self.model, attrs, masks)

    # -- plain dicts (grand.runtime.columns stores them as the typed `det__<model>` column) -----
    def to_dict(self) -> dict:
        out = {
            "model": self.model,
            "xyxy": self.xyxy.round(2).tolist(),
            "scores": self.scores.round(5).tolist(),
            "labels": [str(x) for x in self.labels],
        }
        if self.attributes is not None:
            out["attributes"] = [str(x) for x in self.attributes]
        if self.masks is not None:
            out["masks"] = list(self.masks)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Detections":
        return cls(
            np.asarray(d["xyxy"], np.float32).reshape(-1, 4),
            d["scores"],
            d["labels"],
            d.get("model", ""),
            d.get("attributes"),
            d.get("masks"),
        )


def assign_detector_masks(objects: list, per_model: dict[str, Detections], min_iou: float) -> int:
    """Give objects without a mask the mask a detector of their group predicted (the reference took
    EVA-02's mask before prompting HQ-SAM). `objects` are the vote's grand.schema.ObjectRecords (bbox,
    models in priority order); `per_model` maps a model name to its Detections, of which only those
    with `masks` count.
    An object takes, from the first of its models that has masks, the mask of that model's box that
    overlaps the object's box best (IoU >= min_iou: the box that voted for the group). Sets
    `segmentation` and `segmentation_source` (the model's name) in place; returns how many got one."""
    from grand.core.geometry import box_iou
    from grand.schema import RLE

    with_masks = {name: d for name, d in per_model.items() if d.masks is not None and len(d)}
    assigned = 0
    for obj in objects:
        if obj.segmentation:
            continue
        for name in obj.models:
            dets = with_masks.get(name)
            if dets is None:
                continue
            iou = box_iou(np.asarray([obj.bbox], np.float32), dets.xyxy)[0]
            best = int(iou.argmax())
            if iou[best] >= min_iou:
                mask = dets.masks[best]
                obj.segmentation, obj.segmentation_source = RLE(list(mask["size"]), mask["counts"]), name
                assigned += 1
                break
    return assigned
