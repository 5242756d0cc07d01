"""Zero-shot image tagging with CLIP or SigLIP over a fixed concept vocabulary."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from grand.config import TaggerSpec
from grand.models.loading import adapter_options, load_pretrained

_SIGMOID_TYPES = {"siglip", "siglip2"}  # trained with a per-pair sigmoid loss, not a softmax over texts


class HFZeroShotTagger:
    """Tags = the vocabulary concepts whose prompt embeddings best match the image embedding.

    The vocabulary file (`spec.vocabulary`, relative to the config's folder) has one concept per
    line; blank lines and lines starting with '#' are skipped. Prompt embeddings are computed once
    at load time. Scores: softmax over the whole vocabulary for CLIP (so they sum to 1 and shrink as
    the vocabulary grows: set `min_score` with that in mind), independent sigmoids for SigLIP.
    Returns at most `top_k` tags with score >= `min_score`, best first.

    Options (`spec.options`):
      prompt_template (str, "a photo of a {concept}."): text encoded for each concept.
      text_batch_size (int, 256): prompts per forward pass when embedding the vocabulary.
    """

    def __init__(self, spec: TaggerSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoProcessor

        opts = adapter_options(spec, {"prompt_template": "a photo of a {concept}.", "text_batch_size": 256})
        if "{concept}" not in opts["prompt_template"]:
            raise ValueError(f"model '{spec.name}': options.prompt_template must contain '{{concept}}'")
        self.spec = spec
        self.concepts = read_vocabulary(spec, base_dir)
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModel, AutoProcessor
        )
        self.sigmoid = self.model.config.model_type in _SIGMOID_TYPES
        self._torch = torch
        prompts = [opts["prompt_template"].format(concept=c) for c in self.concepts]
        with torch.inference_mode():
            self.text_embeds = torch.cat(
                [self._embed_texts(prompts[i : i + int(opts["text_batch_size"])])
                 for i in range(0, len(prompts), int(opts["text_batch_size"]))]
            )  # (V, D), unit norm

    def tag(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        torch = self._torch
        out: list[list[tuple[str, float]]] = []
        k = min(self.spec.top_k, len(self.concepts))
        with torch.inference_mode():
            for start in range(0, len(images), self.spec.batch_size):
                batch = images[start : start + self.spec.batch_size]
                inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                image_embeds = _unit(_pooled(self.model.get_image_features(**inputs)))
                # the model's own learned temperature (and SigLIP's bias) turn cosines into logits
                logits = image_embeds @ self.text_embeds.T * self.model.logit_scale.exp().float()
                if self.sigmoid:
                    scores = (logits + self.model.logit_bias.float()).sigmoid()
                else:
                    scores = logits.softmax(dim=-1)
                top = scores.topk(k, dim=-1)
                for values, indices in zip(top.values.tolist(), top.indices.tolist()):
                    out.append(
                        [(self.concepts[i], v) for v, i in zip(values, indices) if v >= self.spec.min_score]
                    )
        return out

    def _embed_texts(self, prompts: list[str]):
        # SigLIP was trained on texts padded to max_length (64); other padding shifts its embeddings
        padding = "max_length" if self.sigmoid else True
        inputs = self.processor(text=prompts, padding=padding, truncation=True, return_tensors="pt").to(self.device)
        return _unit(_pooled(self.model.get_text_features(**inputs)))


def read_vocabulary(spec: TaggerSpec, base_dir: Path | None = None) -> list[str]:
    """Concepts of `spec.vocabulary` (relative paths resolve against base_dir), lower-case, distinct."""
    path = Path(spec.vocabulary).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"model '{spec.name}': vocabulary file not found: {path} "
            f"(config key `vocabulary` = {spec.vocabulary!r}, resolved against {base_dir or Path.cwd()})"
        )
    lines = (" ".join(line.lower().split()) for line in path.read_text(encoding="utf-8").splitlines())
    concepts = list(dict.fromkeys(x for x in lines if x and not x.startswith("#")))
    if not concepts:
        raise ValueError(f"model '{spec.name}': vocabulary file {path} has no concepts (config key `vocabulary`)")
    return concepts


def _pooled(features):
    """transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor."""
    return getattr(features, "pooler_output", features).float()


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)
