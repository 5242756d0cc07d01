"""vLLM engines sharing a GPU: gpu_memory_utilization follows the actor's num_gpus share, and shares
that cannot work are refused naming the step (when the config is read, or when the engine starts)."""

from pathlib import Path

import pytest
import yaml

from grand.config import CaptionerSpec, ConfigError, parse_config
from grand.models.vllm_engine import ENGINE_OPTIONS, check_gpu_budget, derived_utilization, engine_memory

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _grand_with_vllm_llava(options=None, resources=None) -> dict:
    """pipelines/grand.yaml with its LLaVA captioner on vLLM, `options` / `resources` merged in."""
    data = yaml.safe_load((ROOT / "pipelines" / "grand.yaml").read_text())
    captioner = data["level2"]["captioners"][1]
    assert captioner["name"] == "llava"
    captioner["backend"] = "vllm"
    captioner.setdefault("options", {}).update(options or {})
    captioner.setdefault("resources", {}).update(resources or {})
    return data


def test_grand_yaml_vllm_llava_derives_its_share():
    cfg = parse_config(_grand_with_vllm_llava(), "grand.yaml")
    spec = cfg.level2.captioners[1]
    assert spec.resources.num_gpus == 0.15
    util, kv = engine_memory(spec, {**ENGINE_OPTIONS, **spec.options}, "cuda")
    assert util == pytest.approx(0.92 * 0.15) and util <= spec.resources.num_gpus
    assert kv is None  # on a GPU the KV cache fills the share unless kv_cache_gib is set


def test_utilization_above_the_share_is_refused_naming_the_step():
    data = _grand_with_vllm_llava(options={"gpu_memory_utilization": 0.9})
    with pytest.raises(ConfigError) as err:
        parse_config(data, "grand.yaml")
    msg = str(err.value)
    assert "level2.captioners[1]" in msg and "model 'llava'" in msg
    assert "gpu_memory_utilization 0.9 is more than its GPU share resources.num_gpus 0.15" in msg
    assert "at most 0.15" in msg  # says what to do


@pytest.mark.parametrize(
    "options, resources, expected",
    [
        ({"gpu_memory_utilization": 1.5}, {}, "must be a fraction in (0, 1]"),
        ({"gpu_memory_utilization": 0}, {}, "must be a fraction in (0, 1]"),
        ({"tensor_parallel_size": 2}, {"num_gpus": 0.5}, "num_gpus 0.5 and options.tensor_parallel_size 2 disagree"),
        ({}, {"num_gpus": 2}, "num_gpus 2.0 and options.tensor_parallel_size 1 disagree"),
        ({"tensor_parallel_size": 0}, {}, "tensor_parallel_size must be a whole number"),
    ],
)
def test_impossible_vllm_gpu_settings_are_refused_naming_the_step(options, resources, expected):
    data = _grand_with_vllm_llava(options=options, resources=resources)
    with pytest.raises(ConfigError) as err:
        parse_config(data, "grand.yaml")
    assert "level2.captioners[1]" in str(err.value) and "model 'llava'" in str(err.value)
    assert expected in str(err.value)


def test_possible_settings_pass_and_other_backends_are_not_checked():
    cfg = parse_config(_grand_with_vllm_llava(options={"gpu_memory_utilization": 0.15}), "grand.yaml")
    assert cfg.level2.captioners[1].options["gpu_memory_utilization"] == 0.15
    cfg = parse_config(_grand_with_vllm_llava(options={"tensor_parallel_size": 2}, resources={"num_gpus": 2}), "grand.yaml")
    assert cfg.level2.captioners[1].resources.num_gpus == 2
    data = _grand_with_vllm_llava(options={"gpu_memory_utilization": 0.9})
    data["level2"]["captioners"][1]["backend"] = "transformers"  # the option means nothing there
    assert parse_config(data, "grand.yaml").level2.captioners[1].backend == "transformers"


def test_engine_memory_on_cpu_and_whole_gpus():
    spec = CaptionerSpec(name="v", checkpoint="x", backend="vllm", resources={"num_gpus": 1})
    assert engine_memory(spec, dict(ENGINE_OPTIONS), "cuda") == (0.92, None)
    assert engine_memory(spec, dict(ENGINE_OPTIONS), "cpu") == (None, 1.0)  # CPU: as configured
    explicit = CaptionerSpec(name="v", checkpoint="x", backend="vllm", options={"kv_cache_gib": 4},
                             resources={"num_gpus": 0.5})
    assert engine_memory(explicit, {**ENGINE_OPTIONS, "kv_cache_gib": 4}, "cuda") == (0.46, 4)
    assert derived_utilization(0.25) == 0.23


def test_engine_budget_refuses_too_small_shares_and_taken_memory():
    spec = CaptionerSpec(name="llava", checkpoint="x", backend="vllm", resources={"num_gpus": 0.15})
    util = derived_utilization(0.15)  # 0.138 of 80 GiB = 11 GiB
    check_gpu_budget(spec, util, 80 * GIB, 80 * GIB, 7 * GIB)  # fits
    with pytest.raises(RuntimeError) as err:
        check_gpu_budget(spec, util, 80 * GIB, 80 * GIB, 14 * GIB)  # LLaVA-7B in float16
    assert "model 'llava'" in str(err.value) and "do not fit in its GPU budget of 11.0 GiB" in str(err.value)
    assert "Raise this step's resources.num_gpus" in str(err.value)
    with pytest.raises(RuntimeError) as err:
        check_gpu_budget(spec, util, 80 * GIB, 5 * GIB, None)  # the other actors took the memory
    assert "model 'llava'" in str(err.value) and "only 5.0 GiB are free" in str(err.value)
