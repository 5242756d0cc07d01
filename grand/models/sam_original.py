"""Box-prompted masks from the authors' packages: `segment-anything` (SAM) and `segment-anything-hq`
(HQ-SAM), backends of the same names.

The official `SamPredictor` of each package does the pre- and post-processing: `set_image` runs the
image encoder once per image (longest side resized to the encoder's size, ImageNet mean/std, padding),
then `predict_torch` decodes chunks of boxes against the cached embedding and upsamples the masks to
the image's size, thresholded at the model's `mask_threshold` (0.0).

Checkpoints (`checkpoint:`):
- an official `.pth` file: `sam_vit_h_4b8939.pth`, `sam_vit_l_0b3195.pth`, `sam_vit_b_01ec64.pth`
  (segment-anything), `sam_hq_vit_h.pth`, `sam_hq_vit_l.pth`, `sam_hq_vit_b.pth` (segment-anything-hq);
  the architecture comes from option `model_type`, else from the file name; built by the package's
  own `sam_model_registry`;
- a directory with one `.pth` and a `sam_config.json` giving the architecture (other sizes, e.g. the
  tiny random-weight `tiny:sa-sam` / `tiny:sa-sam-hq`), built from the package's modeling classes.
Weights load with `torch.load(weights_only=True)` (grand.models.original_packages.load_weights).

Options (`spec.options`):
    model_type        vit_h | vit_l | vit_b (| vit_tiny for HQ-SAM's TinyViT); default: from the file name
    boxes_per_batch   boxes decoded together against one image embedding (default 64)
    hq_token_only     HQ-SAM only: the HQ mask alone instead of SAM + HQ (default False, the package's)
    trust_checkpoint  allow a checkpoint that needs full unpickling (default False)
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import SegmenterSpec
from grand.models.base import PerImageBoxSegmenter, gather_masks
from grand.models.loading import adapter_options, resolve_checkpoint, set_threads, torch_device, unavailable
from grand.models.original_packages import find_file, load_weights, require

ARCH_FILE = "sam_config.json"
_MODULES = {"segment-anything": "segment_anything", "segment-anything-hq": "segment_anything_hq"}


def import_package(backend: str):
    """The package module; HQ-SAM registers TinyViT names that timm already has (a harmless warning)."""
    import importlib

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        return importlib.import_module(_MODULES[backend])


def build_sam_from_arch(backend: str, arch: dict):
    """A `Sam` of any size from the package's own modeling classes, laid out as its `_build_sam` does
    (rel-pos windowed ViT, LayerNorm eps 1e-6, 3 multimask outputs, SAM's pixel mean/std)."""
    from functools import partial

    import torch

    package = import_package(backend)
    m = package.modeling
    image_size, patch, dim = arch["image_size"], arch["patch_size"], arch["prompt_embed_dim"]
    decoder_kwargs = dict(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(
            depth=arch["decoder_depth"], embedding_dim=dim, mlp_dim=arch["decoder_mlp_dim"],
            num_heads=arch["decoder_num_heads"],
        ),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=arch["iou_head_hidden_dim"],
    )
    if backend == "segment-anything-hq":
        decoder = m.MaskDecoderHQ(vit_dim=arch["encoder_embed_dim"], **decoder_kwargs)
    else:
        decoder = m.MaskDecoder(**decoder_kwargs)
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=arch["encoder_depth"], embed_dim=arch["encoder_embed_dim"], img_size=image_size,
            mlp_ratio=arch["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch["encoder_num_heads"], patch_size=patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=arch["encoder_global_attn_indexes"], window_size=arch["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=dim, image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size), mask_in_chans=arch.get("mask_in_chans", 16),
        ),
        mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _model_type(weights: Path, option: str | None, backend: str) -> str:
    if option:
        return option
    found = re.search(r"vit_(h|l|b|tiny)", weights.name)
    if not found:
        raise ValueError(
            f"cannot tell the architecture of {weights.name}: set option model_type "
            f"(vit_h, vit_l, vit_b{', vit_tiny' if backend == 'segment-anything-hq' else ''})"
        )
    return f"vit_{found.group(1)}"


class OriginalSamSegmenter(PerImageBoxSegmenter):
    """Segmenter: one boolean (H, W) mask per prompt box, at the image's own resolution."""

    def __init__(self, spec: SegmenterSpec, base_dir: Path | None = None) -> None:
        import torch

        require(spec)
        self.spec = spec
        opts = adapter_options(
            spec, {"model_type": None, "boxes_per_batch": 64, "hq_token_only": False, "trust_checkpoint": False}
        )
        self.boxes_per_batch = int(opts["boxes_per_batch"])
        if self.boxes_per_batch < 1:
            raise ValueError(f"model '{spec.name}': option boxes_per_batch must be >= 1")
        self.is_hq = spec.backend == "segment-anything-hq"
        self.hq_token_only = bool(opts["hq_token_only"])
        set_threads(spec)
        self.device = torch_device(spec)
        package = import_package(spec.backend)
        try:
            checkpoint = Path(resolve_checkpoint(spec, base_dir))
            weights = find_file(checkpoint, (".pth", ".pt"), "SAM checkpoint")
            arch_file = weights.parent / ARCH_FILE
            if arch_file.is_file():
                model = build_sam_from_arch(spec.backend, json.loads(arch_file.read_text()))
            else:
                model_type = _model_type(weights, opts["model_type"], spec.backend)
                if model_type not in package.sam_model_registry:
                    raise ValueError(
                        f"option model_type '{model_type}' is not one of {', '.join(package.sam_model_registry)}"
                    )
                model = package.sam_model_registry[model_type](checkpoint=None)
            state = load_weights(weights, spec, bool(opts["trust_checkpoint"]))
            # (HQ-SAM's own builder loads non-strictly and only prints what did not fit: a half-loaded
            # model gives plausible-looking garbage, so here any missing or extra key is an error)
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as err:  # tensors of other shapes: another architecture's weights
                lines = [line.strip() for line in str(err).splitlines()[1:]]
                raise ValueError(
                    f"checkpoint does not fit the model ({len(lines)} tensors of other shapes, e.g. {lines[0]}); "
                    "check option model_type"
                ) from None
            if missing or unexpected:
                raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        # the predictor's transforms run in float32; SAM's own code has no half-precision path
        self.model = model.to(self.device).eval()
        self.predictor = package.SamPredictor(self.model)
        self._torch = torch

    def _segment_one(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        torch = self._torch
        pixels = np.asarray(image)  # HWC uint8 RGB, the predictor's default image_format
        chunks = []
        with torch.inference_mode():
            self.predictor.set_image(pixels)
            for start in range(0, len(boxes), self.boxes_per_batch):
                prompt = torch.as_tensor(boxes[start : start + self.boxes_per_batch], device=self.device)
                prompt = self.predictor.transform.apply_boxes_torch(prompt, pixels.shape[:2])
                extra = {"hq_token_only": self.hq_token_only} if self.is_hq else {}
                masks, _, _ = self.predictor.predict_torch(
                    point_coords=None, point_labels=None, boxes=prompt, multimask_output=False, **extra
                )
                chunks.append(masks[:, 0])
            self.predictor.reset_image()
        return gather_masks(chunks, *pixels.shape[:2])
