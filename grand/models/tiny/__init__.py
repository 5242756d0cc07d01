"""Tiny random-weight checkpoints of every architecture grand runs, built offline from small configs.

They exercise the real loading, pre-processing and post-processing code of each adapter; their
predictions are random. `grand models make-tiny DIR` writes all of them; `checkpoint: tiny:<arch>`
builds one on first use under $GRAND_CACHE/tiny/<fingerprint of the builders>/<arch>.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

from grand.models.loading import default_cache_dir

# arch -> "module:function"; the function takes an output directory and writes a checkpoint there
# (a directory that `from_pretrained` / AutoProcessor can load).
TINY_ARCHS: dict[str, str] = {
    "grounding-dino": "grand.models.tiny.text_models:build_grounding_dino",
    "owlv2": "grand.models.tiny.text_models:build_owlv2",
    "rt-detr": "grand.models.tiny.vision_models:build_rt_detr",
    "clip": "grand.models.tiny.text_models:build_clip",
    "sam": "grand.models.tiny.vision_models:build_sam",
    "depth-anything": "grand.models.tiny.vision_models:build_depth_anything",
    "siglip": "grand.models.tiny.text_models:build_siglip",
    "blip2": "grand.models.tiny.vlm_models:build_blip2",
    "llava": "grand.models.tiny.vlm_models:build_llava",
    "llama": "grand.models.tiny.llm_models:build_llama",
    # the original packages' own models (backends segment-anything, segment-anything-hq, groundingdino,
    # detectron2); built only where that package is installed (TINY_BACKENDS)
    "sa-sam": "grand.models.tiny.original_models:build_sa_sam",
    "sa-sam-hq": "grand.models.tiny.original_models:build_sa_sam_hq",
    "sa-groundingdino": "grand.models.tiny.original_models:build_groundingdino",
    "d2-mask-rcnn": "grand.models.tiny.original_models:build_detectron2",
}
# tiny architecture -> the backend whose package builds (and runs) it
TINY_BACKENDS: dict[str, str] = {
    "sa-sam": "segment-anything",
    "sa-sam-hq": "segment-anything-hq",
    "sa-groundingdino": "groundingdino",
    "d2-mask-rcnn": "detectron2",
}

_DONE_MARKER = ".grand-tiny-complete"


def build_tiny(arch: str, out_dir: Path) -> Path:
    """Build one tiny checkpoint into out_dir (atomically: a half-built dir is never visible)."""
    if arch not in TINY_ARCHS:
        raise KeyError(f"unknown tiny architecture '{arch}'; known: {', '.join(sorted(TINY_ARCHS))}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars for kilobyte-sized models are noise
    if arch in TINY_BACKENDS:
        from grand.models.original_packages import ORIGINAL_PACKAGES, is_installed

        if not is_installed(TINY_BACKENDS[arch]):
            package = ORIGINAL_PACKAGES[TINY_BACKENDS[arch]]
            raise ModuleNotFoundError(
                f"tiny:{arch} is built by the '{package.module}' package, which is not installed: {package.install}"
            )
    module, func = TINY_ARCHS[arch].split(":")
    builder = getattr(importlib.import_module(module), func)
    return build_atomically(Path(out_dir), builder, _DONE_MARKER)


def build_atomically(out_dir: Path, builder, done_marker: str) -> Path:
    """Run `builder(tmp_dir)` in a temporary sibling of out_dir, mark it complete with `done_marker`,
    then rename it to out_dir: readers see a whole checkpoint or none (also grand.models.packaged)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        builder(tmp)
        (tmp / done_marker).write_text(out_dir.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def builder_fingerprint() -> str:
    """Changes whenever the builders or what they read change, so that a cache never serves a
    checkpoint made by older code (its predictions and its architecture may differ)."""
    import hashlib

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    repo = here.parents[2]
    # what builders read: the concept vocabulary (tokenizers), the Vicuna template (tiny:llama)
    sources = sorted(here.glob("*.py")) + [
        repo / "pipelines" / "vocab" / "concepts.txt",
        repo / "prompts" / "vicuna_chat_template.jinja",
    ]
    for path in sources:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_tiny(arch: str, cache_dir: Path | None = None) -> Path:
    """Path of the cached tiny checkpoint for `arch`, building it first if needed."""
    out = Path(cache_dir or default_cache_dir()) / "tiny" / builder_fingerprint() / arch
    if (out / _DONE_MARKER).exists():
        return out
    try:
        return build_tiny(arch, out)
    except OSError:
        # another process finished the same build first (concurrent actors): use theirs
        if (out / _DONE_MARKER).exists():
            return out
        raise
