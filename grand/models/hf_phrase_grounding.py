"""Phrase grounding with Hugging Face zero-shot detectors: GroundingDINO (the reference role) and
OWLv2 / OWL-ViT.

Every phrase of an image is queried on its own, as MDETR phrase grounding does in the GranD
reference pipeline: a phrase's boxes never depend on the other phrases of the caption.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import PhraseGroundingSpec
from grand.core.detections import Detections
from grand.core.geometry import clip_boxes, nms
from grand.models.hf_open_vocab import _GROUNDING_DINO_TYPES, _dino_text, as_the_authors, authors_size
from grand.models.loading import adapter_options, load_pretrained
from grand.models.preprocess import pad_to_aspect

# A grounding result before clipping / NMS: (N, 4) xyxy pixels of the model's input image, (N,) scores.
_Raw = tuple[np.ndarray, np.ndarray]


class HFPhraseGrounder:
    """Boxes of each phrase, each phrase queried alone, with `AutoModelForZeroShotObjectDetection`.

    GroundingDINO runs one prompt "<phrase>." per (image, phrase) pair, so pairs are the batch unit
    (up to `spec.batch_size` per forward pass). A box's phrase score is the best sigmoid logit over
    the phrase's own tokens ([CLS], '.' and [SEP] do not count). Prompts longer than the text
    encoder's `max_text_len` are truncated. OWLv2 / OWL-ViT embed every query on its own and score
    each box against each query separately, so an image runs once with all its phrases as queries
    (up to `spec.batch_size` images per pass); queries are truncated to the tokenizer's 16 tokens.

    Per phrase: keep boxes scoring above `spec.score_threshold`, clip them to the image, class-agnostic
    NMS, then the best `spec.max_boxes_per_phrase`. Identical phrases of one image run once.

    Options (`spec.options`):
      nms_iou (float, 0.5): a phrase's box is suppressed by a better box of that phrase above this IoU.
    """

    def __init__(self, spec: PhraseGroundingSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        opts = adapter_options(spec, {"nms_iou": 0.5})
        self.nms_iou = float(opts["nms_iou"])
        self.spec = spec
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModelForZeroShotObjectDetection, AutoProcessor
        )
        self.is_grounding_dino = self.model.config.model_type in _GROUNDING_DINO_TYPES
        if self.is_grounding_dino:
            as_the_authors(self.processor)
        self._torch = torch

    # -- public ---------------------------------------------------------------------------------
    def ground(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detections]]:
        """Per image, per phrase: that phrase's Detections (labels = the phrase as given), best first.
        A phrase with nothing to query (blank; for GroundingDINO also only '.' / '?') gets no boxes
        and runs no model."""
        if len(phrases) != len(images):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(phrases)} phrase lists")
        # a 256x4 strip gives GroundingDINO fewer feature tokens than it has queries (see pad_to_aspect)
        inputs = [pad_to_aspect(im) for im in images] if self.is_grounding_dino else list(images)
        texts = [list(dict.fromkeys(t for t in map(self._query_text, p) if t)) for p in phrases]
        if self.is_grounding_dino:
            jobs = [(i, [t]) for i, ts in enumerate(texts) for t in ts]
        else:
            jobs = [(i, ts) for i, ts in enumerate(texts) if ts]
        # GroundingDINO pads the images of a batch to the largest one, and padding changes what the
        # model sees: batch only images of one size so that results never depend on batch mates
        # (a resumed run must give what an uninterrupted run gives). OWL resizes each image alone.
        groups: dict[tuple[int, int], list[tuple[int, list[str]]]] = {}
        for job in jobs:
            groups.setdefault(inputs[job[0]].size if self.is_grounding_dino else (0, 0), []).append(job)
        run = self._run_grounding_dino if self.is_grounding_dino else self._run_owl
        found: dict[tuple[int, str], _Raw] = {}
        size = self.spec.batch_size
        with self._torch.inference_mode():
            for group in groups.values():
                for start in range(0, len(group), size):
                    batch = group[start : start + size]
                    results = run([inputs[i] for i, _ in batch], [ts for _, ts in batch])
                    for (i, ts), per_text in zip(batch, results):
                        found.update(((i, t), raw) for t, raw in zip(ts, per_text))
        return [
            [self._finish(found.get((i, self._query_text(p))), p, image) for p in image_phrases]
            for i, (image, image_phrases) in enumerate(zip(images, phrases))
        ]

    # -- models ---------------------------------------------------------------------------------
    def _query_text(self, phrase: str) -> str:
        """The text the model reads for a phrase ('' = nothing to query): lower-case as both models'
        tokenizers (and GroundingDINO's own caption preprocessing) read it. GroundingDINO ends
        phrases at '.' and '?', so they cannot occur inside one."""
        text = _dino_text(str(phrase)) if self.is_grounding_dino else " ".join(str(phrase).split())
        return text.lower()

    def _run_grounding_dino(self, images: list[Image.Image], texts: list[list[str]]) -> list[list[_Raw]]:
        """One prompt per (image, phrase); scores and boxes from the processor's post-processing with
        every logit outside the phrase's own tokens masked out."""
        torch = self._torch
        tok = self.processor.tokenizer
        limit = self.model.config.max_text_len  # tokens beyond it are cut by the model anyway
        inputs = self.processor(
            images=images, text=[t + "." for (t,) in texts], padding="longest", truncation=True,
            max_length=limit, return_tensors="pt", **authors_size(self.processor, images[0]),
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        ids = inputs["input_ids"]
        not_phrase = torch.tensor(
            [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, *tok.convert_tokens_to_ids([".", "?"])],
            device=ids.device,
        )
        # transformers' post-processing takes the best token over the whole prompt, delimiters included
        own = inputs["attention_mask"].bool() & ~torch.isin(ids, not_phrase)
        own = torch.nn.functional.pad(own, (0, outputs.logits.shape[-1] - own.shape[-1]))
        outputs.logits = outputs.logits.float().masked_fill(~own[:, None, :], float("-inf"))
        outputs.pred_boxes = outputs.pred_boxes.float()
        threshold = self.spec.score_threshold
        results = self.processor.post_process_grounded_object_detection(
            outputs, ids, threshold=threshold, text_threshold=threshold,
            target_sizes=[(im.height, im.width) for im in images],
        )
        return [[_raw(r["boxes"], r["scores"])] for r in results]

    def _run_owl(self, images: list[Image.Image], texts: list[list[str]]) -> list[list[_Raw]]:
        """One pass per image with all its phrases as queries (OWL encodes each query alone)."""
        inputs = self.processor(images=images, text=texts, truncation=True, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        # Post-processing labels each box with its best query only; a phrase must keep every box it
        # scores above the threshold, so each (image, query) becomes its own one-query "image".
        b, n, q = outputs.logits.shape
        per_query = type(outputs)(
            logits=outputs.logits.float().permute(0, 2, 1).reshape(b * q, n, 1),
            pred_boxes=outputs.pred_boxes.float().repeat_interleave(q, dim=0),
        )
        # OWLv2 boxes are relative to the image padded to a square; its post-processing handles that
        # given the original (h, w). Padding queries (" ") the processor adds are never read.
        results = self.processor.post_process_grounded_object_detection(
            per_query, threshold=self.spec.score_threshold,
            target_sizes=[(im.height, im.width) for im in images for _ in range(q)],
        )
        return [[_raw(r["boxes"], r["scores"]) for r in results[k * q : k * q + len(ts)]] for k, ts in enumerate(texts)]

    # -- shared ---------------------------------------------------------------------------------
    def _finish(self, raw: _Raw | None, phrase: str, image: Image.Image) -> Detections:
        """Clip to the image (GroundingDINO ran on a padded copy; boxes only in the padding go), NMS,
        best `max_boxes_per_phrase` first."""
        if raw is None:
            return Detections.empty(self.spec.name)
        xyxy = clip_boxes(raw[0], image.width, image.height)
        scores = raw[1]
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        dets = Detections(xyxy[ok], scores[ok], [phrase] * int(ok.sum()), self.spec.name)
        return dets[nms(dets.xyxy, dets.scores, self.nms_iou)[: self.spec.max_boxes_per_phrase]]


def _raw(boxes, scores) -> _Raw:
    return boxes.float().cpu().numpy().reshape(-1, 4), scores.float().cpu().numpy().reshape(-1)
