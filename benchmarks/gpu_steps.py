"""Per-step GPU cost of pipelines/grand.yaml at real model sizes, with random weights (no download).

    python benchmarks/gpu_steps.py                 # on a GPU node: every step, real sizes (80 GB+ GPU)
    python benchmarks/gpu_steps.py --steps sam,llava --batch-sizes 1,8,32
    python benchmarks/gpu_steps.py --tiny          # the same code on CPU with grand's tiny checkpoints (the test)

Each model of grand.yaml is built at its published size (CLIP ViT-L/14, RT-DETR-R50, OWLv2-B/16,
GroundingDINO-B, SAM ViT-H, Depth Anything V2-L, BLIP-2 OPT-2.7B, LLaVA-1.5-7B, Vicuna-13B): the
tokenizer and processor files of grand's tiny checkpoint of the same architecture (built offline,
grand.models.tiny) with the published hyper-parameters written over its config (REAL_SIZE below).
Weights are random, initialised on the device from that config in place of `from_pretrained`; a
random model costs what the real one does as long as the work is the same, so generation runs a
fixed number of tokens (min_new_tokens = max_new_tokens) and greedy decoding (the same per-token cost
as sampling; random weights can give probabilities sampling refuses).

Every step runs grand's own adapter (grand/models/*) with grand.yaml's spec on synthetic SA-1B-sized
images (1500 x 2250) and realistic counts: 20 tags for the open-vocabulary detectors, 75 boxes for
SAM, --regions object crops for the BLIP-2 region descriptions and the CLIP label choice, 3 LLaVA
questions per image (caption and the two landmark questions), 10 phrases for phrase grounding. SAM's
row includes encoding its masks to RLEs on the CPU, as the segment step does.

Printed: one row per step (images/s at each batch size, the best batch size, peak GPU memory), the
whole level-1 stack running at once on the GPU against its slowest model alone, Vicuna-13B tokens/s
batched against one request at a time, transformers against vLLM for the LLaVA captions (vLLM steps
are skipped with a message without vllm or a GPU), and a recommended grand.yaml balance for one GPU
replica of levels 1-2 (docs/scale.md explains how to use it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grand.config import _deep_merge, load_config  # noqa: E402
from grand.core.rle import encode_masks  # noqa: E402

# Published hyper-parameters, written over the tiny checkpoint's files (deep-merged per file). The
# tokenizers stay the tiny ones: the vocabulary sizes below are the real ones (the embedding and
# output layers cost what they do), the tiny tokenizer simply uses fewer of the ids.
REAL_SIZE: dict[str, dict[str, dict]] = {
    "clip": {  # openai/clip-vit-large-patch14
        "config.json": {
            "projection_dim": 768,
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                            "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                              "num_hidden_layers": 24, "image_size": 224, "patch_size": 14, "projection_dim": 768},
        },
        "processor_config.json": {"image_processor": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}},
    },
    "rt-detr": {  # PekingU/rtdetr_r50vd_coco_o365
        "config.json": {
            "backbone_config": {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "layer_type": "bottleneck",
                                "embedding_size": 64},
            "d_model": 256, "encoder_hidden_dim": 256, "encoder_in_channels": [512, 1024, 2048],
            "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "encoder_layers": 1, "decoder_layers": 6,
            "num_queries": 300, "num_feature_levels": 3,
        },
        "preprocessor_config.json": {"size": {"height": 640, "width": 640}},
    },
    "owlv2": {  # google/owlv2-base-patch16-ensemble
        "config.json": {
            "projection_dim": 512,
            "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                            "num_hidden_layers": 12, "vocab_size": 49408},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                              "num_hidden_layers": 12, "image_size": 960, "patch_size": 16},
        },
        "processor_config.json": {"image_processor": {"size": {"height": 960, "width": 960}}},
    },
    "grounding-dino": {  # IDEA-Research/grounding-dino-base: Swin-B backbone, BERT-base text encoder
        "config.json": {
            "backbone_config": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                                "window_size": 12, "image_size": 384, "hidden_size": 1024},
            "d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_ffn_dim": 2048,
            "decoder_ffn_dim": 2048, "num_queries": 900, "num_feature_levels": 4,
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                            "num_hidden_layers": 12, "vocab_size": 30522},
        },
        "processor_config.json": {"image_processor": {"size": {"shortest_edge": 800, "longest_edge": 1333}}},
    },
    "sam": {  # facebook/sam-vit-huge
        "config.json": {
            "vision_config": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                              "global_attn_indexes": [7, 15, 23, 31], "mlp_dim": 5120, "image_size": 1024,
                              "patch_size": 16, "output_channels": 256, "window_size": 14},
            "prompt_encoder_config": {"hidden_size": 256, "image_size": 1024, "patch_size": 16},
            "mask_decoder_config": {"hidden_size": 256, "mlp_dim": 2048, "num_attention_heads": 8, "num_hidden_layers": 2},
        },
        "processor_config.json": {"image_processor": {"size": {"longest_edge": 1024}, "pad_size": {"height": 1024, "width": 1024}}},
    },
    "depth-anything": {  # depth-anything/Depth-Anything-V2-Large-hf: DINOv2-L backbone
        "config.json": {
            "backbone_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                "mlp_ratio": 4, "image_size": 518, "patch_size": 14,
                                "stage_names": ["stem"] + [f"stage{i}" for i in range(1, 25)],
                                "out_features": ["stage5", "stage12", "stage18", "stage24"], "out_indices": [5, 12, 18, 24]},
            "reassemble_hidden_size": 1024, "reassemble_factors": [4, 2, 1, 0.5],
            "neck_hidden_sizes": [256, 512, 1024, 1024], "fusion_hidden_size": 256, "head_hidden_size": 32,
        },
        "preprocessor_config.json": {"size": {"height": 518, "width": 518}},
    },
    "blip2": {  # Salesforce/blip2-opt-2.7b
        "config.json": {
            "num_query_tokens": 32,
            "vision_config": {"hidden_size": 1408, "intermediate_size": 6144, "num_attention_heads": 16,
                              "num_hidden_layers": 39, "image_size": 224, "patch_size": 14},
            "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                               "num_hidden_layers": 12, "encoder_hidden_size": 1408, "cross_attention_frequency": 2},
            "text_config": {"hidden_size": 2560, "ffn_dim": 10240, "num_attention_heads": 32, "num_hidden_layers": 32,
                            "vocab_size": 50272, "word_embed_proj_dim": 2560, "max_position_embeddings": 2048},
        },
        "processor_config.json": {"num_query_tokens": 32, "image_processor": {"size": {"height": 224, "width": 224}}},
    },
    "llava": {  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B
        "config.json": {
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                              "num_hidden_layers": 24, "image_size": 336, "patch_size": 14, "projection_dim": 768},
            "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                            "num_key_value_heads": 32, "head_dim": 128, "num_hidden_layers": 32,
                            "vocab_size": 32064, "max_position_embeddings": 4096},
        },
        "processor_config.json": {"patch_size": 14, "image_processor": {"size": {"shortest_edge": 336},
                                                                         "crop_size": {"height": 336, "width": 336}}},
    },
    "llama": {  # lmsys/vicuna-13b-v1.5
        "config.json": {"hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
                        "num_key_value_heads": 40, "head_dim": 128, "num_hidden_layers": 40, "vocab_size": 32000,
                        "max_position_embeddings": 4096},
    },
}

# Parameter counts of the published checkpoints (their model cards), which the REAL_SIZE configs must
# reproduce (`--sizes` checks it without a GPU: the models are built on the meta device).
PUBLISHED_PARAMS = {"clip": 428e6, "rt-detr": 42e6, "owlv2": 155e6, "grounding-dino": 233e6, "sam": 641e6,
                    "depth-anything": 335e6, "blip2": 3.74e9, "llava": 7.06e9, "llama": 13.0e9}
# the transformers class each architecture's adapter loads
MODEL_CLASSES = {"clip": "AutoModel", "rt-detr": "AutoModelForObjectDetection", "owlv2": "AutoModelForZeroShotObjectDetection",
                 "grounding-dino": "AutoModelForZeroShotObjectDetection", "sam": "SamModel",
                 "depth-anything": "AutoModelForDepthEstimation", "blip2": "AutoModelForImageTextToText",
                 "llava": "AutoModelForImageTextToText", "llama": "AutoModelForCausalLM"}

TAGS = ("person car dog tree building window chair table cup bottle sky road grass sign bicycle "
        "bus boat bird bench lamp").split()  # 20 tags for the open-vocabulary detectors
PHRASES = ["a man", "the red car", "a tall tree", "the old building", "a small dog", "the window",
           "a wooden bench", "the blue sky", "a street lamp", "the road"]


@dataclass
class Step:
    """One model step of grand.yaml: its spec name, tiny architecture, level, and how one image's
    work is handed to the adapter (`run(adapter, images)`)."""

    name: str
    arch: str
    level: int
    run: object
    result: dict = field(default_factory=dict)


def build_random(model_cls, config, **kwargs):
    """A transformers model of `config` with freshly initialised weights (Auto classes and concrete
    classes name the constructor differently)."""
    return (getattr(model_cls, "from_config", None) or model_cls._from_config)(config, **kwargs)


def checkpoint_dir(arch: str, tiny: bool, root: Path) -> Path:
    """A directory the adapters load: the tiny checkpoint's config, tokenizer and processor files,
    with REAL_SIZE written over them unless `tiny`. Weight files are left out (random weights)."""
    from grand.models.tiny import ensure_tiny

    src, dst = ensure_tiny(arch), root / arch
    if dst.exists():
        return dst
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin"):
            shutil.copy(f, dst / f.name)
    for name, overrides in ({} if tiny else REAL_SIZE.get(arch, {})).items():
        path = dst / name
        path.write_text(json.dumps(_deep_merge(json.loads(path.read_text()), overrides), indent=1))
    return dst


@contextlib.contextmanager
def random_weights():
    """Adapters build their model from the checkpoint's config with random weights, on the device,
    instead of `from_pretrained` (no weights are written or read); everything else is theirs."""
    import torch
    from transformers import AutoConfig

    from grand.models import (hf_closed_set, hf_depth, hf_label_choice, hf_llm, hf_open_vocab,
                              hf_phrase_grounding, hf_segmenter, hf_tagger, hf_vlm)
    from grand.models.loading import resolve_checkpoint, set_threads, torch_device, torch_dtype

    def load(spec, base_dir, model_cls, processor_cls, **processor_kwargs):
        set_threads(spec)
        device = torch_device(spec)
        dtype = torch_dtype(spec, device)
        checkpoint = resolve_checkpoint(spec, base_dir)
        processor = processor_cls.from_pretrained(checkpoint, **processor_kwargs)
        config = AutoConfig.from_pretrained(checkpoint)
        torch.manual_seed(0)
        with torch.device(device):
            model = build_random(model_cls, config, dtype=dtype)
        return model.to(device).eval(), processor, device, dtype

    modules = [hf_closed_set, hf_depth, hf_label_choice, hf_llm, hf_open_vocab, hf_phrase_grounding,
               hf_segmenter, hf_tagger, hf_vlm]
    saved = [m.load_pretrained for m in modules]
    for m in modules:
        m.load_pretrained = load
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.load_pretrained = original


def real_size_params(root: Path) -> dict[str, int]:
    """Parameters of each real-size architecture, built on the meta device (no memory, no GPU)."""
    import torch
    import transformers
    from transformers import AutoConfig

    out = {}
    for arch, cls_name in MODEL_CLASSES.items():
        cls = getattr(transformers, cls_name)
        config = AutoConfig.from_pretrained(checkpoint_dir(arch, False, root))
        with torch.device("meta"):
            model = build_random(cls, config)
        out[arch] = sum(p.numel() for p in model.parameters())
    return out


def synthetic_images(n: int, height: int, width: int, seed: int = 0):
    """Smooth random RGB images (noise upsampled), so that JPEG-like content reaches the processors."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (max(2, height // 50), max(2, width // 50), 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    return out


