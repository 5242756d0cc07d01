"""segment-anything / segment-anything-hq state dicts -> transformers `SamModel` / `SamHQModel`.

The renaming rules are transformers' own (`models/sam/convert_sam_to_hf.py` and
`models/sam_hq/convert_samhq_to_hf.py` in the transformers repository; the installed wheel does not
ship them), so the same weights run through both implementations: the parity tests compare our two
SAM backends this way, and `to_transformers()` converts a user's official `.pth` to a directory that
backend `transformers` loads.
"""

from __future__ import annotations

import re
from pathlib import Path

# substring -> replacement, applied in this order to every key (as transformers' KEYS_TO_MODIFY_MAPPING)
_RENAMES: tuple[tuple[str, str], ...] = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
)
# HQ-SAM's extra decoder parts
_HQ_RENAMES: tuple[tuple[str, str], ...] = (
    ("mask_decoder.hf_token", "mask_decoder.hq_token"),
    ("mask_decoder.compress_vit_feat.0", "mask_decoder.compress_vit_conv1"),
    ("mask_decoder.compress_vit_feat.1", "mask_decoder.compress_vit_norm"),
    ("mask_decoder.compress_vit_feat.3", "mask_decoder.compress_vit_conv2"),
    ("mask_decoder.embedding_encoder.0", "mask_decoder.encoder_conv1"),
    ("mask_decoder.embedding_encoder.1", "mask_decoder.encoder_norm"),
    ("mask_decoder.embedding_encoder.3", "mask_decoder.encoder_conv2"),
    ("mask_decoder.embedding_maskfeature.0", "mask_decoder.mask_conv1"),
    ("mask_decoder.embedding_maskfeature.1", "mask_decoder.mask_norm"),
    ("mask_decoder.embedding_maskfeature.3", "mask_decoder.mask_conv2"),
    ("mask_decoder.hf_mlp", "mask_decoder.hq_mask_mlp"),
)
# 3-layer MLPs: layers.0 / 1 / 2 -> proj_in / layers.0 / proj_out
_MLP = re.compile(r"(output_hypernetworks_mlps\.\d+|hq_mask_mlp)\.layers\.(\d)\.")
_MLP_NAMES = {"0": "proj_in.", "1": "layers.0.", "2": "proj_out."}


def convert_state_dict(state: dict, hq: bool = False) -> dict:
    """Keys of a segment-anything (hq=False) or segment-anything-hq (hq=True) `Sam` renamed for
    transformers' SamModel / SamHQModel; tensors are shared, not copied."""
    renames = _RENAMES + (_HQ_RENAMES if hq else ())
    out = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue  # transformers keeps them in the image processor
        for old, new in renames:
            key = key.replace(old, new)
        key = _MLP.sub(lambda m: f"{m.group(1)}.{_MLP_NAMES[m.group(2)]}", key)
        out[key] = value
    # transformers' model has the image-side copy of the prompt encoder's random Fourier features
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def transformers_config(arch: dict, hq: bool = False):
    """A SamConfig / SamHQConfig for the architecture of grand's `sam_config.json` (see
    grand.models.sam_original.build_sam_from_arch)."""
    from transformers import SamConfig, SamHQConfig

    dim = arch["prompt_embed_dim"]
    vision = dict(
        hidden_size=arch["encoder_embed_dim"], output_channels=dim, num_hidden_layers=arch["encoder_depth"],
        num_attention_heads=arch["encoder_num_heads"], image_size=arch["image_size"], patch_size=arch["patch_size"],
        window_size=arch["window_size"], global_attn_indexes=list(arch["encoder_global_attn_indexes"]),
        mlp_dim=int(arch["encoder_embed_dim"] * arch["mlp_ratio"]), num_pos_feats=dim // 2,
        layer_norm_eps=1e-6, qkv_bias=True, use_rel_pos=True,
    )
    prompt = dict(hidden_size=dim, image_size=arch["image_size"], patch_size=arch["patch_size"],
                  mask_input_channels=arch.get("mask_in_chans", 16))
    decoder = dict(hidden_size=dim, mlp_dim=arch["decoder_mlp_dim"], num_hidden_layers=arch["decoder_depth"],
                   num_attention_heads=arch["decoder_num_heads"], iou_head_depth=3,
                   iou_head_hidden_dim=arch["iou_head_hidden_dim"], num_multimask_outputs=3)
    if hq:
        return SamHQConfig(vision_config=vision, prompt_encoder_config=prompt,
                           mask_decoder_config={**decoder, "vit_dim": arch["encoder_embed_dim"]})
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def to_transformers(sam, arch: dict, out_dir: Path, hq: bool = False) -> Path:
    """Save a segment-anything(-hq) `Sam` as a transformers checkpoint directory (model + SamProcessor
    with the original's preprocessing: longest side to `image_size`, padded square, ImageNet mean/std;
    low-res masks at 4x the embedding grid)."""
    from transformers import SamHQModel, SamHQProcessor, SamImageProcessorPil, SamModel, SamProcessor

    model = (SamHQModel if hq else SamModel)(transformers_config(arch, hq)).eval()
    missing, unexpected = model.load_state_dict(convert_state_dict(sam.state_dict(), hq), strict=False)
    if missing or unexpected:
        raise ValueError(f"SAM -> transformers: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.save_pretrained(out_dir)
    side = arch["image_size"]
    mask_side = side // arch["patch_size"] * 4
    image_processor = SamImageProcessorPil(
        size={"longest_edge": side}, pad_size={"height": side, "width": side},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    )
    (SamHQProcessor if hq else SamProcessor)(image_processor=image_processor).save_pretrained(out_dir)
    return Path(out_dir)
