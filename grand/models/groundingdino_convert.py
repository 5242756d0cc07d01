"""GroundingDINO checkpoints of the authors' package (`groundingdino`) -> transformers
`GroundingDinoForObjectDetection`.

The renaming follows transformers' own conversion (`models/grounding_dino/convert_grounding_dino_to_hf.py`
in the transformers repository; the installed wheel does not ship it), written for the module names of
the installed transformers (5.x: the Swin backbone under `.swin.`, its attention as q/k/v/o_proj).
Fused projections are split: the Swin blocks' `qkv`, and the `nn.MultiheadAttention` `in_proj` of the
text enhancer, the decoder's self-attention and its text cross-attention, each into query / key / value.

`to_transformers()` converts an official `.pth` (`groundingdino_swint_ogc.pth`,
`groundingdino_swinb_cogcoor.pth`) with its config `.py` into a directory that backend `transformers`
loads (model + `GroundingDinoProcessor` with the official pre-processing: shorter side 800, longer at
most 1333, ImageNet mean / std). `grand models convert groundingdino` is its command line. The
parity test (tests/test_models_original.py) runs the same weights through both backends.

Not convertible, with an error saying so: a config transformers' model cannot express (one decoder
layer: transformers ties the decoder's box heads to its first and needs a second; another backbone
than Swin; the text enhancer / fusion / text cross-attention switched off; different x / y position
temperatures).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

# (pattern over the whole original key, replacement), tried in order; the first that matches wins.
_SWIN = "model.backbone.conv_encoder.model.swin."
_RULES: tuple[tuple[str, str], ...] = (
    # vision backbone (Swin)
    (r"backbone\.0\.patch_embed\.proj\.(.*)", _SWIN + r"embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.0\.patch_embed\.norm\.(.*)", _SWIN + r"embeddings.norm.\1"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.(.*)", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.(.*)", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     _SWIN + r"encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(.*)", _SWIN + r"encoder.layers.\1.blocks.\2.attention.{q,k,v}_proj.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(.*)", _SWIN + r"encoder.layers.\1.blocks.\2.attention.o_proj.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc[12])\.(.*)", _SWIN + r"encoder.layers.\1.blocks.\2.mlp.\3.\4"),
    (r"backbone\.0\.layers\.(\d+)\.downsample\.(.*)", _SWIN + r"encoder.layers.\1.downsample.\2"),
    # the package's out_indices count from 0, transformers' stages from 1 (the stem is stage 0)
    (r"backbone\.0\.norm(\d+)\.(.*)", None),  # -> hidden_states_norms.stage{n+1}, see _rename
    # text backbone and the projections into the transformer
    (r"bert\.pooler\..*", ""),  # transformers' text backbone has no pooler; the original never reads it
    (r"bert\.(.*)", r"model.text_backbone.\1"),
    (r"feat_map\.(.*)", r"model.text_projection.\1"),
    (r"input_proj\.(.*)", r"model.input_proj_vision.\1"),
    (r"transformer\.level_embed", r"model.level_embed"),
    (r"transformer\.tgt_embed\.weight", r"model.query_position_embeddings.weight"),
    # encoder: deformable image layer, text enhancer, image-text fusion
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.*)", r"model.encoder.layers.\1.deformable_layer.self_attn.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm1\.(.*)", r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear([12])\.(.*)", r"model.encoder.layers.\1.deformable_layer.fc\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(.*)", r"model.encoder.layers.\1.deformable_layer.final_layer_norm.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.self_attn.{query,key,value}.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.self_attn\.out_proj\.(.*)", r"model.encoder.layers.\1.text_enhancer_layer.self_attn.out_proj.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.linear([12])\.(.*)", r"model.encoder.layers.\1.text_enhancer_layer.fc\2.\3"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.norm1\.(.*)", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.norm2\.(.*)", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.gamma_v", r"model.encoder.layers.\1.fusion_layer.vision_param"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.gamma_l", r"model.encoder.layers.\1.fusion_layer.text_param"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_v\.(.*)", r"model.encoder.layers.\1.fusion_layer.layer_norm_vision.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_l\.(.*)", r"model.encoder.layers.\1.fusion_layer.layer_norm_text.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(values_|out_)?v_proj\.(.*)", r"model.encoder.layers.\1.fusion_layer.attn.\2vision_proj.\3"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(values_|out_)?l_proj\.(.*)", r"model.encoder.layers.\1.fusion_layer.attn.\2text_proj.\3"),
    # decoder
    (r"transformer\.decoder\.layers\.(\d+)\.cross_attn\.(.*)", r"model.decoder.layers.\1.encoder_attn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.(.*)", r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.ca_text\.in_proj_(weight|bias)", r"model.decoder.layers.\1.encoder_attn_text.{query,key,value}.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.ca_text\.out_proj\.(.*)", r"model.decoder.layers.\1.encoder_attn_text.out_proj.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.catext_norm\.(.*)", r"model.decoder.layers.\1.encoder_attn_text_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", r"model.decoder.layers.\1.self_attn.{query,key,value}.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.*)", r"model.decoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(.*)", r"model.decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.linear([12])\.(.*)", r"model.decoder.layers.\1.fc\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm3\.(.*)", r"model.decoder.layers.\1.final_layer_norm.\2"),
    (r"transformer\.decoder\.norm\.(.*)", r"model.decoder.layer_norm.\1"),
    (r"transformer\.decoder\.ref_point_head\.(.*)", r"model.decoder.reference_points_head.\1"),
    (r"transformer\.decoder\.bbox_embed\.(.*)", r"model.decoder.bbox_embed.\1"),
    (r"bbox_embed\.(.*)", r"bbox_embed.\1"),
    # two-stage proposals
    (r"transformer\.enc_output(_norm)?\.(.*)", r"model.enc_output\1.\2"),
    (r"transformer\.enc_out_bbox_embed\.(.*)", r"model.encoder_output_bbox_embed.\1"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RULES)
# buffers the original saves and transformers recomputes
_DROPPED = re.compile(r".*\.relative_position_index|.*position_ids")
_SPLIT = re.compile(r"\{([a-z_]+),([a-z_]+),([a-z_]+)\}")
# transformers' Swin keeps a final layer norm its backbone never applies (its _keys_to_ignore_on_load_missing)
_UNUSED = re.compile(r"model\.backbone\.conv_encoder\.model\.swin\.layernorm\..*")


def _rename(key: str) -> str | None:
    """The transformers name of an original key ('' = dropped on purpose, None = unknown)."""
    for pattern, replacement in _COMPILED:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        if replacement is None:  # backbone.0.norm{n}
            return f"model.backbone.conv_encoder.model.hidden_states_norms.stage{int(match.group(1)) + 1}.{match.group(2)}"
        return match.expand(replacement) if replacement else ""
    return None


def convert_state_dict(state: dict) -> dict:
    """An original GroundingDINO state dict (`model` of the official `.pth`, optionally 'module.'-prefixed)
    renamed for transformers' GroundingDinoForObjectDetection. Fused q/k/v projections are split in
    thirds (query, key, value: the order of both timm's Swin `qkv` and `nn.MultiheadAttention`);
    tensors are shared, not copied. Unknown keys raise: they would be silently left behind."""
    out: dict = {}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _DROPPED.fullmatch(key):
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if not new:
            continue
        split = _SPLIT.search(new)
        if split:
            parts = value.chunk(3, dim=0)
            for name, part in zip(split.groups(), parts):
                out[new[: split.start()] + name + new[split.end() :]] = part
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"GroundingDINO -> transformers: {len(unknown)} keys have no rule, e.g. {unknown[:5]}")
    return out


def read_config(path: Path) -> dict:
    """The settings of an official-format config .py (plain assignments, as SLConfig reads them)."""
    import runpy

    names = runpy.run_path(str(path))
    if "_base_" in names:
        raise ValueError(f"{path.name}: configs with _base_ inheritance are not supported; merge them into one file")
    return {k: v for k, v in names.items() if not k.startswith("_")}


def _swin_arch(state: dict) -> dict:
    """Swin embed_dim / depths / heads / window from the weights themselves (the package keeps its
    table of Swin sizes inside a function)."""
    state = {k.removeprefix("module."): v for k, v in state.items() if "backbone.0." in k}
    embed_dim = int(state["backbone.0.patch_embed.proj.weight"].shape[0])
    depths, heads, window = [], [], None
    stage = 0
    while f"backbone.0.layers.{stage}.blocks.0.norm1.weight" in state:
        blocks = 0
        while f"backbone.0.layers.{stage}.blocks.{blocks}.norm1.weight" in state:
            blocks += 1
        table = state[f"backbone.0.layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
        window = (math.isqrt(int(table.shape[0])) + 1) // 2  # the table has (2w - 1)^2 rows
        depths.append(blocks)
        stage += 1
    return {"embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": window}


def transformers_config(settings: dict, state: dict, text_config):
    """A GroundingDinoConfig equal to an original config (its settings as `read_config` gives them) for
    these weights; `text_config` is the text encoder's config (BertConfig)."""
    from transformers import GroundingDinoConfig, SwinConfig

    def need(name: str, ok: bool, why: str) -> None:
        if not ok:
            raise ValueError(f"GroundingDINO config {name} = {settings.get(name)!r}: {why}")

    backbone = str(settings.get("backbone", ""))
    need("backbone", backbone.startswith("swin_"), "transformers' GroundingDINO runs the Swin backbones only")
    need("dec_layers", int(settings["dec_layers"]) >= 2,
         "transformers ties the decoder's box heads to the first and needs at least 2 decoder layers")
    for flag in ("use_text_enhancer", "use_fusion_layer", "use_text_cross_attention", "sub_sentence_present"):
        need(flag, bool(settings.get(flag, True)), "transformers' model always has this part")
    need("two_stage_type", settings.get("two_stage_type", "standard") in ("standard", "no"), "not 'standard' or 'no'")
    need("num_patterns", int(settings.get("num_patterns", 0)) == 0, "pattern queries are not in transformers' model")
    need("pre_norm", not settings.get("pre_norm", False), "transformers' layers are post-norm")
    need("pe_temperatureW", settings.get("pe_temperatureH", 20) == settings.get("pe_temperatureW", 20),
         "transformers has one position temperature for x and y")
    need("position_embedding", settings.get("position_embedding", "sine") == "sine", "only sine embeddings convert")
    swin = SwinConfig(
        **_swin_arch(state),
        image_size=int(backbone.split("_")[-2]),  # the pre-training size in the name, e.g. swin_T_224_1k
        out_indices=[int(i) + 1 for i in settings.get("return_interm_indices", [1, 2, 3])],
    )
    heads = int(settings["nheads"])
    ffn = int(settings["dim_feedforward"])
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=text_config,
        d_model=int(settings["hidden_dim"]),
        encoder_layers=int(settings["enc_layers"]),
        decoder_layers=int(settings["dec_layers"]),
        encoder_ffn_dim=ffn,  # the text enhancer and the fusion layer use half of it, as the original
        decoder_ffn_dim=ffn,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_n_points=int(settings["enc_n_points"]),
        decoder_n_points=int(settings["dec_n_points"]),
        num_queries=int(settings["num_queries"]),
        num_feature_levels=int(settings["num_feature_levels"]),
        query_dim=int(settings.get("query_dim", 4)),
        two_stage=settings.get("two_stage_type", "standard") == "standard",
        embedding_init_target=bool(settings.get("embed_init_tgt", True)),
        decoder_bbox_embed_share=bool(settings.get("dec_pred_bbox_embed_share", True)),
        two_stage_bbox_embed_share=bool(settings.get("two_stage_bbox_embed_share", False)),
        positional_embedding_temperature=settings.get("pe_temperatureH", 20),
        activation_function=str(settings.get("transformer_activation", "relu")),
        dropout=float(settings.get("dropout", 0.0)),
        text_enhancer_dropout=float(settings.get("text_dropout", 0.0)),
        fusion_dropout=float(settings.get("fusion_dropout", 0.0)),
        fusion_droppath=float(settings.get("fusion_droppath", 0.1)),
        max_text_len=256,  # the original model fixes 256 whatever its config says
    )