def object_boxes(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(0.05), np.log(0.5), (n, 2))) * [width, height]
    xy = rng.uniform(0, 1, (n, 2)) * ([width, height] - side)
    return np.c_[xy, xy + side].astype(np.float32)


def crops_of(image, n: int):
    """n object crops of an image (objects >= 2% of it, as blip2_regions' min_area_fraction)."""
    return [image.crop(tuple(int(v) for v in b)) for b in object_boxes(n, image.height, image.width, seed=n)]


def llava_questions() -> list[str]:
    """grand.yaml's three LLaVA prompts of an image: the caption and the two landmark questions."""
    from grand.core.landmark import LANDMARK_CATEGORIES, LandmarkQuestions
    from grand.prompts import load_prompt

    landmark = LandmarkQuestions(ROOT / "pipelines")
    caption = load_prompt("prompts/short_caption.txt", ROOT)
    return [caption, landmark.first_question(), landmark.second_question(next(iter(LANDMARK_CATEGORIES)))]


def make_steps(args) -> list[Step]:
    boxes = object_boxes(args.boxes, args.height, args.width)
    from grand.prompts import load_prompt

    region_prompt = load_prompt("prompts/region_description.txt", ROOT)  # blip2_regions' prompt_file
    regions, questions = args.regions, llava_questions()
    return [
        Step("clip", "clip", 1, lambda m, ims: m.tag(ims)),
        Step("rtdetr", "rt-detr", 1, lambda m, ims: m.detect(ims)),
        Step("owlv2", "owlv2", 1, lambda m, ims: m.detect(ims, [TAGS] * len(ims))),
        Step("grounding_dino", "grounding-dino", 1, lambda m, ims: m.detect(ims, [TAGS] * len(ims))),
        # SAM's step also encodes the masks on the actor's CPU (SegmentStep): part of its cost
        Step("sam", "sam", 1, lambda m, ims: [encode_masks(x) for x in m.segment(ims, [boxes] * len(ims))]),
        Step("depth_anything", "depth-anything", 1, lambda m, ims: m.estimate(ims)),
        Step("clip_label", "clip", 1, lambda m, ims: m.score_labels(
            [c for im in ims for c in crops_of(im, regions)], [["dog", "cat", "person"]] * (regions * len(ims)))),
        Step("blip2_regions", "blip2", 1, lambda m, ims: m.generate(
            [c for im in ims for c in crops_of(im, regions)], [region_prompt] * (regions * len(ims)))),
        Step("blip2", "blip2", 2, lambda m, ims: m.generate(ims, [""] * len(ims))),
        Step("llava", "llava", 2, lambda m, ims: m.generate(
            [im for im in ims for _ in questions], questions * len(ims))),
        Step("grounding_dino_phrases", "grounding-dino", 2, lambda m, ims: m.ground(ims, [PHRASES] * len(ims))),
    ]


