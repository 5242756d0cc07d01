"""Open-vocabulary detectors from Hugging Face transformers: GroundingDINO, OWLv2 and OWL-ViT.

Each image is queried with its own list of texts (the union of the taggers' tags); boxes come back
in the original image's pixels, labelled with the query they matched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DetectorSpec
from grand.core.detections import Detections
from grand.models.preprocess import pad_to_aspect
from grand.models.loading import adapter_options, load_pretrained

_GROUNDING_DINO_TYPES = {"grounding-dino", "mm-grounding-dino"}


class HFZeroShotDetector:
    """Zero-shot detection with `AutoModelForZeroShotObjectDetection` + `AutoProcessor`.

    GroundingDINO runs as the authors' code does (`as_the_authors`: pre-processing, text position ids;
    checked against the groundingdino package in tests/test_models_original.py).
    GroundingDINO reads all queries of an image as one prompt "a. b. c."; the text encoder takes at
    most `config.max_text_len` (256) tokens, so long query lists are split into chunks that each run
    as a separate prompt, and their boxes are merged. OWLv2 / OWL-ViT score every box against each
    query separately (no length limit beyond 16 tokens per query).

    Options (`spec.options`):
      box_threshold (float, 0.1): keep boxes scoring above this (the voting step drops < 0.1 anyway).
      text_threshold (float, 0.25): GroundingDINO only. A box is labelled with the query whose tokens
          score highest; when even that score is not above text_threshold the box has no label and
          is dropped (the original predict() would give it an empty phrase).
      max_detections (int, 100): per image, best scores first, after merging chunks.
    """

    open_vocabulary = True

    def __init__(self, spec: DetectorSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        opts = adapter_options(spec, {"box_threshold": 0.1, "text_threshold": 0.25, "max_detections": 100})
        self.box_threshold = float(opts["box_threshold"])
        self.text_threshold = float(opts["text_threshold"])
        self.max_detections = int(opts["max_detections"])
        self.spec = spec
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModelForZeroShotObjectDetection, AutoProcessor
        )
        self.is_grounding_dino = self.model.config.model_type in _GROUNDING_DINO_TYPES
        if self.is_grounding_dino:
            as_the_authors(self.processor)
        self._torch = torch

    # -- public ---------------------------------------------------------------------------------
    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        """One `Detections` per image. Images without queries get empty results (the model is not run)."""
        queries = queries if queries is not None else [[] for _ in images]
        if len(queries) != len(images):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(queries)} query lists")
        originals = images
        if self.is_grounding_dino:  # a 256x4 strip gives fewer feature tokens than the model has queries
            images = [pad_to_aspect(im) for im in images]
        # (image index, chunk of queries): GroundingDINO may need several prompts for one image
        jobs = [(i, chunk) for i, q in enumerate(queries) for chunk in self._chunks(_clean_queries(q))]
        parts: list[list[Detections]] = [[] for _ in images]
        run = self._run_grounding_dino if self.is_grounding_dino else self._run_owl
        # GroundingDINO pads the images of a batch to the largest one, and padding changes what the
        # model sees: batch only images of one size so an image's boxes never depend on its batch
        # mates (a resumed run must give what an uninterrupted run gives). OWL pads each image alone.
        groups: dict[tuple[int, int], list] = {}
        for job in jobs:
            groups.setdefault(images[job[0]].size if self.is_grounding_dino else (0, 0), []).append(job)
        size = self.spec.batch_size
        with self._torch.inference_mode():
            for group in groups.values():
                for start in range(0, len(group), size):
                    batch = group[start : start + size]
                    found = run([images[i] for i, _ in batch], [chunk for _, chunk in batch])
                    for (i, _), dets in zip(batch, found):
                        parts[i].append(dets)
        return [self._clip(self._merge(p), im) for p, im in zip(parts, originals)]

    # -- GroundingDINO --------------------------------------------------------------------------
    def _chunks(self, queries: list[str]) -> list[list[str]]:
        """Split queries into prompts that fit the text encoder ([CLS] q1 . q2 . ... [SEP])."""
        if not queries:
            return []
        if not self.is_grounding_dino:
            return [queries]
        limit = self.model.config.max_text_len
        token_ids = self.processor.tokenizer([_dino_text(q) for q in queries], add_special_tokens=False)["input_ids"]
        chunks: list[list[str]] = []
        used = limit  # forces a new chunk for the first query
        for query, n in zip(queries, map(len, token_ids)):
            if n == 0 or n + 3 > limit:  # nothing to match, or too long even alone (it would be truncated)
                continue
            if used + n + 1 > limit:
                chunks.append([])
                used = 2  # [CLS] and [SEP]
            chunks[-1].append(query)
            used += n + 1  # the query and its '.'
        return chunks

    def _run_grounding_dino(self, images: list[Image.Image], chunks: list[list[str]]) -> list[Detections]:
        """Boxes scored per query span.

        The processor's post_process_grounded_object_detection decodes the above-threshold tokens back
        into text, which can join tokens of two queries or give word pieces; we keep its scoring rule
        (sigmoid, best token per box) and box conversion but score each query's token span, so a label
        is always one of the queries."""
        from transformers.image_transforms import center_to_corners_format

        torch = self._torch
        inputs = self.processor(
            images=images, text=[". ".join(_dino_text(q) for q in c) + "." for c in chunks],
            padding="longest", return_tensors="pt", **authors_size(self.processor, images[0]),
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        probs = outputs.logits.float().sigmoid()  # (B, boxes, max_text_len); -inf (-> 0) past the text
        boxes = center_to_corners_format(outputs.pred_boxes.float())  # relative to the unpadded image
        results = []
        for b, (image, chunk) in enumerate(zip(images, chunks)):
            spans = self._query_spans(inputs["input_ids"][b], inputs["attention_mask"][b], len(chunk))
            span_scores = torch.stack([probs[b][:, s].max(dim=-1).values for s in spans], dim=-1)
            score, best = span_scores.max(dim=-1)
            keep = (score > self.box_threshold) & (score > self.text_threshold)
            scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
            labels = [chunk[j] for j in best[keep].tolist()]
            results.append(self._detections(boxes[b][keep].cpu() * scale, score[keep], labels, image))
        return results

    def _query_spans(self, input_ids, attention_mask, n_queries: int) -> list:
        """Token positions of each query: queries are separated by '.', framed by [CLS] ... [SEP]."""
        tok = self.processor.tokenizer
        ids = input_ids[: self.model.config.max_text_len]
        dot = tok.convert_tokens_to_ids(".")
        is_dot = ids == dot
        query_index = is_dot.cumsum(0)  # number of '.' before a token = its query
        content = attention_mask[: len(ids)].bool() & ~is_dot & (ids != tok.cls_token_id) & (ids != tok.sep_token_id)
        spans = [(content & (query_index == j)).nonzero().flatten() for j in range(n_queries)]
        if any(len(s) == 0 for s in spans):
            raise RuntimeError(f"model '{self.spec.name}': a query has no tokens in {tok.decode(ids)!r}")
        return spans

    # -- OWLv2 / OWL-ViT ------------------------------------------------------------------------
    def _run_owl(self, images: list[Image.Image], chunks: list[list[str]]) -> list[Detections]:
        inputs = self.processor(images=images, text=chunks, truncation=True, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        # The processor pads every image's list to the longest with " " queries, and the model only
        # masks queries whose first token id is 0, which " " is not: mask the padding ourselves.
        logits = outputs.logits.float()
        for b, chunk in enumerate(chunks):
            logits[b, :, len(chunk) :] = float("-inf")
        outputs.logits = logits
        # OWLv2 boxes are relative to the image padded to a square; its post-processing scales by
        # max(h, w) for that reason, so target sizes are the original (h, w).
        sizes = [(im.height, im.width) for im in images]
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.box_threshold, target_sizes=sizes, text_labels=chunks
        )
        return [
            self._detections(r["boxes"], r["scores"], r["text_labels"], image) for r, image in zip(found, images)
        ]

    # -- shared ---------------------------------------------------------------------------------
    def _detections(self, boxes, scores, labels: list[str], image: Image.Image) -> Detections:
        """Absolute xyxy pixels, clipped to the image; boxes that vanish when clipped are dropped
        (OWLv2 can place them in the square padding)."""
        xyxy = boxes.float().cpu().numpy().reshape(-1, 4)
        xyxy = np.clip(xyxy, 0, [image.width, image.height, image.width, image.height]).astype(np.float32)
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        scores_np = scores.float().cpu().numpy().reshape(-1)
        return Detections(xyxy[ok], scores_np[ok], np.asarray(labels, dtype=object)[ok], self.spec.name)

    def _clip(self, dets: Detections, image: Image.Image) -> Detections:
        """Boxes found on a padded copy, clipped back to the image (those only in the padding dropped)."""
        xyxy = np.clip(dets.xyxy, 0, [image.width, image.height, image.width, image.height]).astype(np.float32)
        dets.xyxy = xyxy
        return dets[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]

    def _merge(self, parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty(self.spec.name)
        dets = Detections(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            self.spec.name,
        )
        order = np.argsort(-dets.scores, kind="stable")[: self.max_detections]
        return dets[order]


def as_the_authors(processor) -> None:
    """Make a transformers GroundingDINO run as the authors' code does (checked by the parity test
    against the groundingdino package, tests/test_models_original.py):
    - the image processor's PIL backend: the authors resize PIL images (torchvision's `Resize` on a
      PIL image is PIL's bilinear resize), and so does `GroundingDinoImageProcessorPil`, pixel for
      pixel; transformers 5 loads the torch-tensor backend by default, whose resize rounds
      differently (pixel values up to 1 grey level apart); the output size: `authors_size`;
    - grand.compat.transformers_grounding_dino: the text position ids and embeddings of
      transformers 5.19, which differ from the authors'."""
    import transformers

    from grand.compat.transformers_grounding_dino import patch

    patch()
    image_processor = processor.image_processor
    name = type(image_processor).__name__
    pil = getattr(transformers, name + "Pil", None) if not name.endswith("Pil") else None
    if pil is not None:
        processor.image_processor = pil.from_dict(image_processor.to_dict())