def convert_model(state: dict, settings: dict, text_config):
    """A transformers GroundingDinoForObjectDetection (eval mode) holding the original weights; every
    parameter of it must come from the checkpoint (or the load fails naming what is missing)."""
    from transformers import GroundingDinoForObjectDetection

    config = transformers_config(settings, state, text_config)
    model = GroundingDinoForObjectDetection(config).eval()
    converted = convert_state_dict(state)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not _UNUSED.fullmatch(k)]
    if missing or unexpected:
        raise ValueError(f"GroundingDINO -> transformers: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    return model


def to_transformers(
    weights: Path,
    out_dir: Path,
    config: Path | str | None = None,
    text_encoder: str | None = None,
    image_size: int = 800,
    max_size: int = 1333,
    trust_checkpoint: bool = False,
) -> Path:
    """Convert an original GroundingDINO checkpoint (a `.pth`, or a directory with one `.pth` and one
    config `.py` as `tiny:sa-groundingdino`) into a transformers directory: the model and a
    GroundingDinoProcessor (the official pre-processing at `image_size` / `max_size`, the text
    encoder's tokenizer). `config` and `text_encoder` as backend `groundingdino`'s options of those
    names (default: the config beside the weights or named by the weights' file; the config's
    `text_encoder_type`, e.g. bert-base-uncased from the HF cache)."""
    from transformers import AutoConfig, AutoTokenizer, GroundingDinoImageProcessorPil, GroundingDinoProcessor

    from grand.config import DetectorSpec
    from grand.models.gdino_original import _OriginalGroundingDino
    from grand.models.original_packages import find_file, load_weights

    weights = find_file(Path(weights), (".pth", ".pt"), "GroundingDINO weights")
    config_path = _OriginalGroundingDino._config_path(weights, str(config) if config else None, None)
    settings = read_config(config_path)
    encoder = text_encoder or str(settings["text_encoder_type"])
    beside = config_path.parent / encoder
    encoder = str(beside) if beside.is_dir() else encoder
    spec = DetectorSpec(name="groundingdino-convert", backend="groundingdino", queries="tags", checkpoint=str(weights))
    state = load_weights(weights, spec, trust_checkpoint)
    state = state.get("model", state)
    try:
        text_config, tokenizer = AutoConfig.from_pretrained(encoder), AutoTokenizer.from_pretrained(encoder)
    except OSError as err:
        raise ValueError(f"text encoder '{encoder}' (the config's text_encoder_type) cannot be loaded: {err}. "
                         "Download it once (huggingface-cli download bert-base-uncased) or pass a local "
                         "directory as text_encoder") from err
    model = convert_model(state, settings, text_config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": int(image_size), "longest_edge": int(max_size)})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir
