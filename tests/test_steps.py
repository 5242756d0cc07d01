"""The step layer without Ray: plan() lists the pipeline in order, every step isolates a failing image
into one error row naming the step (model, spaCy and CPU steps alike), a poison image seen by the
ledger becomes one error row saying it killed the worker, and co-location runs the same steps."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

from conftest import ROOT
from grand.config import DetectorSpec, PhraseSpec, VotingSpec, load_config
from grand.core.detections import Detections
from grand.runtime import batch as batch_mod
from grand.runtime.columns import Batch
from grand.runtime import level2_stages, stages
from grand.runtime.steps import ColocatedSteps, colocate, plan

TINY, GRAND = ROOT / "pipelines" / "tiny.yaml", ROOT / "pipelines" / "grand.yaml"

LEVEL1 = ["read:read_images", "decode", "tagger:clip", "detector:rtdetr", "detector:owlv2", "detector:grounding_dino",
          "vote", "segmenter:sam", "depth:depth_anything", "label_choice:clip_label", "attributes:{attributes}",
          "assemble_level1"]
LEVEL2 = ["captioner:blip2", "captioner:llava", "phrases", "phrase_grounder:grounding_dino_phrases", "segmenter:sam",
          "assemble_level2"]


def _names(cfg, levels) -> list[str]:
    return [s.role if s.role == s.name else f"{s.role}:{s.name}" for s in plan(cfg, levels)]


@pytest.mark.parametrize("config, attributes, llm", [(TINY, "llava_regions", "smollm2"), (GRAND, "blip2_regions", "vicuna")])
def test_plan_lists_the_steps_of_each_levels_value_in_order(config, attributes, llm):
    cfg = load_config(config)
    level1 = [n.format(attributes=attributes) for n in LEVEL1]
    assert _names(cfg, (1,)) == level1
    assert _names(cfg, (1, 2)) == level1 + LEVEL2
    assert _names(cfg, (2,)) == ["read:read_level1", "decode"] + LEVEL2
    assert _names(cfg, (1, 2, 3, 4)) == level1 + LEVEL2 + [
        "drop_images", "scene_graph", f"llm:{llm}", "caption_grounding", "assemble_level3",
        "assemble_level4"]
    assert _names(cfg, (3, 4)) == ["read:read_level2", "drop_images", "scene_graph", f"llm:{llm}", "caption_grounding",
                                   "assemble_level3", "assemble_level4"]
    assert _names(cfg, (4,)) == ["read:read_level2", "drop_images", f"llm:{llm}", "assemble_level4"]
    # the level-2 segmenter is level 1's model: it is no level-2 provenance
    assert [s.level for s in plan(cfg, (1, 2)) if s.role == "segmenter"] == [1, 2]
    assert [p["name"] for p in plan(cfg, (1, 2))[-1].kwargs["provenance_rows"]] == [
        "blip2", "llava", "grounding_dino_phrases"]


def test_colocate_gives_one_actor_per_level_with_its_steps_in_order():
    cfg = load_config(TINY)
    ops = colocate(plan(cfg, (1, 2, 3, 4)))
    actors = [s for s in ops if s.kind == "actor"]
    assert [s.level for s in actors] == [1, 2, 3]
    assert [m.name for m in actors[0].members] == ["clip", "rtdetr", "owlv2", "grounding_dino", "vote", "sam",
                                                   "depth_anything", "clip_label", "llava_regions"]
    assert [m.name for m in actors[2].members] == ["smollm2", "caption_grounding"]
    # every step of the plan still runs, once, in the same order
    flat = [m.name for s in ops for m in (s.members or (s,))]
    assert flat == [s.name for s in plan(cfg, (1, 2, 3, 4))]


def _png(width: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, 20), (20, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _batch(widths: list[int]) -> dict:
    n = len(widths)
    rows = {"image_id": [f"img{k}" for k in range(n)], "source": ["x"] * n, "shard": ["s0"] * n,
            "index": list(range(n)), "image": [_png(w) for w in widths], "sidecar": [""] * n,
            "status": ["ok"] * n, "error": [""] * n, "width": [0] * n, "height": [0] * n, "step_seconds": [{}] * n}
    return stages.DecodeStep(max_pixels=10**7)(rows)


class _Detector:
    """A fake detector that breaks on 33-pixel-wide images, as a real model breaks on one input."""

    def detect(self, images, queries):
        if any(im.width == 33 for im in images):
            raise RuntimeError("CUDA error: an illegal memory access")
        return [Detections.empty("fake") for _ in images]


def test_a_model_that_fails_on_one_image_makes_only_that_row_an_error(monkeypatch):
    monkeypatch.setattr(stages, "load_actor_model", lambda spec, base_dir: _Detector())
    step = stages.DetectStep(DetectorSpec(name="det", checkpoint="fake"))
    out = Batch(step(_batch([40, 33, 50])))
    assert out["status"] == ["ok", "error", "ok"]
    assert out["error"][1] == "detector 'det': RuntimeError: CUDA error: an illegal memory access"
    assert out["det__det"][0].model == "det"  # the others got their results
    # the CPU steps after it keep the error row and give it its error record
    out = Batch(stages.VoteStep([DetectorSpec(name="det", checkpoint="fake")], VotingSpec(min_models=1))(out))
    record = Batch(stages.AssembleLevel1([])(out))["record_l1"][1]
    assert (record["status"], record["error"]) == ("error", out["error"][1])


class _Extractor:
    def __init__(self, *args):
        pass

    def extract_many(self, texts):
        if any("\x00" in t for t in texts):
            raise ValueError("[E1041] expected a string")
        return [[] for _ in texts]


def test_the_phrase_step_isolates_a_bad_caption(monkeypatch):
    import grand.core.phrases

    monkeypatch.setattr(grand.core.phrases, "PhraseExtractor", _Extractor)
    batch = Batch(_batch([40, 41, 42]))
    batch["cap__blip2"] = ["a dog", "bad \x00 caption", "a cat"]
    out = Batch(level2_stages.PhraseStep(PhraseSpec(), ["blip2"])(batch))
    assert out["status"] == ["ok", "error", "ok"]
    assert out["error"][1] == "phrases: ValueError: [E1041] expected a string"
    assert out["phrases"][0] == {"blip2": []}


class _DictLedger:
    """The poison ledger's interface over a dict (in Ray it lives in the GCS key-value store)."""

    def __init__(self):
        self.data = {}

    def start(self, key):
        self.data[key] = self.data.get(key, 0) + 1
        return self.data[key] - 1

    def image_state(self, key):
        return self.data.get("img/" + key)

    def mark_image(self, key, state):
        self.data["img/" + key] = state

    def forget(self, key):
        self.data.pop(key, None)


