"""vLLM backend for vision-language models (grand.models.vllm_vlm) on the tiny LLaVA, and the
torchvision shim that makes vLLM importable on our CPU installs (grand.compat.torchvision_cpu).

Engine tests are slow (an engine start takes 10-40 s on 2 CPUs); they share one in-process engine
(adapters that differ only in decoding share it). A vLLM engine inside Ray Data actors runs in the
pipeline tests (pipelines/tiny.yaml's level-3 LLM, tests/test_pipeline_level34.py).
Random weights write random text, so the checks are about plumbing, as in test_models_vlm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from grand.config import AttributeSpec, CaptionerSpec, DetectorSpec, GenerationSpec
from grand.models.registry import build_model
from grand.models.tiny import ensure_tiny
from sample_images import odd_images

# importing vllm hits torch.jit.script_method (vllm.utils.deep_gemm): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

PROMPTS = ["Describe the image.", "What is this?", "", "Give a short description of this region in a few words.", "Where?"]
# small engine for tests: short context, small KV cache
OPTIONS = {"max_model_len": 512, "kv_cache_gib": 0.25}


def _spec(cls=CaptionerSpec, **kwargs):
    generation = GenerationSpec(**{"max_new_tokens": 6, "temperature": 0.0, **kwargs.pop("generation", {})})
    kwargs.setdefault("options", OPTIONS)
    kwargs.setdefault("backend", "vllm")
    return cls(name="llava_vllm", checkpoint="tiny:llava", generation=generation, **kwargs)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    panorama = np.random.default_rng(1).integers(0, 256, (200, 1000, 3), dtype=np.uint8)
    return [*odd_images(), Image.fromarray(panorama)]  # 640x480, 37x211, grayscale, RGBA, 5:1 panorama


# ---------------------------------------------------------------------------------------------
# no engine


def test_vllm_backend_only_for_vision_language_models():
    spec = DetectorSpec(name="det", backend="vllm", checkpoint="tiny:rt-detr")
    with pytest.raises(ValueError, match=r"model 'det': backend 'vllm' runs only vision-language models.*DetectorSpec"):
        build_model(spec)


def test_adapter_errors_come_before_any_engine_starts(tmp_path):
    with pytest.raises(ValueError, match="unknown options max_len"):
        build_model(_spec(options={"max_len": 5}))
    with pytest.raises(ValueError, match="num_beams=3 is not supported by the vllm backend"):
        build_model(_spec(generation={"num_beams": 3}))
    for unsafe in ({"trust_remote_code": True}, {"hf_token": "hf_abc"}):
        with pytest.raises(ValueError, match=f"engine_args sets {next(iter(unsafe))}.*allow_unsafe_engine_args"):
            build_model(_spec(options={"engine_args": unsafe}))
    blip2 = CaptionerSpec(name="cap", backend="vllm", checkpoint="tiny:blip2")
    with pytest.raises(ValueError, match=r"model 'cap'.*'blip-2' model.*'llava'"):
        build_model(blip2)
    missing = CaptionerSpec(name="cap", backend="vllm", checkpoint=str(tmp_path / "nothing-here"))
    with pytest.raises(Exception, match="model 'cap' could not load checkpoint"):
        build_model(missing)


def test_unsafe_engine_args_only_when_the_config_says_so():
    from grand.models.vllm_engine import checked_engine_args

    spec = _spec()
    args = {"trust_remote_code": True, "max_num_batched_tokens": 4096}
    assert checked_engine_args(spec, {"engine_args": args, "allow_unsafe_engine_args": True}) == args
    assert checked_engine_args(spec, {"engine_args": {"trust_remote_code": False}}) == {"trust_remote_code": False}
    with pytest.raises(ValueError, match="trust_remote_code"):
        checked_engine_args(spec, {"engine_args": args})


def test_transformers_llava_checkpoint_is_converted_once_for_vllm(tmp_path, monkeypatch):
    from safetensors import safe_open
    from transformers import AutoConfig

    from grand.models.vllm_vlm import vllm_checkpoint

    monkeypatch.setenv("GRAND_CACHE", str(tmp_path))
    src = ensure_tiny("llava")
    config = AutoConfig.from_pretrained(src)
    out = vllm_checkpoint(str(src), config)
    assert out != str(src) and out.startswith(str(tmp_path / "vllm"))

    with safe_open(str(src / "model.safetensors"), "pt") as before, safe_open(f"{out}/model.safetensors", "pt") as after:
        renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k: k
                   for k in before.keys()}
        assert set(after.keys()) == set(renamed)
        assert any(k.startswith("vision_tower.vision_model.encoder.") for k in after.keys())
        assert all(after.get_tensor(new).equal(before.get_tensor(old)) for new, old in renamed.items())
    for name in ("config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / out / name).read_bytes() == (src / name).read_bytes()

    mtime = os.stat(f"{out}/model.safetensors").st_mtime_ns
    assert vllm_checkpoint(str(src), config) == out  # cached: not converted again
    assert os.stat(f"{out}/model.safetensors").st_mtime_ns == mtime
    assert vllm_checkpoint(out, config) == out  # already in vLLM's names
    assert vllm_checkpoint("llava-hf/llava-1.5-7b-hf", config) == "llava-hf/llava-1.5-7b-hf"  # hub ids as they are


def test_reference_nms_matches_the_definition():
    import torch

    from grand.compat.torchvision_cpu import nms_reference

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=gen) * 30], 1)
    scores = torch.rand(300, generator=gen).round(decimals=1)  # many ties: stable order matters
    keep = nms_reference(boxes, scores, 0.3)

    def iou(a, b):
        w = (min(a[2], b[2]) - max(a[0], b[0])).clamp(min=0)
        h = (min(a[3], b[3]) - max(a[1], b[1])).clamp(min=0)
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    expected = []
    for i in sorted(range(300), key=lambda i: -float(scores[i])):  # Python's sort is stable
        if all(iou(boxes[i], boxes[j]) <= 0.3 for j in expected):
            expected.append(i)
    assert keep.dtype == torch.long and keep.tolist() == expected
    assert nms_reference(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_torchvision_imports_and_runs_nms_in_a_fresh_interpreter():
    """The .pth that `make install` writes makes the hook active in every new process of the venv;
    where torchvision's compiled ops load, the hook leaves torchvision alone."""
    pytest.importorskip("torchvision")
    code = (
        "import torch, torchvision, torchvision.ops as ops\n"
        "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)\n"
        "s = torch.tensor([0.9, 0.8, 0.7])\n"
        "print(ops.nms(b, s, 0.5).tolist(), ops.batched_nms(b, s, torch.tensor([0, 1, 0]), 0.5).tolist())\n"
        "from transformers import CLIPImageProcessor\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "[0, 2] [0, 1, 2]"


# ---------------------------------------------------------------------------------------------
# one in-process engine


@pytest.fixture(scope="module")
def ipc_dir(tmp_path_factory):
    """vLLM's engine sockets (VLLM_RPC_BASE_PATH), which stay behind when an engine is killed: not in /tmp."""
    return str(tmp_path_factory.mktemp("vllm-ipc"))


@pytest.fixture(scope="module")
def greedy(ipc_dir):
    pytest.importorskip("vllm")
    saved = dict(os.environ)
    os.environ["VLLM_RPC_BASE_PATH"] = ipc_dir
    model = build_model(_spec(batch_size=2))
    # vLLM sets variables for its own processes (LD_PRELOAD, OMP settings, ...); the engine's
    # processes have started, so later tests (and Ray workers started by them) get the old ones back
    os.environ.clear()
    os.environ.update(saved)
    yield model
    model.close()


@pytest.mark.slow
def test_one_stripped_answer_per_image_of_any_size(greedy, images):
    from grand.models.base import VisionLanguageModel

    assert isinstance(greedy, VisionLanguageModel)
    answers = greedy.generate(images, PROMPTS)
    assert len(answers) == len(images)
    assert all(isinstance(a, str) and a == a.strip() for a in answers)
    assert any(answers), "a random model should write something within 6 tokens"
    assert greedy.generate([], []) == []
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        greedy.generate(images[:2], ["x"])


@pytest.mark.slow
def test_greedy_answers_repeat_and_do_not_depend_on_the_batch(greedy, images):
    batch = greedy.generate(images, PROMPTS)
    assert greedy.generate(images, PROMPTS) == batch
    assert [greedy.generate([im], [p])[0] for im, p in zip(images, PROMPTS)] == batch
    assert greedy.generate(images[::-1], PROMPTS[::-1]) == batch[::-1]


@pytest.mark.slow
def test_same_prompt_format_and_answers_as_the_transformers_adapter(greedy, images):
    """The converted weights are the same model: greedy answers equal the transformers adapter's
    (here all of them; one may differ where other CPU kernels round a near-tie the other way)."""
    assert greedy.format_prompt("Describe the image.") == "USER: <image>\nDescribe the image. ASSISTANT:"
    hf = build_model(_spec(backend="transformers", options={}, batch_size=8))
    assert hf.format_prompt("What is this?") == greedy.format_prompt("What is this?")
    same = [a == b for a, b in zip(greedy.generate(images, PROMPTS), hf.generate(images, PROMPTS))]
    assert sum(same) >= len(images) - 1, same


@pytest.mark.slow
def test_max_new_tokens_bounds_the_answer(greedy, images, monkeypatch):
    short = build_model(_spec(generation={"max_new_tokens": 3}))
    assert short.llm is greedy.llm  # decoding settings differ, the engine is shared
    outputs = []
    generate = short.llm.generate

    def recording_generate(*args, **kwargs):  # the real generate, observed
        outputs.extend(generate(*args, **kwargs))
        return outputs

    monkeypatch.setattr(short.llm, "generate", recording_generate)
    answers = short.generate(images, PROMPTS)
    monkeypatch.undo()
    assert len(outputs) == len(images)
    assert all(len(o.outputs[0].token_ids) <= 3 for o in outputs)
    assert answers == [o.outputs[0].text.strip() for o in outputs]

    one = build_model(_spec(generation={"max_new_tokens": 1})).generate(images, PROMPTS)
    tokenizer = greedy.llm.get_tokenizer()
    single_tokens = {tokenizer.decode([i], skip_special_tokens=True).strip() for i in range(len(tokenizer))}
    assert set(one) <= single_tokens


@pytest.mark.slow
def test_sampling_is_seeded_per_request(greedy, images):
    sampling = {"temperature": 1.0, "top_p": 0.9, "seed": 7, "max_new_tokens": 8}
    model = build_model(_spec(generation=sampling))
    first = model.generate(images, PROMPTS)
    assert build_model(_spec(generation=sampling)).generate(images, PROMPTS) == first
    # each request carries the seed: the same image and prompt get the same text in any batch
    assert model.generate(images[::-1], PROMPTS[::-1]) == first[::-1]
    assert model.generate(images[1:2], PROMPTS[1:2]) == first[1:2]
    other_seed = build_model(_spec(generation={**sampling, "seed": 8}))
    assert other_seed.generate(images, PROMPTS) != first, "sampling must actually sample"


@pytest.mark.slow
def test_attribute_spec_runs_on_vllm(greedy, images):
    model = build_model(_spec(AttributeSpec, generation={"max_new_tokens": 6}))
    crops = [im.crop((0, 0, max(1, im.width // 2), max(1, im.height // 2))) for im in images]
    answers = model.generate(crops, ["Give a short description of this region in a few words."] * len(crops))
    assert len(answers) == len(crops) and all(isinstance(a, str) for a in answers)