def bench_spec(spec, checkpoint: Path, tiny: bool, **changes):
    """grand.yaml's spec for the benchmark: the built checkpoint, greedy fixed-length generation."""
    update = {"checkpoint": str(checkpoint), **changes}
    if tiny:
        update["device"] = "cpu"
    if hasattr(spec, "generation"):
        gen = spec.generation.model_copy(update={"temperature": 0.0, **({"max_new_tokens": min(spec.generation.max_new_tokens, 8)} if tiny else {})})
        update["generation"] = gen
    return spec.model_copy(update=update)


def fixed_length(adapter, spec) -> None:
    """Generate exactly max_new_tokens per answer (random weights would stop at random)."""
    kwargs = getattr(adapter, "generate_kwargs", None)
    if kwargs is not None and hasattr(spec, "generation"):
        kwargs["min_new_tokens"] = spec.generation.max_new_tokens


class GpuMemory:
    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()

    def reset(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def total_gib(self) -> float | None:
        return self.torch.cuda.get_device_properties(0).total_memory / 2**30 if self.cuda else None


def is_oom(err: Exception) -> bool:
    return "out of memory" in str(err).lower()


def measure(step: Step, adapter, images, batch_sizes, repeats: int, memory: GpuMemory) -> dict:
    """images/s at each batch size (after one warm-up batch), the best one, and peak GPU memory."""
    rates: dict[int, float] = {}
    peak = 0.0
    for bs in batch_sizes:
        batch = [images[i % len(images)] for i in range(bs)]
        try:
            step.run(adapter, batch)  # warm-up: kernels, caches
            memory.reset()
            start = time.perf_counter()
            for _ in range(repeats):
                step.run(adapter, batch)
            if memory.cuda:
                memory.torch.cuda.synchronize()
            rates[bs] = bs * repeats / (time.perf_counter() - start)
            peak = max(peak, memory.peak_gib() or 0.0)
        except Exception as err:  # noqa: BLE001 - an out-of-memory batch size ends the sweep
            if not is_oom(err):
                raise
            print(f"  {step.name}: batch {bs} does not fit in GPU memory; larger ones skipped", flush=True)
            gc.collect()
            memory.torch.cuda.empty_cache()
            break
    if not rates:
        raise RuntimeError(f"step {step.name}: not even batch {batch_sizes[0]} fits on this GPU")
    best = max(rates, key=rates.get)
    return {"rates": rates, "best_batch": best, "images_per_s": rates[best], "peak_gib": peak if memory.cuda else None}


def run_stack(steps: list[Step], adapters: dict, images, seconds: float) -> float:
    """Images/s of the level-1 stack with every model on the GPU at once (one thread per step at its
    best batch size): the rate of the step that completed the fewest images."""
    done = {s.name: 0 for s in steps}
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(step: Step):
        bs = step.result["best_batch"]
        batch = [images[i % len(images)] for i in range(bs)]
        try:
            while not stop.is_set():
                step.run(adapters[step.name], batch)
                done[step.name] += bs
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            stop.set()

    threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in steps]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"the level-1 stack failed: {errors[0]}") from errors[0]
    return min(done.values()) / (time.perf_counter() - start)


