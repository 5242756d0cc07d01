"""Tiny random-weight text LLM (Llama, the architecture of the reference's Vicuna-13B v1.5), built offline.

`build_llama` writes a directory that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`, vLLM's
offline engine and `vllm serve` all load: weights, config, generation config and the byte-level BPE
tokenizer of the tiny VLMs (grand.models.tiny.vlm_models) with the Vicuna v1.1 chat template of
prompts/vicuna_chat_template.jinja, so that the tokenizer's own template and the template file
render the same prompt. Its text is random but deterministic (torch is seeded).
"""

from __future__ import annotations

from pathlib import Path

from grand.models.tiny.vlm_models import build_vlm_tokenizer, tiny_llama_config

_SEED = 0
VICUNA_TEMPLATE_FILE = Path(__file__).resolve().parents[3] / "prompts" / "vicuna_chat_template.jinja"


def build_llama(out_dir: Path) -> None:
    """Llama with 2 layers of width 128 and 2 attention heads of size 64 (vLLM's CPU kernels reject
    smaller heads); 4096 positions as Vicuna v1.5, so the LLM adapters' default max_model_len fits."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(_SEED)
    tokenizer = build_vlm_tokenizer(chat_template=VICUNA_TEMPLATE_FILE.read_text(encoding="utf-8"))
    config = LlamaConfig(**tiny_llama_config(tokenizer, max_positions=4096))
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
