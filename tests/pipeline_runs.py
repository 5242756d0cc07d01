"""The end-to-end run shared by the pipeline test modules: levels 1-4 of pipelines/tiny.yaml over five
photos and one broken file, one image per shard (conftest's session fixture `combined` makes it
once; each run costs a minute and a half of actor start-up)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.dataset as pads
from PIL import Image

from conftest import ROOT, TINYCOCO

TINY = ROOT / "pipelines" / "tiny.yaml"
# greedy captions: runs of level 2 alone must reproduce the combined run's text (level 3-4 sampling
# is seeded per request, which vLLM keeps independent of the batch)
GREEDY = {"level2": {"captioners": [
    {"name": "blip2", "checkpoint": "tiny:blip2", "prompt_file": None, "batch_size": 4,
     "generation": {"max_new_tokens": 16, "temperature": 0.0}, "resources": {"num_cpus": 0.1}},
    {"name": "llava", "checkpoint": "tiny:llava", "landmark": True, "batch_size": 4,
     "generation": {"max_new_tokens": 16, "temperature": 0.0}, "resources": {"num_cpus": 0.1}},
]}}

# levels 3-4 with the tiny random Llama: tiny.yaml's SmolLM2 is a real model (a slower engine start
# and real decoding, minutes for this run); tests that need its behaviour use tests/test_smollm2.py
FAST_LLM = {"level3": {
    "llm": {"name": "llama", "backend": "vllm", "checkpoint": "tiny:llama", "batch_size": 8,
            "generation": {"max_new_tokens": 24, "temperature": 0.7, "top_p": 0.95, "seed": 0},
            "options": {"max_model_len": 2048, "kv_cache_gib": 0.5}, "resources": {"num_cpus": 0.1}},
    "verification": {"max_attempts": 2},  # random text never passes: keep the run short
}}


def rows(out: Path, level: int) -> list[dict]:
    """Every row of one level of an output folder, by image id."""
    found = pads.dataset(str(out / f"level{level}"), format="parquet").to_table().to_pylist()
    return sorted(found, key=lambda r: r["image_id"])


def make_images(folder: Path) -> dict[str, str]:
    """Five photos (tinycoco when present, else generated) and one broken file: image_id -> status.
    img1.jpg carries EXIF orientation 6 (its raw pixels are not upright) and img4.jpg is tiny
    (40 x 30, under the exports' 32 px minimum side): what trips the exports' clients."""
    folder.mkdir(parents=True)
    expected = {}
    sources = sorted((TINYCOCO / "images").glob("*.jpg"))[:5] if TINYCOCO.is_dir() else []
    for k in range(5):
        name = f"img{k}.jpg"
        if sources:
            shutil.copyfile(sources[k], folder / name)
        else:
            Image.effect_mandelbrot((320 + 40 * k, 240), (-2, -1.2, 1, 1.2), 60 + k).convert("RGB").save(folder / name)
        if k in (1, 4):
            with Image.open(folder / name) as im:
                im = im.convert("RGB")
            exif = Image.Exif()
            if k == 1:
                exif[0x0112] = 6  # "rotate 90° clockwise to view"
            else:
                im = im.resize((40, 30))
            im.save(folder / name, quality=95, exif=exif.tobytes())
        expected[name] = "ok"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    expected["broken.jpg"] = "error"
    return expected


def copy_levels(src: Path, dst: Path, levels: tuple[int, ...]) -> Path:
    """An output folder holding src's plan and only `levels`' shards, as a run of just those levels
    leaves it (the manifest is rebuilt from the files by the next run)."""
    for lv in levels:
        shutil.copytree(src / f"level{lv}", dst / f"level{lv}")
    shutil.copytree(src / "_grand", dst / "_grand", ignore=shutil.ignore_patterns("tmp"))
    return dst
