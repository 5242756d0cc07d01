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
