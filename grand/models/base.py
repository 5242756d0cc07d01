"""The small protocols every model adapter implements. Batch in, typed results out; no pipeline logic.

Images are PIL RGB images already EXIF-oriented (grand.io.images.decode_image gives them).
Every adapter is built from a `grand.config.ModelSpec` by `grand.models.registry.build_model`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


def gather_masks(chunks: list, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool numpy masks from the decoder's per-chunk (n, H, W) bool tensors (on any device),
    each copied once, straight into one host array: at SA-1B size (75 masks of 1500 x 2250, 250 MB)
    a concatenation's extra copy costs as much as encoding the RLEs (grand.core.rle.encode_masks)."""
    import torch

    out = np.empty((sum(int(c.shape[0]) for c in chunks), height, width), dtype=bool)
    start = 0
    for chunk in chunks:
        torch.from_numpy(out[start : start + chunk.shape[0]]).copy_(chunk.to(torch.bool))
        start += chunk.shape[0]
    return out


class PerImageBoxSegmenter(ABC):
    """Shared `segment()` of box-prompted segmenters that embed each image once: checks the inputs,
    answers images without boxes with no masks (no embedding computed), and hands each RGB image with
    its (N, 4) float32 boxes to `_segment_one`, which returns (N, H, W) bool masks."""

    def segment(self, images: list[Image.Image], boxes: list[np.ndarray]) -> list[np.ndarray]:
        if len(images) != len(boxes):
            raise ValueError(f"segment() got {len(images)} images but {len(boxes)} box arrays")
        out = []
        for image, b in zip(images, boxes):
            image, b = image.convert("RGB"), np.asarray(b, np.float32).reshape(-1, 4)
            out.append(np.zeros((0, image.height, image.width), dtype=bool) if len(b) == 0 else self._segment_one(image, b))
        return out

    @abstractmethod
    def _segment_one(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """(N, H, W) bool masks of one RGB image for its (N, 4) xyxy pixel boxes (N >= 1)."""


@runtime_checkable
class DepthEstimator(Protocol):
    """Relative inverse depth (larger = nearer, as MiDaS / Depth Anything), float32 (H, W) at image size."""

    def estimate(self, images: list[Image.Image]) -> list[np.ndarray]:
        ...


@runtime_checkable
class VisionLanguageModel(Protocol):
    """Answers one text prompt about one image (BLIP-2, LLaVA): short captions, landmark questions,
    region descriptions of object crops."""

    def generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        """prompts[i] is a plain instruction/question about images[i]; the adapter wraps it in the
        model's own prompt format (chat template, "Question: ... Answer:") and returns the answer
        text only, stripped, one per image."""
        ...


@runtime_checkable
class PhraseGrounder(Protocol):
    """Phrase grounding: boxes for each phrase, each phrase queried on its own."""

    def ground(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detections]]:
        """phrases[i] are image i's phrases; returns per image, per phrase, the Detections of that
        phrase alone (labels = the phrase), best score first. The adapter already applied the spec's
        score_threshold, class-agnostic NMS among the phrase's boxes and max_boxes_per_phrase."""
        ...


@runtime_checkable
class LabelScorer(Protocol):
    """Image-text similarity of a crop with each of its candidate labels (CLIP/SigLIP final label)."""

    def score_labels(self, images: list[Image.Image], candidates: list[list[str]]) -> list[list[float]]:
        """candidates[i] are labels for images[i]; returns one score per candidate (higher = better)."""
        ...


class LLMError(Exception):
    """One request that still failed after the backend's retries (timeout, HTTP 5xx, connection,
    empty/malformed reply). Returned, not raised, per request."""

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts  # requests sent for it (0: refused before sending, e.g. too long)

    def __reduce__(self):  # keep `attempts` across pickling (Ray moves results between processes)
        return (type(self), (str(self), self.attempts))


@runtime_checkable
class TextLLM(Protocol):
    """A text-only chat LLM (levels 3 and 4: dense captions, their verification, extra context)."""

    def chat(self, conversations: list[list[dict]], seeds: list[int] | None = None) -> list["str | LLMError"]:
        """conversations[i]: [{"role": "system"|"user"|"assistant", "content": str}, ...] ending with a
        user turn. Returns per conversation the assistant reply (stripped, non-empty) or an LLMError
        instance naming the cause and attempts. seeds[i] overrides generation.seed for request i
        (regeneration attempts use new seeds). Raises only when the whole backend is unusable."""
        ...
