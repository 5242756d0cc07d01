"""Conversations to prompts, shared by the text-LLM adapters (grand.models.vllm_llm, hf_llm, http_llm).

- `check_conversations`: the input contract of `TextLLM.chat` (roles, a final user turn, one seed
  per conversation), checked before any request is sent.
- `ChatFormatter`: one Jinja chat template rendered the way transformers' `apply_chat_template`
  renders it (same sandbox, same special-token variables), so that the offline engines, the HTTP
  `completions` API and a `vllm serve --chat-template` server all see the same text.
- `prompt_token_ids`: the prompt's token ids with exactly one BOS whether or not the template
  writes it (Llama-2-style templates start with `{{ bos_token }}`, FastChat's Vicuna relies on the
  tokenizer adding it).
- `chat_with_retries`: the request loop of the tokenizer-backed adapters: over-long prompts become
  LLMError without reaching the engine, and empty replies are asked again with derived seeds.

Template choice: the spec's `chat_template` file when set, else the tokenizer's own template, else
prompts/vicuna_chat_template.jinja (Vicuna v1.5, the reference LLM, ships without one).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from grand.config import GenerationSpec, LLMSpec
from grand.models.base import LLMError
from grand.prompts import prompt_path

VICUNA_TEMPLATE = "vicuna_chat_template.jinja"
ROLES = ("system", "user", "assistant")


def check_conversations(name: str, conversations: list[list[dict]], seeds: list[int] | None) -> None:
    """ValueError (naming the model and the conversation) for input no backend could answer: a
    caller's bug, raised before any request, unlike per-request failures (LLMError)."""
    if seeds is not None and len(seeds) != len(conversations):
        raise ValueError(f"llm '{name}': {len(conversations)} conversations but {len(seeds)} seeds")
    for i, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"llm '{name}': conversation {i} is empty")
        for message in conversation:
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(
                    f"llm '{name}': conversation {i} has a message that is not "
                    f"{{'role': system|user|assistant, 'content': str}}: {message!r:.200}"
                )
        if conversation[-1]["role"] != "user":
            raise ValueError(f"llm '{name}': conversation {i} ends with a '{conversation[-1]['role']}' turn, not a user turn")


def template_text(spec: LLMSpec, base_dir: Path | None, tokenizer_template: str | None = None) -> str:
    """The Jinja chat template for `spec`: its `chat_template` file (beside the config, then in
    grand's prompts/), else the tokenizer's own, else the Vicuna v1.1 template."""
    if spec.chat_template:
        return prompt_path(spec.chat_template, base_dir).read_text(encoding="utf-8")
    if tokenizer_template:
        return tokenizer_template
    return prompt_path(VICUNA_TEMPLATE).read_text(encoding="utf-8")


