"""Fix two faults in the text side of transformers' GroundingDINO (found by the parity test against the
authors' groundingdino package on the same weights; tests/test_models_original.py).

1. Position ids. GroundingDINO reads a caption "cat . red car ." as sub-sentences, each closed by a delimiter
('.', '?'; [CLS] and [SEP] stand alone): BERT attends only within a sub-sentence and counts position
ids from 0 at its first token up to its delimiter (`generate_masks_with_special_tokens_and_transfer_map`
in the package's `bertwarper.py`: "cat" 0, "." 1; "red" 0, "car" 1, "." 2). transformers 5.19's
vectorised rewrite of that function takes the previous delimiter *including the token itself*, so
every delimiter gets position id 0 instead of its offset. The attention mask is right; the delimiters'
BERT embeddings, and through attention every token's text feature, are not what the model was trained
with: on the same converted weights BERT's output differed from the original's by up to 1.9.
Fix: the function is replaced by one that takes the previous delimiter strictly before each token, as
the original loop does (equal to the original's masks and ids on random id batches, with padding).

2. Text position embeddings. The encoder layers add sine embeddings of those (integer) position ids to
the text features in the text enhancer's attention; transformers 5.19's
`encode_sinusoidal_position_embedding` returns its result in the dtype of its input, so integer ids
give sin / cos values truncated to integers (all 0 but cos 0 = 1), where the original computes them in
float. Fix: `get_text_position_embeddings` passes the ids in the text features' float dtype.

With both fixed the converted model's logits and boxes agree with the original's to float rounding
(the numbers are in docs/install.md). `patch()` probes the installed functions and changes only what
still shows the fault (a transformers release that fixes them upstream is left alone).
"""

from __future__ import annotations

import importlib


def _masks_and_position_ids(input_ids):
    """(attention mask (B, N, N) bool, position ids (B, N) long) of the authors' implementation."""
    import torch

    batch, n = input_ids.shape
    device = input_ids.device
    special = torch.isin(input_ids, torch.tensor([101, 102, 1012, 1029], device=device))  # [CLS] [SEP] . ?
    index = torch.arange(n, device=device).expand(batch, n)
    # first delimiter at or after each token: the end of its sub-sentence
    after = torch.where(special, index, torch.full_like(index, n))
    next_special = torch.flip(torch.cummin(torch.flip(after, [1]), 1).values, [1])
    # last delimiter strictly before each token: the sub-sentence starts after it
    before = torch.where(special, index, torch.full_like(index, -1))
    prev_special = torch.cat([torch.full_like(index[:, :1], -1), torch.cummax(before, 1).values[:, :-1]], 1)
    # [CLS] at 0 and a delimiter in the last slot stand alone; tokens after the last delimiter too
    in_block = (next_special > 0) & (next_special < n - 1)
    mask = (next_special[:, :, None] == next_special[:, None, :]) & in_block[:, :, None] & in_block[:, None, :]
    mask |= torch.eye(n, dtype=torch.bool, device=device)
    position_ids = torch.where(in_block, index - prev_special - 1, torch.zeros_like(index))
    return mask, position_ids.to(torch.long)


def _is_faulty(function) -> bool:
    import torch

    ids = torch.tensor([[101, 2000, 1012, 2001, 2002, 1012, 102]])  # [CLS] a . b c . [SEP]
    _, position_ids = function(ids)
    return position_ids.tolist() != [[0, 0, 1, 0, 1, 2, 0]]


def _truncates_integers(encode) -> bool:
    import torch

    return not encode(torch.tensor([[[1]]]), num_pos_feats=4).is_floating_point()


def _float_ids(get_text_position_embeddings):
    def fixed(self, text_features, text_position_embedding, text_position_ids):
        if text_position_ids is not None and not text_position_ids.is_floating_point():
            text_position_ids = text_position_ids.to(text_features.dtype)
        return get_text_position_embeddings(self, text_features, text_position_embedding, text_position_ids)

    fixed._grand_fixed = True
    return fixed


_MODULES = {"grounding_dino": "GroundingDinoEncoderLayer", "mm_grounding_dino": "MMGroundingDinoEncoderLayer"}


def patch() -> list[str]:
    """Apply what is still needed; returns the fixes in place (now or before), e.g.
    ['grounding_dino.position_ids', 'grounding_dino.position_embeddings', ...]."""
    fixed = []
    for name, layer_class in _MODULES.items():
        try:
            module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        except ImportError:
            continue
        masks = getattr(module, "generate_masks_with_special_tokens_and_transfer_map", None)
        if masks is _masks_and_position_ids or (masks is not None and _is_faulty(masks)):
            module.generate_masks_with_special_tokens_and_transfer_map = _masks_and_position_ids
            fixed.append(f"{name}.position_ids")
        layer = getattr(module, layer_class, None)
        encode = getattr(module, "encode_sinusoidal_position_embedding", None)
        if layer is None or encode is None or not hasattr(layer, "get_text_position_embeddings"):
            continue
        if getattr(layer.get_text_position_embeddings, "_grand_fixed", False) or _truncates_integers(encode):
            if not getattr(layer.get_text_position_embeddings, "_grand_fixed", False):
                layer.get_text_position_embeddings = _float_ids(layer.get_text_position_embeddings)
            fixed.append(f"{name}.position_embeddings")
    return fixed