def test_an_image_that_killed_the_worker_alone_becomes_one_error_row(monkeypatch):
    monkeypatch.setattr(stages, "load_actor_model", lambda spec, base_dir: _Detector())
    step = stages.DetectStep(DetectorSpec(name="det", checkpoint="fake"), runtime=batch_mod.StepRuntime(attempts=2))
    step._ledger = ledger = _DictLedger()
    batch = _batch([40, 41, 42])
    # what a restarted actor finds: the batch started twice, then image 1 started alone and never finished
    key = __import__("hashlib").sha1("|".join(f"s0:{i}" for i in range(3)).encode()).hexdigest()[:20]
    ledger.data = {key: 2, "img/s0:0": "done", "img/s0:1": "started"}
    out = Batch(step(batch))
    assert out["status"] == ["ok", "error", "ok"]
    assert out["error"][1].startswith("detector 'det': this image killed the det worker process")
    assert ledger.data["img/s0:2"] == "done" and key not in ledger.data


def test_colocated_steps_equal_the_steps_one_after_another(monkeypatch):
    monkeypatch.setattr(stages, "load_actor_model", lambda spec, base_dir: _Detector())
    det = DetectorSpec(name="det", checkpoint="fake")
    members = [(stages.DetectStep, {"spec": det}, 2), (stages.VoteStep, {"detectors": [det], "voting": VotingSpec()}, 64)]
    together = ColocatedSteps(members)(_batch([40, 33, 50, 60, 70]))
    apart = stages.VoteStep([det], VotingSpec())(stages.DetectStep(det)(_batch([40, 33, 50, 60, 70])))
    assert isinstance(together, pa.Table) and together.schema == apart.schema  # the same typed columns
    # busy times differ run to run
    together, apart = together.drop_columns(["step_seconds"]), apart.drop_columns(["step_seconds"])
    assert together.equals(apart) and Batch(together)["status"] == ["ok", "error", "ok", "ok", "ok"]


def test_inject_crash_values_parse():
    assert batch_mod.parse_inject_crash(["segmenter:a:b.jpg"]) == (("segmenter", "a:b.jpg"),)
    with pytest.raises(ValueError, match="STEP:IMAGE_ID"):
        batch_mod.parse_inject_crash("segmenter")


def test_inject_crash_into_a_step_the_run_does_not_have_is_refused_before_ray(tmp_path):
    from grand.config import ConfigError
    from grand.runtime.pipeline import RunOptions, run_pipeline

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "in" / "a.png")
    with pytest.raises(ConfigError, match=r"no step or role 'segmentor' in this run; use one of: .*segmenter"):
        run_pipeline(load_config(TINY), RunOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                                   inject_crash="segmentor:a.png"))


def test_a_colocated_run_summary_names_the_actor_processes_it_saved():
    from grand.runtime.run import RunSummary

    summary = RunSummary(output="out", shards_total=1, shards_skipped=0, levels=[1, 2, 3, 4], first_row_s=40.0,
                         colocated=True, actor_steps=(3, 15))
    assert "co-located: 3 model actor processes instead of 15 separate pools" in summary.text()
    assert "co-located:" not in RunSummary(output="out", shards_total=1, shards_skipped=0).text()
