"""GroundingDINO from the authors' package (`groundingdino-py`), backend `groundingdino`: the
open-vocabulary detector (`queries: tags`) and the level-2 phrase grounder.

What the package's own `groundingdino.util.inference` does (that module imports `supervision` and
OpenCV for its drawing helpers, so grand repeats its few lines instead of importing it):
- image: `RandomResize([800], max_size=1333)` (one size: deterministic), `ToTensor`, ImageNet
  `Normalize`, from `groundingdino.datasets.transforms`; one image per forward pass, as `predict`;
- caption: the official format "cat . dog . person ." lower-cased (`preprocess_caption`);
- post-processing: sigmoid of the box-token logits, a box is kept when its best token scores above
  `box_threshold`, its score is that best token score, its phrase is
  `get_phrases_from_posmap(logits > text_threshold)` with '.' removed.
grand needs each label to be one of the queries (they feed the cross-model vote): a box whose official
phrase is exactly one query gets that label (`Model.phrases2classes`' rule); otherwise (the phrase
spans several queries or part of one) it gets the query whose own tokens score best, when that score is
above `text_threshold`, and is dropped when no query's tokens reach it (the official phrase is empty).

Checkpoints (`checkpoint:`): the official `.pth` (`groundingdino_swint_ogc.pth`,
`groundingdino_swinb_cogcoor.pth`) with option `config` naming its config `.py` (a path, or the name of
one shipped in the package: `GroundingDINO_SwinT_OGC.py`, `GroundingDINO_SwinB_cfg.py`; default: chosen
from the weights' file name), or a directory with one `.pth` and one config `.py` (`tiny:sa-groundingdino`).
The config's `text_encoder_type` (`bert-base-uncased`) is loaded by transformers: from the HF cache
or a local directory (option `text_encoder`, or a path relative to the config's folder).
Weights load with `torch.load(weights_only=True)`.

Options (`spec.options`):
    config            the model config .py (see above)
    text_encoder      local directory (or hub id) of the BERT text encoder, overriding the config's
    image_size        shorter side the image is resized to (default 800, the official)
    max_size          longer side at most (default 1333, the official)
    trust_checkpoint  allow a checkpoint that needs full unpickling (default False)
  detector only:
    box_threshold     keep boxes whose best token scores above this (default 0.1; voting keeps >= score_threshold)
    text_threshold    tokens above this make the phrase (default 0.25, the official)
    max_detections    per image, best first, after merging prompt chunks (default 100)
  phrase grounder only:
    nms_iou           a phrase's box is suppressed by a better box of that phrase above this IoU (default 0.5)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DetectorSpec, ModelSpec, PhraseGroundingSpec
from grand.core.detections import Detections
from grand.core.geometry import clip_boxes, nms
from grand.models.loading import adapter_options, resolve_checkpoint, set_threads, torch_device, unavailable
from grand.models.original_packages import find_file, load_weights, require
from grand.models.preprocess import pad_to_aspect

_BUNDLED = {"swint_ogc": "GroundingDINO_SwinT_OGC.py", "swinb": "GroundingDINO_SwinB_cfg.py"}
_COMMON = {"config": None, "text_encoder": None, "image_size": 800, "max_size": 1333, "trust_checkpoint": False}


def official_config_path(name: str) -> Path:
    """A config .py shipped inside the groundingdino package."""
    import groundingdino

    return Path(groundingdino.__file__).resolve().parent / "config" / name


def build_gdino_model(config_path: Path, text_encoder: str | None, device: str):
    """`groundingdino.models.build_model` on an official-format config .py (random weights)."""
    from grand.compat.groundingdino_bert import patch

    patch()
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config_path))
    encoder = text_encoder or args.text_encoder_type
    beside = Path(config_path).parent / str(encoder)
    args.text_encoder_type = str(beside) if beside.is_dir() else encoder
    args.device = device
    return build_model(args)


def _caption(queries: list[str]) -> str:
    """The official caption format, "cat . dog ." (preprocess_caption: lower-case, ends with '.')."""
    return " . ".join(queries).lower().strip() + " ."


def _query_text(text: str) -> str:
    """GroundingDINO ends phrases at '.' and '?', so they cannot occur inside a query."""
    return " ".join(str(text).replace(".", " ").replace("?", " ").lower().split())


class _OriginalGroundingDino:
    """Loading, pre-processing and the forward pass shared by the detector and the phrase grounder."""

    def __init__(self, spec: ModelSpec, base_dir: Path | None, role_options: dict) -> None:
        import torch

        require(spec)
        self.spec = spec
        opts = adapter_options(spec, {**_COMMON, **role_options})
        self.opts = opts
        set_threads(spec)
        self.device = torch_device(spec)
        try:
            checkpoint = Path(resolve_checkpoint(spec, base_dir))
            weights = find_file(checkpoint, (".pth", ".pt"), "GroundingDINO weights")
            config = self._config_path(weights, opts["config"], base_dir)
            model = build_gdino_model(config, opts["text_encoder"], self.device)
            state = load_weights(weights, spec, bool(opts["trust_checkpoint"]))
            state = state.get("model", state)
            from groundingdino.util.misc import clean_state_dict

            # the official loader uses strict=False (its checkpoints lack BERT's position_ids buffer);
            # anything else missing would leave random weights in a "real" model
            missing, unexpected = model.load_state_dict(clean_state_dict(state), strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ValueError(f"weights do not fit {config.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        self.model = model.to(self.device).eval()
        self.tokenizer = model.tokenizer
        self.max_text_len = int(model.max_text_len)
        import groundingdino.datasets.transforms as T

        self.transform = T.Compose([
            T.RandomResize([int(opts["image_size"])], max_size=int(opts["max_size"])),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        self._torch = torch

    @staticmethod
    def _config_path(weights: Path, option: str | None, base_dir: Path | None) -> Path:
        """The config .py of `weights` (also grand.models.groundingdino_convert, which runs without the
        package: the configs shipped in it are then not available)."""
        import importlib.util

        bundled = importlib.util.find_spec("groundingdino") is not None
        if option:
            candidates = [Path(option).expanduser(), (base_dir or Path.cwd()) / option, weights.parent / option]
            if bundled:
                candidates.append(official_config_path(Path(option).name))
            for candidate in candidates:
                if candidate.is_file():
                    return candidate
            raise FileNotFoundError(f"option config: no such GroundingDINO config file: {option}")
        configs = sorted(p for p in weights.parent.glob("*.py") if p.is_file())
        if weights.parent.is_dir() and len(configs) == 1:
            return configs[0]
        for key, name in _BUNDLED.items():
            if key in weights.name.lower() and bundled:
                return official_config_path(name)
        raise FileNotFoundError(
            f"cannot tell the config of {weights.name}: set option config (e.g. GroundingDINO_SwinT_OGC.py, "
            "a path, or the name of a config shipped in the groundingdino package)"
        )

    def _forward(self, image: Image.Image, caption: str):
        """(probs (Q, T) sigmoid box-token scores over the caption's T tokens, boxes (Q, 4) xyxy pixels of
        `image`, the caption's token ids)."""
        torch = self._torch
        pixels, _ = self.transform(image, None)
        outputs = self.model(pixels[None].to(self.device), captions=[caption])
        ids = self.tokenizer(caption)["input_ids"][: self.max_text_len]
        probs = outputs["pred_logits"][0].float().sigmoid()[:, : len(ids)].cpu()
        cx, cy, w, h = outputs["pred_boxes"][0].float().cpu().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        boxes = boxes * torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
        return probs, boxes, ids

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class OriginalGroundingDinoDetector(_OriginalGroundingDino):
    """Open-vocabulary detector: each image's queries (its tags) in official captions, as few as fit
    the text encoder's `max_text_len` tokens; the boxes of all captions of an image are merged."""

    open_vocabulary = True

    def __init__(self, spec: DetectorSpec, base_dir: Path | None = None) -> None:
        super().__init__(spec, base_dir, {"box_threshold": 0.1, "text_threshold": 0.25, "max_detections": 100})
        self.box_threshold = float(self.opts["box_threshold"])
        self.text_threshold = float(self.opts["text_threshold"])
        self.max_detections = int(self.opts["max_detections"])

    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        queries = queries if queries is not None else [[] for _ in images]
        if len(queries) != len(images):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(queries)} query lists")
        with self._torch.inference_mode():
            return [self._detect_one(image.convert("RGB"), q) for image, q in zip(images, queries)]

    def _detect_one(self, image: Image.Image, queries: list[str]) -> Detections:
        cleaned = list(dict.fromkeys(q for q in map(_query_text, queries) if q))
        padded = pad_to_aspect(image)  # a 256x4 strip gives fewer feature tokens than the model has queries
        parts = [self._detect_chunk(padded, chunk) for chunk in self._chunks(cleaned)]
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections.empty(self.spec.name)
        xyxy = clip_boxes(np.concatenate([p.xyxy for p in parts]), image.width, image.height)
        dets = Detections(xyxy, np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.labels for p in parts]), self.spec.name)
        dets = dets[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]
        return dets[np.argsort(-dets.scores, kind="stable")[: self.max_detections]]

    def _chunks(self, queries: list[str]) -> list[list[str]]:
        """Queries grouped into captions of at most max_text_len tokens ([CLS] q1 . q2 . [SEP])."""
        chunks: list[list[str]] = []
        used = self.max_text_len  # forces a new chunk for the first query
        for query in queries:
            n = self._n_tokens(query)
            if n == 0 or n + 3 > self.max_text_len:  # nothing to match, or truncated even alone
                continue
            if used + n + 1 > self.max_text_len:
                chunks.append([])
                used = 2
            chunks[-1].append(query)
            used += n + 1
        return chunks

    def _detect_chunk(self, image: Image.Image, queries: list[str]) -> Detections:
        from groundingdino.util.utils import get_phrases_from_posmap

        torch = self._torch
        caption = _caption(queries)
        probs, boxes, ids = self._forward(image, caption)
        scores = probs.max(dim=1).values
        keep = scores > self.box_threshold
        tokenized = {"input_ids": ids}
        spans = self._query_spans(ids, len(queries))
        labels, kept = [], []
        for k in keep.nonzero().flatten().tolist():
            phrase = _query_text(get_phrases_from_posmap(probs[k] > self.text_threshold, tokenized, self.tokenizer))
            if phrase in queries:
                labels.append(phrase)
            else:
                span_scores = torch.stack([probs[k, s].max() for s in spans])
                best = int(span_scores.argmax())
                if float(span_scores[best]) <= self.text_threshold:
                    continue
                labels.append(queries[best])
            kept.append(k)
        index = torch.tensor(kept, dtype=torch.long)
        return Detections(boxes[index].numpy(), scores[index].numpy(), labels, self.spec.name)

    def _query_spans(self, ids: list[int], n_queries: int) -> list:
        """Token positions of each query in its caption: queries are separated by '.'."""
        torch = self._torch
        tok = self.tokenizer
        ids_t = torch.tensor(ids)
        is_dot = ids_t == tok.convert_tokens_to_ids(".")
        query_index = is_dot.cumsum(0)
        content = ~is_dot & (ids_t != tok.cls_token_id) & (ids_t != tok.sep_token_id)
        spans = [(content & (query_index == j)).nonzero().flatten() for j in range(n_queries)]
        if any(len(s) == 0 for s in spans):
            raise RuntimeError(f"model '{self.spec.name}': a query has no tokens in {tok.decode(ids)!r}")
        return spans


