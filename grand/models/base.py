"""The small protocols every model adapter implements. Batch in, typed results out; no pipeline logic.

Images are PIL RGB images already EXIF-oriented (grand.io.images.decode_image gives them).
Every adapter is built from a `grand.config.ModelSpec` by `grand.models.registry.build_model`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from grand.core.detections import Detections


@runtime_checkable
class Tagger(Protocol):
    """Image-level tags (the union of taggers feeds the open-vocabulary detectors as queries)."""

    def tag(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        """Per image: (tag, score) pairs, best first, already thresholded / top-k'd."""
        ...


@runtime_checkable
class Detector(Protocol):
    """Boxes with labels. Open-vocabulary detectors take per-image text queries; closed-set ones ignore them."""

    open_vocabulary: bool

    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Box-prompted masks: one boolean (H, W) mask per box, at the image's own resolution."""

    def segment(self, images: list[Image.Image], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """boxes[i] is (N_i, 4) float xyxy pixels; returns (N_i, H_i, W_i) bool arrays."""
        ...


@runtime_checkable
class DepthEstimator(Protocol):
    """Relative inverse depth (larger = nearer, as MiDaS / Depth Anything), float32 (H, W) at image size."""

    def estimate(self, images: list[Image.Image]) -> list[np.ndarray]:
        ...
