"""Tiny random-weight vision checkpoints (RT-DETR, SAM, Depth Anything) built offline from configs.

Each builder writes a directory that `from_pretrained` / `AutoImageProcessor` / `AutoProcessor` load
exactly like the real checkpoint, with the same architecture and processor classes but widths of
16-64 and 1-2 layers, so that adapters run their real pre- and post-processing in milliseconds.
Outputs are random; only shapes, types and plumbing mean anything.
"""

from __future__ import annotations

from pathlib import Path

# COCO's 80 detection classes in the contiguous order of COCO-trained heads (RT-DETR's id2label).
COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def build_rt_detr(out_dir: Path) -> None:
    """RT-DETR with a 4-stage ResNet-basic backbone of widths 16-128, d_model 32, one decoder layer."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessorPil, RTDetrResNetConfig

    _seed()
    labels = list(COCO_LABELS)
    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_indices=[2, 3, 4],
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        encoder_in_channels=[32, 64, 128],
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        encoder_layers=1,
        d_model=32,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        decoder_layers=1,
        decoder_n_points=2,
        num_queries=50,
        num_denoising=0,  # denoising queries only matter in training
        # the default prior (1/81) starts every score near 0.01, below any threshold; a random model
        # should still emit boxes so that the post-processing and label plumbing get exercised
        initializer_bias_prior_prob=0.3,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    RTDetrForObjectDetection(config).eval().save_pretrained(out_dir)
    # RT-DETR's processor resizes to a fixed square without keeping the aspect ratio (as the real one, at 640)
    RTDetrImageProcessorPil(size={"height": 128, "width": 128}).save_pretrained(out_dir)


def build_sam(out_dir: Path) -> None:
    """SAM with a 2-layer ViT at 128 px (8x8 embedding grid); processor sizes follow the image size."""
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    _seed()
    image_size, patch_size, width = 128, 16, 32
    config = SamConfig(
        vision_config=dict(
            hidden_size=width,
            output_channels=width,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=width // 2,
            mlp_dim=64,
        ),
        prompt_encoder_config=dict(
            hidden_size=width, image_size=image_size, patch_size=patch_size, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=width, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=width
        ),
    )
    SamModel(config).eval().save_pretrained(out_dir)
    mask_side = image_size // patch_size * 4  # the mask decoder upsamples the embedding grid 4x
    processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_side},
        mask_pad_size={"height": mask_side, "width": mask_side},
    )
    SamProcessor(image_processor=processor).save_pretrained(out_dir)


def build_depth_anything(out_dir: Path) -> None:
    """Depth Anything (DINOv2 backbone, DPT head) with a 2-layer width-32 ViT at ~112 px."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    _seed()
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=112,
        out_indices=[1, 2],
        reshape_hidden_states=False,  # the DPT neck reshapes the tokens itself
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2],
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        head_hidden_size=16,
    )
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(out_dir)
    # the real processor: keep the aspect ratio, lower bound 518, multiple of 14; here 112
    DPTImageProcessorPil(
        size={"height": 112, "width": 112},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as Depth Anything's
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out_dir)