def authors_size(processor, image: Image.Image) -> dict:
    """`size=` for the processor call on images of `image`'s size (a batch holds one size): the
    authors' resize rule (`groundingdino.datasets.transforms.resize`, from DETR). transformers rounds
    the side the longest edge caps differently: a 352x230 photo at 224 / 320 becomes 320 px wide
    there and 319 px in the original. {} when the processor's size is not shortest / longest edge."""
    size = processor.image_processor.size
    shortest, longest = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
    if not shortest:
        return {}
    w, h = image.size
    if longest and max(w, h) / min(w, h) * shortest > longest:
        shortest = int(round(longest * min(w, h) / max(w, h)))
    if min(w, h) == shortest:
        return {"size": {"height": h, "width": w}}
    if w < h:
        return {"size": {"height": int(shortest * h / w), "width": shortest}}
    return {"size": {"height": shortest, "width": int(shortest * w / h)}}


def _clean_queries(queries: list[str]) -> list[str]:
    """Lower-case, single-spaced, distinct, non-empty: these strings are also the output labels."""
    cleaned = (" ".join(str(q).lower().split()) for q in queries)
    return list(dict.fromkeys(q for q in cleaned if q))


def _dino_text(query: str) -> str:
    """GroundingDINO separates phrases with '.' (and '?'), so they cannot occur inside one."""
    return " ".join(query.replace(".", " ").replace("?", " ").split())
