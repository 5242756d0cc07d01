"""Monocular relative depth from Hugging Face transformers: Depth Anything (V1/V2), DPT, MiDaS-style
checkpoints — anything that loads with `AutoModelForDepthEstimation`.

Output is what those models predict: relative inverse depth (larger = nearer), resized to the image.

Options (`spec.options`):
    image_processor_backend  "pil" | "torchvision" | None (transformers picks: torchvision when installed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DepthSpec
from grand.models.preprocess import pad_to_aspect
from grand.models.loading import adapter_options, load_pretrained


class HFDepthEstimator:
    """DepthEstimator: float32 (H, W) relative inverse depth per image, at the image's own size."""

    def __init__(self, spec: DepthSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.spec = spec
        opts = adapter_options(spec, {"image_processor_backend": None})
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModelForDepthEstimation, AutoImageProcessor,
            backend=opts["image_processor_backend"],
        )
        self._torch = torch

    def estimate(self, images: list[Image.Image]) -> list[np.ndarray]:
        # Extreme aspect ratios (a 256x4 strip) make the keep-aspect resize round the short side to 0
        # pixels: predict on a padded copy and crop the map back to the image.
        originals = images
        images = [pad_to_aspect(im.convert("RGB")) for im in images]
        # Depth Anything / DPT keep the aspect ratio, so images of different shapes give different
        # tensor sizes: preprocess one by one, then batch the images whose tensors agree in shape.
        pixels = [self.processor(images=im, return_tensors="pt")["pixel_values"][0] for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(tuple(p.shape), []).append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.spec.batch_size):
                batch = indices[start : start + self.spec.batch_size]
                depths = self._predict(self._torch.stack([pixels[i] for i in batch]), [images[i] for i in batch])
                for i, depth in zip(batch, depths):
                    out[i] = np.ascontiguousarray(depth[: originals[i].height, : originals[i].width])
        return out  # type: ignore[return-value]

    def _predict(self, pixel_values, images: list[Image.Image]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        # resize in float32: bicubic upsampling of a half-precision map loses the fine depth steps
        outputs.predicted_depth = outputs.predicted_depth.float()
        sizes = [(im.height, im.width) for im in images]
        results = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        # post-processing squeezes the map, so a 1-pixel-high image would lose a dimension: reshape back
        return [
            res["predicted_depth"].cpu().numpy().astype(np.float32).reshape(size)
            for res, size in zip(results, sizes)
        ]