def vicuna_tokens(adapter, spec, batch: int, prompt_chars: int) -> tuple[float, float]:
    """Generated tokens/s of the level-3 LLM for `batch` requests at once and one at a time. The
    prompt is level 3's dense-caption prompt (prompts/dense_caption.txt, cut to prompt_chars)."""
    from grand.prompts import load_prompt

    text = load_prompt("prompts/dense_caption.txt", ROOT)[:prompt_chars]
    conversations = [[{"role": "user", "content": f"{text}\n(image {i})"}] for i in range(batch)]
    new = spec.generation.max_new_tokens
    adapter.chat(conversations[:1])  # warm-up
    start = time.perf_counter()
    adapter.chat(conversations)
    batched = batch * new / (time.perf_counter() - start)
    singles = max(1, batch // 4)
    start = time.perf_counter()
    for c in conversations[:singles]:
        adapter.chat([c])
    single = singles * new / (time.perf_counter() - start)
    return batched, single


def vllm_available() -> str | None:
    """None when vLLM can run here, else why not."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install vllm on the GPU node)"
    if not torch.cuda.is_available():
        return "no GPU: the vLLM comparison is for GPUs"
    return None


def vllm_llava_rate(spec, checkpoint: Path, images, batch: int) -> float:
    """LLaVA captions (3 questions per image) through grand's vLLM adapter, dummy (random) weights."""
    from vllm import SamplingParams

    from grand.models.vllm_vlm import VllmVisionLanguageModel

    on_gpu = spec.device != "cpu"
    # on the GPU the engine takes 0.9 of it (the transformers models are gone by now); on CPU (a check
    # of this code only) a small KV cache
    options = {"kv_cache_gib": None, "enforce_eager": False} if on_gpu else {"kv_cache_gib": 0.25, "max_model_len": 1024}
    vspec = spec.model_copy(update={
        "backend": "vllm", "checkpoint": str(checkpoint),
        "options": {**options, "engine_args": {"load_format": "dummy"}},  # random weights, nothing read
        "resources": spec.resources.model_copy(update={"num_gpus": 0.9 if on_gpu else 0}),
    })
    model = VllmVisionLanguageModel(vspec)
    n = spec.generation.max_new_tokens
    model.sampling_params = SamplingParams(n=1, temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True)
    questions = llava_questions()
    batch_images = [images[i % len(images)] for i in range(batch)]
    ims = [im for im in batch_images for _ in questions]
    model.generate(ims[:3], questions)  # warm-up
    start = time.perf_counter()
    model.generate(ims, questions * batch)
    rate = batch / (time.perf_counter() - start)
    model.close()
    return rate


def vllm_vicuna_tokens(spec, checkpoint: Path, batch: int, prompt_chars: int) -> tuple[float, float]:
    """vicuna_tokens through grand's vLLM adapter (grand.yaml's level-3 backend), dummy weights and
    fixed-length answers."""
    from vllm import SamplingParams

    from grand.models import vllm_llm

    on_gpu = spec.device != "cpu"
    options = {"kv_cache_gib": None, "enforce_eager": False} if on_gpu else {"kv_cache_gib": 0.25}
    vspec = spec.model_copy(update={
        "backend": "vllm", "checkpoint": str(checkpoint),
        "options": {**options, "max_model_len": 4096, "empty_retries": 0, "engine_args": {"load_format": "dummy"}},
        "resources": spec.resources.model_copy(update={"num_gpus": 0.9 if on_gpu else 0}),
    })
    n = spec.generation.max_new_tokens
    saved = vllm_llm.sampling_params
    vllm_llm.sampling_params = lambda gen, seed=None: SamplingParams(
        n=1, temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, seed=seed)
    try:
        llm = vllm_llm.VllmTextLLM(vspec, ROOT / "pipelines")
        try:
            return vicuna_tokens(llm, vspec, batch, prompt_chars)
        finally:
            llm.close()
    finally:
        vllm_llm.sampling_params = saved


def recommend(steps: list[Step], total_gib: float | None, device: str = "GPU") -> list[str]:
    """grand.yaml shares for one GPU replica of levels 1-2: each pool's share of the GPU in proportion
    to its GPU-seconds per image (docs/scale.md's balanced rule, all pools equally busy), raised where
    the step's peak memory needs more, and its best batch size."""
    cost = {s.name: 1.0 / s.result["images_per_s"] for s in steps}
    total = sum(cost.values())
    lines = [f"predicted levels 1-2 throughput on one {device}: {1 / total:.2f} images/s "
             f"({3600 / total:.0f} images per {device}-hour; the models' time only, no overlap assumed)"]
    shares = {}
    for s in steps:
        share = cost[s.name] / total
        if total_gib and s.result["peak_gib"]:
            share = max(share, s.result["peak_gib"] / total_gib)
        shares[s.name] = share
    if sum(shares.values()) > 1.0:
        lines.append(f"note: the steps' memory needs exceed one GPU (sum of shares {sum(shares.values()):.2f}); "
                     "split levels 1 and 2 over two GPUs or lower the largest batch sizes")
    norm = max(1.0, sum(shares.values()))
    for s in steps:
        lines.append(f"  {s.name:24s} resources.num_gpus: {max(0.01, round(shares[s.name] / norm, 2)):.2f}   "
                     f"batch_size: {s.result['best_batch']}   ({100 * cost[s.name] / total:.0f}% of the GPU time)")
    bottleneck = max(cost, key=cost.get)
    lines.append(f"bottleneck: {bottleneck} ({100 * cost[bottleneck] / total:.0f}% of the GPU time per image)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-step GPU cost of pipelines/grand.yaml at real sizes, random weights")
    parser.add_argument("--tiny", action="store_true", help="grand's tiny checkpoints on CPU, small images (the test)")
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "grand.yaml"))
    parser.add_argument("--steps", default="", help="comma-separated step names (default: all, and vicuna)")
    parser.add_argument("--batch-sizes", default="", help="batch sizes to try (default 1,4,16; --tiny 1,2)")
    parser.add_argument("--repeats", type=int, default=0, help="timed batches per batch size (default 3; --tiny 1)")
    parser.add_argument("--regions", type=int, default=10, help="object crops per image for region descriptions / label choice")
    parser.add_argument("--boxes", type=int, default=75, help="SAM box prompts per image")
    parser.add_argument("--stack-seconds", type=float, default=0, help="how long the whole level-1 stack runs (default 30; --tiny 2)")
    parser.add_argument("--no-vicuna", action="store_true", help="skip the level-3 LLM (26 GB in float16)")
    parser.add_argument("--sizes", action="store_true",
                        help="only check the real-size configs: parameters against the published models (no GPU)")
    args = parser.parse_args(argv)
    if args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            params = real_size_params(Path(tmp))
        for arch, n in params.items():
            print(f"size {arch:16s} {n / 1e6:9.0f} M parameters (published {PUBLISHED_PARAMS[arch] / 1e6:.0f} M)")
        return 0
    args.height, args.width = (150, 225) if args.tiny else (1500, 2250)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,4,16")).split(",")]
    repeats = args.repeats or (1 if args.tiny else 3)
    stack_seconds = args.stack_seconds or (2.0 if args.tiny else 30.0)

    import torch

    cfg = load_config(args.config)
    specs = {m.name: m for m in cfg.models()}
    steps = make_steps(args)
    wanted = set(filter(None, args.steps.split(",")))
    unknown = wanted - {s.name for s in steps} - {"vicuna"}
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join(s.name for s in steps)}, vicuna")
    steps = [s for s in steps if not wanted or s.name in wanted]
    memory = GpuMemory()
    device = "cpu" if args.tiny else ("cuda" if memory.cuda else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}"
          f"{f' ({memory.total_gib():.0f} GiB)' if device == 'cuda' else ''}; "
          f"{'tiny' if args.tiny else 'real-size'} models, random weights; images {args.height}x{args.width}", flush=True)
    if device == "cpu" and not args.tiny:
        print("warning: no GPU here; real-size models on CPU take very long (use --tiny to check the script)")

    from grand.models.registry import build_model

    work = Path(tempfile.mkdtemp(prefix="grand-gpu-steps-"))
    images = synthetic_images(4, args.height, args.width)
    adapters: dict = {}
    try:
        with random_weights():
            for step in steps:
                spec = bench_spec(specs[step.name], checkpoint_dir(step.arch, args.tiny, work), args.tiny)
                start = time.perf_counter()
                adapter = build_model(spec, ROOT / "pipelines")
                fixed_length(adapter, spec)
                built = time.perf_counter() - start
                params = sum(p.numel() for p in adapter.model.parameters()) / 1e6
                step.result = measure(step, adapter, images, batch_sizes, repeats, memory)
                adapters[step.name] = adapter
                rates = "  ".join(f"b{b}: {r:.2f}" for b, r in step.result["rates"].items())
                mem = f"{step.result['peak_gib']:.1f} GiB" if step.result["peak_gib"] is not None else "n/a (CPU)"
                print(f"step {step.name:24s} {rates:40s} best batch {step.result['best_batch']:3d}  "
                      f"{step.result['images_per_s']:8.2f} images/s  peak GPU memory {mem}  ({params:.1f} M parameters, "
                      f"built in {built:.0f} s)", flush=True)

            level1 = [s for s in steps if s.level == 1]
            if len(level1) > 1:
                stack = run_stack(level1, adapters, images, stack_seconds)
                slowest = min(level1, key=lambda s: s.result["images_per_s"])
                print(f"level-1 stack on one {'GPU' if device == 'cuda' else 'CPU'}, all {len(level1)} models at once: "
                      f"{stack:.2f} images/s; slowest model alone ({slowest.name}) {slowest.result['images_per_s']:.2f} "
                      f"images/s; ratio {stack / slowest.result['images_per_s']:.2f}", flush=True)

            reason = vllm_available()
            if "llava" in adapters:
                if reason:
                    print(f"vllm vs transformers (llava captions): skipped: {reason}")
                else:
                    llava = next(s for s in steps if s.name == "llava")
                    del adapters["llava"]
                    gc.collect()
                    torch.cuda.empty_cache()
                    rate = vllm_llava_rate(bench_spec(specs["llava"], checkpoint_dir("llava", False, work), False),
                                           work / "llava", images, max(batch_sizes))
                    print(f"vllm vs transformers (llava captions, batch {max(batch_sizes)}): vllm {rate:.2f} images/s, "
                          f"transformers {llava.result['images_per_s']:.2f} images/s, "
                          f"{rate / llava.result['images_per_s']:.1f}x")
            if "blip2_regions" in adapters:
                print("vllm vs transformers (blip2 regions): skipped: grand's vLLM adapter runs LLaVA only "
                      "(grand/models/vllm_vlm.py); BLIP-2 regions run on transformers")

            measured = [s for s in steps if s.result]
            for name in list(adapters):
                del adapters[name]
            gc.collect()
            if memory.cuda:
                torch.cuda.empty_cache()

            if not args.no_vicuna and (not wanted or "vicuna" in wanted):
                spec = bench_spec(specs["vicuna"], checkpoint_dir("llama", args.tiny, work), args.tiny,
                                  backend="transformers", options={"empty_retries": 0})
                if args.tiny:
                    spec = spec.model_copy(update={"generation": spec.generation.model_copy(update={"max_new_tokens": 8})})
                llm = build_model(spec, ROOT / "pipelines")
                fixed_length(llm, spec)
                batch = 4 if args.tiny else 16
                batched, single = vicuna_tokens(llm, spec, batch, prompt_chars=200 if args.tiny else 100_000)
                print(f"vicuna tokens/s (transformers, {spec.generation.max_new_tokens} new tokens): batch of {batch} "
                      f"{batched:.1f}, one at a time {single:.1f}, batching {batched / single:.1f}x", flush=True)
                del llm
                gc.collect()
                if reason:
                    print(f"vicuna on vllm: skipped: {reason}")
                else:
                    torch.cuda.empty_cache()
                    batched, single = vllm_vicuna_tokens(spec, work / "llama", batch, 100_000)
                    print(f"vicuna tokens/s (vllm, {spec.generation.max_new_tokens} new tokens): batch of {batch} "
                          f"{batched:.1f}, one at a time {single:.1f}, batching {batched / single:.1f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    level12 = [s for s in measured if s.level in (1, 2)]
    if level12:
        print("recommended grand.yaml balance for one GPU replica of levels 1-2 (docs/scale.md, 'Sizing the pools'):")
        for line in recommend(level12, memory.total_gib(), "GPU" if device == "cuda" else "CPU"):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
