"""Let the original GroundingDINO package (groundingdino-py 0.4.0) run its BERT text encoder on
transformers 5.

Why: GroundingDINO wraps transformers' `BertModel` in its own `BertModelWarper`, whose constructor
copies `get_extended_attention_mask`, `invert_attention_mask` and `get_head_mask` from the model and
whose forward passes `head_mask=` / `return_dict=` to `BertEncoder`. transformers 5 removed those
methods and arguments, so building any GroundingDINO model fails with
`'BertModel' object has no attribute 'get_extended_attention_mask'`.

What: `patch()` replaces `BertModelWarper` (in `bertwarper` and where `groundingdino.py` imported it)
with a class of the same submodules (`embeddings`, `encoder`, `pooler`: the checkpoints' keys
`bert.embeddings.*` load unchanged) whose forward computes what the original computes for inference:
the additive attention mask from GroundingDINO's 2-D padding or 3-D sub-sentence mask (as
transformers 4's `get_extended_attention_mask`), embeddings, the encoder layers, the pooler.
Idempotent; it does nothing where the original warper still works (transformers 4).
"""

from __future__ import annotations


def patch() -> None:
    from transformers import BertModel

    if hasattr(BertModel, "get_extended_attention_mask"):
        return  # transformers 4: the package's own warper works
    from groundingdino.models.GroundingDINO import bertwarper, groundingdino

    if getattr(bertwarper.BertModelWarper, "_grand_compat", False):
        return
    warper = _make_warper()
    bertwarper.BertModelWarper = warper
    groundingdino.BertModelWarper = warper


def _make_warper():
    import torch
    from torch import nn
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    class BertModelWarper(nn.Module):
        """GroundingDINO's BERT wrapper, inference path only (no cache, no cross-attention)."""

        _grand_compat = True

        def __init__(self, bert_model) -> None:
            super().__init__()
            self.config = bert_model.config
            self.embeddings = bert_model.embeddings
            self.encoder = bert_model.encoder
            self.pooler = bert_model.pooler

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **_unused):
            batch, length = input_ids.shape
            if attention_mask is None:
                attention_mask = torch.ones((batch, length), device=input_ids.device)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            embeddings = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)
            # [B, L] padding mask or [B, L, L] sub-sentence mask -> additive [B, 1, L|1, L]
            mask = attention_mask[:, None, :, :] if attention_mask.dim() == 3 else attention_mask[:, None, None, :]
            dtype = embeddings.dtype
            additive = (1.0 - mask.to(dtype)) * torch.finfo(dtype).min
            hidden = self.encoder(embeddings, attention_mask=additive).last_hidden_state
            pooled = self.pooler(hidden) if self.pooler is not None else None
            return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden, pooler_output=pooled)

    return BertModelWarper