class OriginalGroundingDinoGrounder(_OriginalGroundingDino):
    """Phrase grounding: one official caption "<phrase> ." per (image, phrase); a box's score is its
    best token (official `predict`), boxes above `spec.score_threshold` are clipped to the image,
    class-agnostic NMS, the best `spec.max_boxes_per_phrase` kept. Identical phrases run once."""

    def __init__(self, spec: PhraseGroundingSpec, base_dir: Path | None = None) -> None:
        super().__init__(spec, base_dir, {"nms_iou": 0.5})
        self.nms_iou = float(self.opts["nms_iou"])

    def ground(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detections]]:
        if len(phrases) != len(images):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(phrases)} phrase lists")
        out = []
        with self._torch.inference_mode():
            for image, image_phrases in zip(images, phrases):
                image = image.convert("RGB")
                padded = pad_to_aspect(image)
                found: dict[str, Detections] = {}
                per_phrase = []
                for phrase in image_phrases:
                    text = _query_text(phrase)
                    if text and text not in found:
                        found[text] = self._ground_one(padded, image, text)
                    dets = found.get(text, Detections.empty(self.spec.name))
                    per_phrase.append(Detections(dets.xyxy, dets.scores, [phrase] * len(dets), self.spec.name))
                out.append(per_phrase)
        return out

    def _ground_one(self, padded: Image.Image, image: Image.Image, text: str) -> Detections:
        probs, boxes, _ = self._forward(padded, _caption([text]))
        scores = probs.max(dim=1).values.numpy()
        xyxy = clip_boxes(boxes.numpy(), image.width, image.height)
        ok = (scores > self.spec.score_threshold) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        dets = Detections(xyxy[ok], scores[ok], [text] * int(ok.sum()), self.spec.name)
        return dets[nms(dets.xyxy, dets.scores, self.nms_iou)[: self.spec.max_boxes_per_phrase]]
