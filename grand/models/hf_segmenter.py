"""Box-prompted masks from SAM (`SamModel`) or HQ-SAM (`SamHQModel`, chosen when the checkpoint's
config says `model_type: sam_hq`) through Hugging Face transformers.

As segment-anything's `SamPredictor`: the heavy image encoder runs once per image, then the light
prompt encoder + mask decoder run on chunks of boxes against the cached embedding.

Options (`spec.options`):
    boxes_per_batch          boxes decoded together against one image embedding (default 64)
    mask_threshold           logit threshold that binarises the upsampled masks (default 0.0, SAM's)
    hq_token_only            HQ-SAM only: return the HQ mask alone instead of SAM + HQ (default False)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import SegmenterSpec
from grand.models.base import PerImageBoxSegmenter, gather_masks
from grand.models.loading import adapter_options, load_pretrained, resolve_checkpoint, unavailable


class HFSamSegmenter(PerImageBoxSegmenter):
    """Segmenter: one boolean (H, W) mask per prompt box, at the image's own resolution."""

    def __init__(self, spec: SegmenterSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor, SamHQModel, SamModel

        self.spec = spec
        opts = adapter_options(spec, {"boxes_per_batch": 64, "mask_threshold": 0.0, "hq_token_only": False})
        self.boxes_per_batch = int(opts["boxes_per_batch"])
        if self.boxes_per_batch < 1:
            raise ValueError(f"model '{spec.name}': option boxes_per_batch must be >= 1")
        self.mask_threshold = float(opts["mask_threshold"])
        self.hq_token_only = bool(opts["hq_token_only"])
        # the checkpoint's config picks the model class: SAM or HQ-SAM
        try:
            config = AutoConfig.from_pretrained(resolve_checkpoint(spec, base_dir), revision=spec.revision)
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        self.is_hq = config.model_type == "sam_hq"
        if self.is_hq:  # transformers' HQ decoder drops the transformer's image embeddings (see the module)
            from grand.compat.transformers_sam_hq import patch

            patch()
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, SamHQModel if self.is_hq else SamModel, AutoProcessor
        )
        self._torch = torch

    def _segment_one(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        torch = self._torch
        inputs = self.processor(images=image, return_tensors="pt")
        original_size = inputs["original_sizes"][0].tolist()  # (H, W)
        resized_size = inputs["reshaped_input_sizes"][0].tolist()  # (h, w) before padding
        # box prompts live in the resized (unpadded) frame, as the processor itself would scale them
        scale = np.array([resized_size[1] / original_size[1], resized_size[0] / original_size[0]] * 2, np.float32)
        with torch.inference_mode():
            embedding = self._embed(inputs["pixel_values"].to(self.device, self.dtype))
            chunks = []
            for start in range(0, len(boxes), self.boxes_per_batch):
                prompt = torch.from_numpy(boxes[start : start + self.boxes_per_batch] * scale)
                low_res = self._decode(embedding, prompt[None].to(self.device, self.dtype))  # (1, n, 1, h', w')
                # upsample where the logits are (the GPU on clusters) and move only the bool masks
                masks = self.processor.post_process_masks(
                    [low_res[0].float()],
                    [original_size],
                    [resized_size],
                    mask_threshold=self.mask_threshold,
                    binarize=True,
                )[0]
                chunks.append(masks[:, 0])
            return gather_masks(chunks, original_size[0], original_size[1])

    def _embed(self, pixel_values) -> dict:
        """Image-encoder outputs the decoder needs: HQ-SAM also wants the early ViT layers."""
        if self.is_hq:
            embeddings, intermediate = self.model.get_image_embeddings(pixel_values)
            return {"image_embeddings": embeddings, "intermediate_embeddings": intermediate}
        return {"image_embeddings": self.model.get_image_embeddings(pixel_values)}

    def _decode(self, embedding: dict, input_boxes):
        extra = {"hq_token_only": self.hq_token_only} if self.is_hq else {}
        outputs = self.model(input_boxes=input_boxes, multimask_output=False, **embedding, **extra)
        return outputs.pred_masks
