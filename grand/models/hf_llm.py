"""The level-3/4 text LLM with transformers `generate` (`backend: transformers`): no vLLM needed, slow
for big models, handy for small ones and as the reference the vLLM backend is checked against.

Prompts are rendered and tokenized as the vLLM backend does (grand.models.chat: the spec's
`chat_template` file, else the tokenizer's own, else prompts/vicuna_chat_template.jinja; one BOS),
then run in left-padded batches of `batch_size`. Failures per request are LLMError, as in every
TextLLM: prompts that do not fit the context, empty replies after `empty_retries`, conversations
the template refuses.

Decoding (`spec.generation`): temperature 0 is greedy (with `num_beams` beams); otherwise nucleus
sampling with `top_p` (top-k off, as vLLM). Requests are grouped by seed and torch is seeded before
each batch, so a re-run with the same batches writes the same text (vLLM's per-request seeds do not
depend on the batch; here the other requests of a batch with the same seed matter).

Options (`spec.options`):
    max_model_len   context length (default null = the config's max_position_embeddings); a reply
                    stops where prompt + reply reach it
    empty_retries   new attempts for an empty reply when sampling (default 2)
"""

from __future__ import annotations

from pathlib import Path

from grand.config import LLMSpec
from grand.models.chat import ChatFormatter, TokenizedChat
from grand.models.loading import adapter_options, load_pretrained

DEFAULT_OPTIONS: dict = {"max_model_len": None, "empty_retries": 2}


class HFTextLLM(TokenizedChat):
    """Chat replies from a causal LM with transformers `generate`; see the module docstring."""

    def __init__(self, spec: LLMSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = adapter_options(spec, DEFAULT_OPTIONS)
        self.spec = spec
        self._torch = torch
        self.empty_retries = int(opts["empty_retries"])
        self.model, self.tokenizer, self.device, _ = load_pretrained(spec, base_dir, AutoModelForCausalLM, AutoTokenizer)
        self.format_prompt = ChatFormatter.for_tokenizer(spec, self.tokenizer, base_dir)
        config_len = getattr(self.model.config, "max_position_embeddings", None)
        self.max_model_len = int(opts["max_model_len"] or config_len or 4096)
        # pad with a real token where the tokenizer has none (Llama): masked out anyway
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        gen = spec.generation
        self.sampling = gen.temperature > 0
        self.generate_kwargs: dict = dict(num_beams=gen.num_beams, do_sample=self.sampling, pad_token_id=self.pad_token_id)
        if self.sampling:
            self.generate_kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=0)

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[str]:
        texts: list[str] = [""] * len(prompts)
        # one seed per batch: group requests by seed (greedy decoding ignores it: one group)
        groups: dict[int, list[int]] = {}
        for i, seed in enumerate(seeds):
            groups.setdefault(seed if self.sampling else 0, []).append(i)
        for seed, members in groups.items():
            for start in range(0, len(members), self.spec.batch_size):
                batch = members[start : start + self.spec.batch_size]
                for i, text in zip(batch, self._generate_batch([prompts[i] for i in batch], seed)):
                    texts[i] = text
        return texts

    def _generate_batch(self, prompts: list[list[int]], seed: int) -> list[str]:
        torch = self._torch
        width = max(len(p) for p in prompts)
        # left padding: a decoder-only LM continues each prompt where it ends
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        max_new_tokens = min(self.spec.generation.max_new_tokens, self.max_model_len - width)
        if self.sampling:
            torch.manual_seed(seed)
        with torch.inference_mode():
            ids = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **self.generate_kwargs
            )
        return self.tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)
