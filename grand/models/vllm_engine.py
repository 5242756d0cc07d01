"""vLLM's offline engine as grand's vLLM adapters start it (grand.models.vllm_vlm for LLaVA captions,
grand.models.vllm_llm for the level-3/4 text LLM): options, one engine per process and settings,
CPU environment, sampling parameters.

Options every vLLM adapter knows (`spec.options`), defaults suited to CPU machines and tests:
    max_model_len           context length the engine reserves KV cache for (adapter default)
    kv_cache_gib            KV-cache size in GiB (vLLM's `kv_cache_memory_bytes`). Default 1.0 on CPU,
                            where it is the only memory vLLM reserves beyond the weights; on a GPU the
                            default is null: vLLM sizes the cache from gpu_memory_utilization
    gpu_memory_utilization  fraction of the GPU vLLM may use, weights and KV cache together (on CPU: of
                            RAM, when kv_cache_gib is null). Default null = derived from the actor's
                            share: 0.92 x resources.num_gpus (vLLM's own 0.92 for a whole GPU, the same
                            headroom kept inside each share), so that engines and other actors sharing
                            a GPU stay within their shares. An explicit value above num_gpus is refused
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
GPU memory accounting (docs/scale.md, "GPU memory"): check_gpu_share refuses impossible shares when
the config is read, and check_gpu_budget, when the engine starts, a share that cannot hold the weights
or that other actors on the GPU have taken. `dtype` comes from the spec on accelerators; on CPU the engine runs float32, as the transformers
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


# vLLM's default gpu_memory_utilization (CacheConfig) for an engine that has a GPU to itself; the rest
# is headroom for the CUDA context and fragmentation
WHOLE_GPU_UTILIZATION = 0.92


def check_gpu_share(spec: ModelSpec) -> None:
    """Refuse vLLM GPU settings that cannot work, naming the step (called when the config is read).

    resources.num_gpus is the actor's share of a GPU (or its whole GPUs); an explicit
    options.gpu_memory_utilization must stay within that share, and an engine on several GPUs
    (tensor_parallel_size) needs that many whole GPUs.
    """
    opts = spec.options or {}
    share = float(spec.resources.num_gpus)
    where = f"model '{spec.name}' (backend vllm)"
    util = opts.get("gpu_memory_utilization")
    if util is not None:
        if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
            raise ValueError(f"{where}: options.gpu_memory_utilization must be a fraction in (0, 1] or null, got {util!r}")
        if 0 < share < 1 and util > share:
            raise ValueError(
                f"{where}: options.gpu_memory_utilization {util} is more than its GPU share resources.num_gpus "
                f"{share}: the engine would take memory the other actors on that GPU need (Ray's shares schedule "
                f"actors, they do not cap memory). Set it to at most {share}, or null to derive "
                f"{derived_utilization(share)} from the share"
            )
    tp = opts.get("tensor_parallel_size", 1)
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"{where}: options.tensor_parallel_size must be a whole number >= 1, got {tp!r}")
    if share > 1 or tp > 1:
        if share != tp:
            raise ValueError(
                f"{where}: resources.num_gpus {share} and options.tensor_parallel_size {tp} disagree: an engine "
                f"spread over several GPUs needs them whole; set both to the number of GPUs (or both to 1)"
            )


def derived_utilization(share: float) -> float:
    """gpu_memory_utilization for an actor holding `share` of a GPU (share >= 1: whole GPUs)."""
    return WHOLE_GPU_UTILIZATION if share >= 1 else round(WHOLE_GPU_UTILIZATION * share, 4)


def engine_memory(spec: ModelSpec, opts: dict, device: str) -> tuple[float | None, float | None]:
    """(gpu_memory_utilization, kv_cache_gib) to pass to vLLM: null means vLLM's own sizing. On a GPU
    the utilization follows the actor's share unless set, and the KV cache fills the rest of it
    unless spec.options sets kv_cache_gib; on CPU both are taken as given (kv_cache_gib default 1.0)."""
    util = opts["gpu_memory_utilization"]
    kv = opts["kv_cache_gib"]
    if device == "cpu":
        return util, kv
    if util is None:
        util = derived_utilization(float(spec.resources.num_gpus)) if spec.resources.num_gpus > 0 else None
    if "kv_cache_gib" not in (spec.options or {}):
        kv = None
    return util, kv


def check_gpu_budget(
    spec: ModelSpec, utilization: float, total_bytes: int, free_bytes: int, weight_bytes: int | None
) -> None:
    """Refuse to start an engine whose budget (utilization x the GPU's memory) cannot work, naming
    the step: smaller than its weights, or more than what the other actors on the GPU left free."""
    gib = 2**30
    budget = utilization * total_bytes
    share = spec.resources.num_gpus
    where = f"model '{spec.name}' (backend vllm, resources.num_gpus {share})"
    if weight_bytes is not None and weight_bytes >= budget:
        raise RuntimeError(
            f"{where}: its weights ({weight_bytes / gib:.1f} GiB) do not fit in its GPU budget of {budget / gib:.1f} "
            f"GiB (gpu_memory_utilization {utilization} of this {total_bytes / gib:.0f} GiB GPU), let alone a KV "
            f"cache. Raise this step's resources.num_gpus and lower other steps' shares on the GPU (docs/scale.md, "
            f"'GPU memory')"
        )
    if free_bytes < budget:
        raise RuntimeError(
            f"{where}: the engine needs {budget / gib:.1f} GiB (gpu_memory_utilization {utilization} of this "
            f"{total_bytes / gib:.0f} GiB GPU) but only {free_bytes / gib:.1f} GiB are free: the other actors on "
            f"this GPU use more than their shares. Lower their batch_size or give them larger num_gpus shares "
            f"(docs/scale.md, 'GPU memory')"
        )


def checkpoint_bytes(model: str) -> int | None:
    """Size of a local checkpoint's weight files (None for a hub id: unknown before download)."""
    path = Path(model)
    if not path.is_dir():
        return None
    files = [f for pattern in ("*.safetensors", "*.bin") for f in path.glob(pattern)]
    return sum(f.stat().st_size for f in files) or None


def _check_cuda_budget(spec: ModelSpec, model: str, utilization: float | None, device: str) -> None:
    import torch

    if utilization is None or not torch.cuda.is_available():
        return
    index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    check_gpu_budget(spec, utilization, total, free, checkpoint_bytes(model))


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
    utilization, kv_cache_gib = engine_memory(spec, opts, device)
    if kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(kv_cache_gib) * 2**30)
    if utilization is not None:
        kwargs["gpu_memory_utilization"] = float(utilization)
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

    if device != "cpu":
        _check_cuda_budget(spec, model, utilization, device)
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
