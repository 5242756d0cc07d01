"""Final object label among several candidates: CLIP / SigLIP similarity of the object's crop with
each candidate (the reference rule "crop the box, pick the label with the best CLIP similarity")."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from grand.config import LabelChoiceSpec
from grand.models.hf_tagger import _SIGMOID_TYPES, _pooled, _unit
from grand.models.loading import adapter_options, load_pretrained
from grand.models.preprocess import pad_to_aspect

_TEXT_CACHE_SIZE = 50_000  # prompt embeddings kept between calls (labels repeat across crops)


class HFLabelScorer:
    """Scores each candidate label of a crop with `AutoModel` image and text embeddings.

    The text is `spec.prompt_template.format(label=candidate)`. Scores: for CLIP, a softmax over the
    crop's own candidates (they sum to 1); for SigLIP, independent sigmoids with the model's bias.
    Either way a candidate's score does not depend on the order of the candidates, and for SigLIP
    not on the other candidates at all. Crops are batched `spec.batch_size` at a time; their prompts
    are embedded once per distinct text and cached.

    Options (`spec.options`):
      text_batch_size (int, 256): prompts per forward pass of the text encoder.
    """

    def __init__(self, spec: LabelChoiceSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoProcessor

        opts = adapter_options(spec, {"text_batch_size": 256})
        self.text_batch_size = int(opts["text_batch_size"])
        self.spec = spec
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModel, AutoProcessor
        )
        self.sigmoid = self.model.config.model_type in _SIGMOID_TYPES
        self._torch = torch
        self._text_embeds: dict[str, object] = {}  # prompt -> (D,) unit-norm tensor

    def score_labels(self, images: list[Image.Image], candidates: list[list[str]]) -> list[list[float]]:
        """One score per candidate, in the candidates' order; an image without candidates gets []
        (and is not run)."""
        if len(candidates) != len(images):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(candidates)} candidate lists")
        torch = self._torch
        out: list[list[float]] = [[] for _ in images]
        todo = [i for i, c in enumerate(candidates) if c]
        with torch.inference_mode():
            for start in range(0, len(todo), self.spec.batch_size):
                batch = todo[start : start + self.spec.batch_size]
                # crops of thin objects can be 1000:1; CLIP's shortest-edge resize would blow them up
                # to a huge image of which the centre crop keeps almost nothing
                crops = [pad_to_aspect(images[i]) for i in batch]
                inputs = self.processor(images=crops, return_tensors="pt").to(self.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                image_embeds = _unit(_pooled(self.model.get_image_features(**inputs)))
                prompts = [self.spec.prompt_template.format(label=c) for i in batch for c in candidates[i]]
                text_embeds = self._embed(prompts)  # every prompt of the batch in shared text passes
                # the model's own learned temperature (and SigLIP's bias) turn cosines into logits
                logits_all = text_embeds * self.model.logit_scale.exp().float()
                offset = 0
                for row, i in enumerate(batch):
                    n = len(candidates[i])
                    logits = logits_all[offset : offset + n] @ image_embeds[row]
                    offset += n
                    if self.sigmoid:
                        scores = (logits + self.model.logit_bias.float()).sigmoid()
                    else:
                        scores = logits.softmax(dim=-1)
                    out[i] = scores.tolist()
        return out

    def _embed(self, prompts: list[str]):
        """(len(prompts), D) unit-norm text embeddings, computing only prompts not seen before."""
        torch = self._torch
        if len(self._text_embeds) + len(prompts) > _TEXT_CACHE_SIZE:
            self._text_embeds.clear()  # bounded memory; a full cache is rare, recomputing is cheap
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_embeds))
        for start in range(0, len(missing), self.text_batch_size):
            chunk = missing[start : start + self.text_batch_size]
            # SigLIP was trained on texts padded to max_length (64); other padding shifts its embeddings
            padding = "max_length" if self.sigmoid else True
            inputs = self.processor(text=chunk, padding=padding, truncation=True, return_tensors="pt").to(self.device)
            self._text_embeds.update(zip(chunk, _unit(_pooled(self.model.get_text_features(**inputs)))))
        return torch.stack([self._text_embeds[p] for p in prompts])
