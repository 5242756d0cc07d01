"""vLLM's offline engine as grand's vLLM adapters start it (grand.models.vllm_vlm for LLaVA captions,
grand.models.vllm_llm for the level-3/4 text LLM): options, one engine per process and settings,
CPU environment, sampling parameters.

Options every vLLM adapter knows (`spec.options`), defaults suited to CPU machines and tests:
    max_model_len           context length the engine reserves KV cache for (adapter default)
    kv_cache_gib            KV-cache size in GiB (default 1.0; vLLM's `kv_cache_memory_bytes`). On CPU
                            this is the only memory vLLM reserves beyond the weights. null: vLLM sizes
                            the cache from gpu_memory_utilization (the usual choice on GPUs)
    gpu_memory_utilization  fraction of the GPU (on CPU: of RAM) vLLM may use when kv_cache_gib is
                            null (default null = vLLM's default, 0.92). With several actors sharing a
                            GPU (resources.num_gpus 0.5), set it at or below that share
    enforce_eager           true (default): no torch.compile / CUDA graphs, so the engine starts in
                            seconds. false on GPUs for throughput
    max_num_seqs            most sequences the engine runs at once (default null = vLLM's default)
    tensor_parallel_size    GPUs per engine (default 1)
    cpu_threads_bind        CPU only, vLLM's VLLM_CPU_OMP_THREADS_BIND: "nobind" (default) leaves
                            threads unpinned and runs `threads` of them (OMP_NUM_THREADS), so that
                            several actors on a node do not all pin core 0 as vLLM's "auto" does;
                            or "auto" / a core list such as "0-3". The spec wins over the environment
    engine_args             dict of further keyword arguments for `vllm.LLM` (default {}); keys that run
                            checkpoint code or carry credentials (trust_remote_code, hf_token, token,
                            hf_overrides, *_api_key ...) are refused unless
    allow_unsafe_engine_args  is true (default false)
`dtype` comes from the spec on accelerators; on CPU the engine runs float32, as the transformers
adapters do. `spec.revision` is passed to vLLM for hub ids.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from grand.config import GenerationSpec, ModelSpec
from grand.models.loading import torch_device

ENGINE_OPTIONS: dict = {
    "max_model_len": 2048,
    "kv_cache_gib": 1.0,
    "gpu_memory_utilization": None,
    "enforce_eager": True,
    "max_num_seqs": None,
    "tensor_parallel_size": 1,
    "cpu_threads_bind": "nobind",
    "engine_args": {},
    "allow_unsafe_engine_args": False,
}

# one engine per (checkpoint, engine settings) in a process: adapters that differ only in their
# decoding settings share it (an engine holds the weights and its KV cache)
_ENGINES: dict[tuple, object] = {}

# vLLM logs its whole engine config and every start-up step at INFO from each actor, which buries the
# run's own progress lines; its warnings still show. VLLM_LOGGING_LEVEL=INFO brings the rest back.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def check_beams(spec: ModelSpec, gen: GenerationSpec) -> None:
    if gen.num_beams != 1:
        raise ValueError(
            f"model '{spec.name}': generation.num_beams={gen.num_beams} is not supported by the vllm "
            "backend (vLLM's beam search is a separate API); use num_beams: 1 or backend: transformers"
        )


def sampling_params(gen: GenerationSpec, seed: int | None = None):
    """vLLM SamplingParams for `gen`: temperature 0 is greedy, otherwise nucleus sampling with top_p
    (top-k off); `seed` (default generation.seed) makes each request reproducible in any batch."""
    from vllm import SamplingParams

    sampling = gen.temperature > 0
    return SamplingParams(
        n=1,
        temperature=gen.temperature if sampling else 0.0,
        top_p=gen.top_p if sampling else 1.0,  # top_k stays 0: off
        max_tokens=gen.max_new_tokens,
        seed=gen.seed if seed is None else seed,
        skip_special_tokens=True,
    )


# engine_args that run code from the checkpoint's repository or carry credentials: refused unless the
# config says so with `allow_unsafe_engine_args: true` (a config is often copied from elsewhere)
_UNSAFE_ENGINE_ARGS = frozenset({"trust_remote_code", "hf_token", "token", "hf_overrides"})


def checked_engine_args(spec: ModelSpec, opts: dict) -> dict:
    """`engine_args` of the options, refusing what needs `allow_unsafe_engine_args: true`."""
    from grand.redact import is_secret_key

    args = dict(opts.get("engine_args") or {})
    if opts.get("allow_unsafe_engine_args") is True:
        return args
    unsafe = sorted(k for k, v in args.items() if (k in _UNSAFE_ENGINE_ARGS or is_secret_key(k)) and v not in (None, False, ""))
    if unsafe:
        raise ValueError(
            f"model '{spec.name}': options.engine_args sets {', '.join(unsafe)}, which runs code from the "
            "checkpoint or carries a credential; remove it (give tokens through the environment, e.g. HF_TOKEN), "
            "or set options.allow_unsafe_engine_args: true if you mean it"
        )
    return args


def shared_engine(spec: ModelSpec, model: str, opts: dict, **extra_kwargs):
    """The `vllm.LLM` for `model` with the engine options `opts`, started once per process and
    settings (`extra_kwargs` are further `vllm.LLM` arguments of the adapter, e.g. limit_mm_per_prompt)."""
    device = torch_device(spec)
    kwargs: dict = dict(
        model=model,
        revision=None if Path(model).exists() else spec.revision,
        dtype="float32" if device == "cpu" else spec.dtype,  # as the transformers adapters
        seed=0,  # every request carries its own seed (generation.seed); the engine's is fixed
        enforce_eager=bool(opts["enforce_eager"]),
        tensor_parallel_size=int(opts["tensor_parallel_size"]),
        **extra_kwargs,
    )
    if opts["max_model_len"] is not None:
        kwargs["max_model_len"] = int(opts["max_model_len"])
    if opts["kv_cache_gib"] is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(opts["kv_cache_gib"]) * 2**30)
    if opts["gpu_memory_utilization"] is not None:
        kwargs["gpu_memory_utilization"] = float(opts["gpu_memory_utilization"])
    if opts["max_num_seqs"] is not None:
        kwargs["max_num_seqs"] = int(opts["max_num_seqs"])
    if device == "cpu":
        # vLLM 0.32 on CPU crashes the engine ("CPU Generator does not use offset") when a prompt's
        # prefill is split over steps while requests carry their own seed, which ours always do:
        # long prompts in a full batch did it. Whole prefills avoid the split.
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(checked_engine_args(spec, opts))
    env: dict[str, str] = {}
    if device == "cpu":
        # the engine's processes read these when they start
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(opts["cpu_threads_bind"])
        if opts["cpu_threads_bind"] == "nobind":
            env["OMP_NUM_THREADS"] = str(spec.threads)
    key = (device, json.dumps([kwargs, env], sort_keys=True, default=str))
    if key in _ENGINES:
        return _ENGINES[key]
    from vllm import LLM

    try:
        with environ(env):
            llm = LLM(**kwargs)
    except Exception as err:  # noqa: BLE001 - name the model; vLLM's own message follows
        raise RuntimeError(f"model '{spec.name}': vLLM could not start an engine for '{spec.checkpoint}': {err}") from err
    _ENGINES[key] = llm
    return llm


def close_engine(llm) -> None:
    """Stop an engine (and its processes) now rather than at interpreter exit. Adapters that share
    it cannot generate afterwards."""
    for key, engine in list(_ENGINES.items()):
        if engine is llm:
            del _ENGINES[key]
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """Set environment variables while the engine starts (its processes inherit them), then put the
    previous values back. The spec wins over the environment (Ray sets OMP_NUM_THREADS in actors)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
