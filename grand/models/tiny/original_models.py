"""Tiny random-weight checkpoints for the original-package backends (segment-anything, HQ-SAM,
GroundingDINO, detectron2), built offline from each package's own modeling code and builders.

Each directory holds what the adapter reads for a real model: a `.pth` state dict plus the
architecture (SAM: `sam_config.json`, since the official builders only know ViT-H/L/B at 1024 px;
GroundingDINO: an official-format config `.py`, with a 1-layer BERT in `bert/`; detectron2: a yacs
`config.yaml`). Outputs are random; shapes, loading and pre/post-processing are real.
"""

from __future__ import annotations

import json
from pathlib import Path

# SAM at 128 px with a 2-layer width-32 ViT; the prompt encoder / mask decoder at width 32.
TINY_SAM_ARCH = {
    "image_size": 128,
    "patch_size": 16,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 4,
    "mlp_ratio": 2.0,
    "prompt_embed_dim": 32,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _build_sam(backend: str, out_dir: Path) -> None:
    import torch

    from grand.models.sam_original import ARCH_FILE, build_sam_from_arch

    _seed()
    model = build_sam_from_arch(backend, TINY_SAM_ARCH)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ARCH_FILE).write_text(json.dumps(TINY_SAM_ARCH, indent=1))
    torch.save(model.state_dict(), out_dir / "sam_tiny.pth")


def build_sa_sam(out_dir: Path) -> None:
    """segment-anything's `Sam` (ImageEncoderViT + PromptEncoder + MaskDecoder) at tiny widths."""
    _build_sam("segment-anything", out_dir)


def build_sa_sam_hq(out_dir: Path) -> None:
    """segment-anything-hq's `Sam` with `MaskDecoderHQ` at tiny widths."""
    _build_sam("segment-anything-hq", out_dir)


# GroundingDINO: the official SwinT-OGC config with 1 encoder and 2 decoder layers (transformers'
# GroundingDINO, the parity test's other side, needs >= 2), 50 queries, a 1-layer width-32 BERT.
# hidden_dim stays 256: the package hard-codes 256-d text position embeddings.
_GDINO_CHANGES = {
    "enc_layers = 6": "enc_layers = 1",
    "dec_layers = 6": "dec_layers = 2",
    "dim_feedforward = 2048": "dim_feedforward = 256",
    "num_queries = 900": "num_queries = 50",
    "nheads = 8": "nheads = 2",
    "use_checkpoint = True": "use_checkpoint = False",
    "use_transformer_ckpt = True": "use_transformer_ckpt = False",
    'text_encoder_type = "bert-base-uncased"': 'text_encoder_type = "bert"',
}
GDINO_CONFIG = "GroundingDINO_tiny.py"


def build_groundingdino(out_dir: Path) -> None:
    """groundingdino's `build_model` on its SwinT-OGC config made small (the Swin-T backbone is
    the package's smallest: ~28M of the ~32M parameters)."""
    import torch

    from grand.models.gdino_original import build_gdino_model, official_config_path

    _seed()
    out_dir.mkdir(parents=True, exist_ok=True)
    text = official_config_path("GroundingDINO_SwinT_OGC.py").read_text()
    for old, new in _GDINO_CHANGES.items():
        if old not in text:
            raise RuntimeError(f"groundingdino's SwinT-OGC config changed: '{old}' not found")
        text = text.replace(old, new)
    (out_dir / GDINO_CONFIG).write_text(text)
    _build_bert(out_dir / "bert")
    model = build_gdino_model(out_dir / GDINO_CONFIG, text_encoder=None, device="cpu")
    # box-token logits are dot products of 256-d layer-normed features (std ~16): random weights
    # saturate every score at 1.0. Shrinking the encoder's final text features spreads them out.
    with torch.no_grad():
        model.transformer.encoder.text_layers[-1].norm2.weight.mul_(0.1)
    torch.save({"model": model.state_dict()}, out_dir / "groundingdino_tiny.pth")


def _build_bert(out_dir: Path) -> None:
    """A 1-layer width-32 BERT over the concept vocabulary (as tiny:grounding-dino's text tower)."""
    from transformers import BertConfig, BertModel

    from grand.models.tiny.text_models import build_bert_tokenizer, concept_words

    tokenizer = build_bert_tokenizer(concept_words())
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=0,
    )
    BertModel(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_detectron2(out_dir: Path) -> None:
    """detectron2's Mask R-CNN (ResNet-18 FPN) from the model zoo's COCO config, narrowed; COCO names
    through DATASETS.TEST. The classifier's logits are spread (weights x 4, background bias -4) so
    that a random model still emits boxes above detectron2's 0.05 test threshold."""
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    _seed()
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    # a fixed sampling grid: on CPU installs without torchvision's compiled ops, ROIAlign is
    # torchvision's pure-torch version, whose adaptive grid (ratio 0) is far slower
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.INPUT.MIN_SIZE_TEST = 160
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.DATASETS.TEST = ("coco_2017_val",)
    model = build_model(cfg).eval()
    with torch.no_grad():
        cls_score = model.roi_heads.box_predictor.cls_score
        cls_score.weight.mul_(1.0)
        cls_score.bias[-1] = -4.0  # detectron2's background class is the last
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict()}, out_dir / "model_final.pth")
