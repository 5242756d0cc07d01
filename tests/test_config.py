"""Config validation: a bad key is an error that names its path; shipped configs load."""

from pathlib import Path

import pytest
import yaml

from grand.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _tiny() -> dict:
    return yaml.safe_load((ROOT / "pipelines" / "tiny.yaml").read_text())


@pytest.mark.parametrize("name", ["tiny.yaml", "grand.yaml"])
def test_shipped_configs_load_and_reference_defaults_hold(name):
    cfg = load_config(ROOT / "pipelines" / name)
    v = cfg.level1.voting
    assert (v.pre_score_threshold, v.pre_nms_iou, v.match_iou, v.min_models) == (0.1, 0.9, 0.65, 2)
    assert v.label_aliases["women"] == "person"
    assert cfg.resolve_path(cfg.level1.taggers[0].vocabulary).is_file()
    if name == "grand.yaml":  # reference levels 3-4: Vicuna-13B v1.5 at T 0.7, top_p 0.95, 512 tokens
        gen = cfg.level3.llm.generation
        assert cfg.level3.llm.checkpoint == "lmsys/vicuna-13b-v1.5"
        assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.7, 0.95, 512)
        assert cfg.level3.scene_graph.layer_thresholds == [0.1, 0.6, 0.85]
        assert cfg.level3.scene_graph.group_distance_px == 200 and cfg.level4.max_objects == 30
    assert cfg.llm_for(4) is cfg.level3.llm  # level4.llm: null shares level 3's engine


def test_unknown_key_names_its_path():
    data = _tiny()
    data["level1"]["detectors"][1]["score_treshold"] = 0.3
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    assert "level1.detectors[1].score_treshold: unknown key" in str(err.value)


def test_wrong_type_names_its_path_and_value():
    data = _tiny()
    data["level1"]["segmenter"]["batch_size"] = "many"
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    assert "level1.segmenter.batch_size" in str(err.value) and "'many'" in str(err.value)


def test_out_of_range_threshold_is_rejected():
    data = _tiny()
    data["level1"]["voting"]["match_iou"] = 1.5
    with pytest.raises(ConfigError, match=r"level1\.voting\.match_iou"):
        parse_config(data)


def test_duplicate_model_names_are_rejected():
    data = _tiny()
    data["level1"]["detectors"][2]["name"] = "owlv2"
    with pytest.raises(ConfigError, match="repeated: owlv2"):
        parse_config(data)


def test_tag_queries_need_a_tagger():
    data = _tiny()
    data["level1"]["taggers"] = []
    with pytest.raises(ConfigError, match="queries: tags"):
        parse_config(data)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("level1: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_merge_and_are_validated():
    cfg = load_config(ROOT / "pipelines" / "tiny.yaml", {"input": {"shard_size": 7}})
    assert cfg.input.shard_size == 7
    assert cfg.level1.detectors[0].name == "rtdetr"  # untouched keys survive the merge
    with pytest.raises(ConfigError, match=r"input\.shard_size"):
        load_config(ROOT / "pipelines" / "tiny.yaml", {"input": {"shard_size": 0}})


def test_missing_offline_checkpoint_fails_before_any_actor(monkeypatch, tmp_path):
    from grand.models.loading import ModelUnavailableError
    from grand.runtime.pipeline import resolve_checkpoints

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    cfg = load_config(ROOT / "pipelines" / "grand.yaml")
    with pytest.raises(ModelUnavailableError) as err:
        resolve_checkpoints(cfg)
    assert "model 'clip'" in str(err.value) and "openai/clip-vit-large-patch14" in str(err.value)
    assert "GRAND_MODEL_DIR" in str(err.value)  # says how to provide the weights


def test_llm_backend_and_endpoint_must_agree():
    data = _tiny()
    data["level3"]["llm"]["backend"] = "http"
    with pytest.raises(ConfigError, match=r"level3.llm: .*backend: http needs an endpoint"):
        parse_config(data, "x.yaml")
    data["level3"]["llm"]["endpoint"] = {"url": "http://h:8000/v1", "max_concurrency": 0}
    with pytest.raises(ConfigError, match=r"level3.llm.endpoint.max_concurrency"):
        parse_config(data, "x.yaml")
    data["level3"]["llm"]["endpoint"]["max_concurrency"] = 4
    assert parse_config(data, "x.yaml").level3.llm.endpoint.max_concurrency == 4


def test_level_3_4_sections_are_checked():
    data = _tiny()
    data["level3"]["scene_graph"] = {"layer_thresholds": [0.6, 0.1, 0.85]}
    with pytest.raises(ConfigError, match=r"level3.scene_graph.layer_thresholds: .*three increasing"):
        parse_config(data, "x.yaml")
    data = _tiny()
    del data["level3"]
    with pytest.raises(ConfigError, match="level4.llm is null .* no level3 section"):
        parse_config(data, "x.yaml")
    data["level4"]["llm"] = {"name": "blip2", "checkpoint": "tiny:llama"}  # a level-2 model's name
    with pytest.raises(ConfigError, match="repeated: blip2"):
        parse_config(data, "x.yaml")
    data["level4"]["llm"]["name"] = "context_llm"
    cfg = parse_config(data, "x.yaml")
    assert cfg.llm_for(4).name == "context_llm" and cfg.llm_for(3) is None