class ChatFormatter:
    """Renders conversations with one chat template, followed by the generation prompt.

    `special_tokens` are the template's variables (bos_token, eos_token, ...): a tokenizer's
    `special_tokens_map`, or chosen by hand where the tokenizer is on a server."""

    def __init__(self, template: str, special_tokens: dict[str, str]) -> None:
        self.template = template
        self.special_tokens = {k: v for k, v in special_tokens.items() if isinstance(v, str)}

    @classmethod
    def for_tokenizer(cls, spec: LLMSpec, tokenizer, base_dir: Path | None = None) -> "ChatFormatter":
        template = template_text(spec, base_dir, getattr(tokenizer, "chat_template", None))
        return cls(template, dict(tokenizer.special_tokens_map))

    def __call__(self, conversation: list[dict]) -> str:
        # transformers' own renderer: the same sandbox, filters and raise_exception as apply_chat_template
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[conversation], chat_template=self.template, add_generation_prompt=True, **self.special_tokens
        )
        return rendered[0]


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt with one BOS: the tokenizer adds it unless the template already
    wrote it (vLLM's chat API tokenizes without special tokens, its completions API with them)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def request_seeds(gen: GenerationSpec, seeds: list[int] | None, n: int) -> list[int]:
    return list(seeds) if seeds is not None else [gen.seed] * n


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of retry `attempt` (1, 2, ...) of a request first sent with `seed`: derived, so that a
    re-run repeats it, and hashed, so that it does not collide with the caller's own next seeds
    (seed + 1, ...). Fits vLLM's and torch's seed ranges."""
    if attempt == 0:
        return seed
    digest = hashlib.sha256(f"grand-retry:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# generate(token id lists, seeds) -> one reply text per prompt (raw, not stripped)
GenerateFn = Callable[[list[list[int]], list[int]], list[str]]


def chat_with_retries(
    name: str,
    prompts: list[list[int]],
    seeds: list[int],
    generate: GenerateFn,
    *,
    max_model_len: int,
    sampling: bool,
    empty_retries: int,
) -> list[str | LLMError]:
    """Run tokenized prompts through `generate`, batch by batch of what is still unanswered.

    A prompt of max_model_len tokens or more leaves no room for an answer: it becomes an LLMError
    and never reaches the engine (vLLM would reject the whole batch). An empty (or all-whitespace)
    reply is asked again with `retry_seed` up to `empty_retries` times when sampling; greedy
    decoding would repeat it, so it fails at once."""
    replies: list[str | LLMError | None] = [None] * len(prompts)
    pending = []
    for i, ids in enumerate(prompts):
        if len(ids) >= max_model_len:
            replies[i] = LLMError(
                f"llm '{name}': the prompt is {len(ids)} tokens, max_model_len {max_model_len} leaves no room for a reply",
                attempts=0,
            )
        else:
            pending.append(i)
    attempts = 1 + (empty_retries if sampling else 0)
    for attempt in range(attempts):
        if not pending:
            break
        texts = generate([prompts[i] for i in pending], [retry_seed(seeds[i], attempt) for i in pending])
        still_empty = []
        for i, text in zip(pending, texts):
            if text.strip():
                replies[i] = text.strip()
            else:
                still_empty.append(i)
        pending = still_empty
    for i in pending:
        why = "" if sampling else " (greedy decoding: a retry would repeat it)"
        replies[i] = LLMError(f"llm '{name}': empty reply after {attempts} attempts{why}", attempts=attempts)
    return replies  # type: ignore[return-value]


class TokenizedChat(ABC):
    """`TextLLM.chat` for the adapters that tokenize locally (vLLM's engine, transformers): the
    conversations are checked, formatted and tokenized here; `_generate(prompts, seeds)` (token ids
    and one seed each -> reply texts) is the adapter's own. Subclasses set `spec`, `tokenizer`,
    `format_prompt`, `max_model_len` and `empty_retries`."""

    spec: LLMSpec
    max_model_len: int
    empty_retries: int

    def chat(self, conversations: list[list[dict]], seeds: list[int] | None = None) -> list[str | LLMError]:
        check_conversations(self.spec.name, conversations, seeds)
        replies: list[str | LLMError | None] = [None] * len(conversations)
        prompts, index = [], []
        for i, conversation in enumerate(conversations):
            try:
                prompts.append(prompt_token_ids(self.tokenizer, self.format_prompt(conversation)))
                index.append(i)
            except Exception as err:  # noqa: BLE001 - a template's raise_exception: this request only
                replies[i] = LLMError(f"llm '{self.spec.name}': the chat template refused conversation {i}: {err}", 0)
        all_seeds = request_seeds(self.spec.generation, seeds, len(conversations))
        answers = chat_with_retries(
            self.spec.name,
            prompts,
            [all_seeds[i] for i in index],
            self._generate,
            max_model_len=self.max_model_len,
            sampling=self.spec.generation.temperature > 0,
            empty_retries=self.empty_retries,
        )
        for i, answer in zip(index, answers):
            replies[i] = answer
        return replies  # type: ignore[return-value]

    @abstractmethod
    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[str]:
        """Reply texts for token-id prompts, one seed each (the whole list in one engine call)."""
