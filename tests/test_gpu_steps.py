"""benchmarks/gpu_steps.py: the GPU benchmark's own code, run on CPU with grand's tiny checkpoints
(`--tiny`), and its real-size configs checked against the published parameter counts (`--sizes`)."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_steps  # noqa: E402

STEPS_12 = ["clip", "rtdetr", "owlv2", "grounding_dino", "sam", "depth_anything", "clip_label", "blip2_regions",
            "blip2", "llava", "grounding_dino_phrases"]


@pytest.mark.slow
def test_tiny_run_prints_every_step_and_a_balance_and_the_sizes_are_the_published_ones(capsys):
    assert gpu_steps.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    for name in STEPS_12:  # one measured row per step of grand.yaml's levels 1-2
        assert re.search(rf"^step {name} +b1: [\d.]+ +b2: [\d.]+ +best batch +[12] +[\d.]+ images/s", out, re.M), name
        assert re.search(rf"^  {name} +resources\.num_gpus: [\d.]+ +batch_size: [12] ", out, re.M), name
    assert re.search(r"^level-1 stack on one CPU, all 8 models at once: [\d.]+ images/s; slowest model alone", out, re.M)
    assert re.search(r"^vicuna tokens/s \(transformers, 8 new tokens\): batch of 4 [\d.]+, one at a time [\d.]+", out, re.M)
    assert "vllm vs transformers (llava captions): skipped: " in out  # no GPU here: said, not silently dropped
    assert re.search(r"^bottleneck: \w+ \(\d+% of the GPU time per image\)", out, re.M)
    shares = [float(x) for x in re.findall(r"resources\.num_gpus: ([\d.]+)", out)]
    assert len(shares) == len(STEPS_12) and 0.9 <= sum(shares) <= 1.1  # one GPU replica

    assert gpu_steps.main(["--sizes"]) == 0
    sizes = dict(re.findall(r"^size (\S+) +(\d+) M parameters", capsys.readouterr().out, re.M))
    assert set(sizes) == set(gpu_steps.PUBLISHED_PARAMS)
    for arch, published in gpu_steps.PUBLISHED_PARAMS.items():
        assert abs(int(sizes[arch]) * 1e6 / published - 1) < 0.02, arch  # configs match the real models
