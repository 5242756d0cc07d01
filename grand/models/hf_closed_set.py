"""Closed-set detectors from Hugging Face transformers: RT-DETR (the default,
`PekingU/rtdetr_r50vd_coco_o365`), DETR, Deformable DETR, Conditional DETR — anything that loads with
`AutoModelForObjectDetection` and whose image processor has `post_process_object_detection`.

Options (`spec.options`):
    box_threshold            keep boxes scoring at least this (default 0.1)
    max_detections           boxes kept per image, best first (default 100)
    image_processor_backend  "pil" | "torchvision" | None (transformers picks: torchvision when installed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DetectorSpec
from grand.core.detections import Detections
from grand.models.loading import adapter_options, load_pretrained

# DETR's 91-slot COCO label map keeps "N/A" for the ids COCO never used; a box with such a label
# carries no class and must not reach the vote.
_PLACEHOLDER_LABELS = {"n/a", ""}


class HFClosedSetDetector:
    """Closed-set detector: ignores queries; labels come from the checkpoint's `config.id2label`."""

    open_vocabulary = False

    def __init__(self, spec: DetectorSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.spec = spec
        opts = adapter_options(
            spec, {"box_threshold": 0.1, "max_detections": 100, "image_processor_backend": None}
        )
        self.box_threshold = float(opts["box_threshold"])
        self.max_detections = int(opts["max_detections"])
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModelForObjectDetection, AutoImageProcessor,
            backend=opts["image_processor_backend"],
        )
        self.labels = {int(k): str(v).strip().lower() for k, v in self.model.config.id2label.items()}
        self._torch = torch

    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        out: list[Detections] = []
        for start in range(0, len(images), self.spec.batch_size):
            out += self._detect_batch([im.convert("RGB") for im in images[start : start + self.spec.batch_size]])
        return out

    def _detect_batch(self, images: list[Image.Image]) -> list[Detections]:
        torch = self._torch
        inputs = self.processor(images=images, return_tensors="pt")
        # DETR-style processors pad to a common size and return pixel_mask; RT-DETR resizes to a fixed square
        model_inputs = {"pixel_values": inputs["pixel_values"].to(self.device, self.dtype)}
        if "pixel_mask" in inputs:
            model_inputs["pixel_mask"] = inputs["pixel_mask"].to(self.device)
        with torch.inference_mode():
            outputs = self.model(**model_inputs)
        # post-processing in float32: half-precision sigmoid/scale can round boxes past the image edge
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.box_threshold, target_sizes=[(im.height, im.width) for im in images]
        )
        return [self._to_detections(res, im) for res, im in zip(results, images)]

    def _to_detections(self, result: dict, image: Image.Image) -> Detections:
        scores = result["scores"].cpu().numpy().astype(np.float32)
        xyxy = result["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4)
        labels = np.array([self.labels.get(int(i), str(int(i))) for i in result["labels"].cpu()], dtype=object)
        keep = np.array([lab not in _PLACEHOLDER_LABELS for lab in labels], dtype=bool)
        scores, xyxy, labels = scores[keep], xyxy[keep], labels[keep]
        # predicted boxes may reach past the border (their centre and size are unconstrained)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, image.width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, image.height)
        order = np.argsort(-scores, kind="stable")[: self.max_detections]
        return Detections(xyxy[order], scores[order], labels[order], self.spec.name)
