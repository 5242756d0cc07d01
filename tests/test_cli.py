"""The command line as a user meets it: exit codes and messages that say what to do."""

import json

import numpy as np
import pytest
from PIL import Image

from grand.cli.main import main
from grand.io.manifest import save_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec

from conftest import ROOT


def test_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "pipelines" / "tiny.yaml").read_text().replace("top_k: 8", "top_kk: 8"))
    assert main(["run", str(cfg), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "level1.taggers[0].top_kk: unknown key" in capsys.readouterr().err


def test_missing_input_exits_2(tmp_path, capsys):
    rc = main(["run", str(ROOT / "pipelines" / "tiny.yaml"), "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_levels_with_a_gap_are_refused(tmp_path, capsys):
    rc = main(["run", str(ROOT / "pipelines" / "tiny.yaml"), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
               "--levels", "1,3"])
    assert rc == 2 and "level 3 reads level 2, which must be in --levels" in capsys.readouterr().err


def test_set_override_is_validated(tmp_path, capsys):
    rc = main(["run", str(ROOT / "pipelines" / "tiny.yaml"), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
               "--set", "input.shard_size=-3"])
    assert rc == 2 and "input.shard_size" in capsys.readouterr().err


def test_status_text_and_json(tmp_path, capsys):
    out = OutputDir(str(tmp_path / "out"))
    save_plan(out, "/in", [ShardSpec(name="s0", kind="folder", uri="/in", num_images=1, members=("a.jpg",))])
    assert main(["status", out.uri]) == 0
    text = capsys.readouterr().out
    assert "level1: 0 done, 1 pending, 0 failed of 1 shards" in text
    assert main(["status", out.uri, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["levels"]["level1"]["pending"] == 1 and st["shards"][0]["state"] == "pending"


def test_status_of_a_plain_folder_exits_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a grand output folder" in capsys.readouterr().err


def test_resource_check_names_the_step_and_resource():
    from grand.config import ConfigError, load_config
    from grand.runtime.pipeline import check_cluster_resources

    gpu_cfg = load_config(ROOT / "pipelines" / "grand.yaml")
    with pytest.raises(ConfigError, match=r"tagger 'clip' asks for num_gpus=0.05 .* has 0 GPUs"):
        check_cluster_resources(gpu_cfg, {"CPU": 64.0})
    both = (1, 2)
    check_cluster_resources(gpu_cfg, {"CPU": 64.0, "GPU": 1.0}, both)  # levels 1-2 fill exactly one GPU
    with pytest.raises(ConfigError, match=r"need 1.05 GPUs in total"):
        check_cluster_resources(_with_pool(gpu_cfg, 2), {"CPU": 64.0, "GPU": 1.0}, both)
    tiny = load_config(ROOT / "pipelines" / "tiny.yaml", {"runtime": {"colocate": False}})
    check_cluster_resources(tiny, {"CPU": 2.0}, both)  # all 12 actor pools fit a 2-CPU laptop
    with pytest.raises(ConfigError, match=r"need 1.5 CPUs .* has 1"):
        check_cluster_resources(tiny, {"CPU": 1.0}, both)
    # levels 1-4: 13 pools of 0.1 (SAM twice, the LLM once), plus 3 x 0.15 for tasks and the two spaCy actors
    check_cluster_resources(tiny, {"CPU": 2.0}, (1, 2, 3, 4))
    with pytest.raises(ConfigError, match=r"need 1.75 CPUs .* has 1.7"):
        check_cluster_resources(tiny, {"CPU": 1.7}, (1, 2, 3, 4))
    # co-located: one actor per level (0.1 CPU for level 1, 0.15 with the spaCy actor for 2 and 3) + a task
    colocated = load_config(ROOT / "pipelines" / "tiny.yaml", {"runtime": {"colocate": True}})
    check_cluster_resources(colocated, {"CPU": 0.6}, (1, 2, 3, 4))
    with pytest.raises(ConfigError, match=r"need 0.55 CPUs .* has 0.5"):
        check_cluster_resources(colocated, {"CPU": 0.5}, (1, 2, 3, 4))
    # grand.yaml's levels 3-4 want a whole GPU for Vicuna
    with pytest.raises(ConfigError, match=r"llm 'vicuna' asks for num_gpus=1"):
        check_cluster_resources(gpu_cfg, {"CPU": 64.0, "GPU": 0.5}, (3, 4))


def _with_pool(cfg, pool_size: int):
    cfg = cfg.model_copy(deep=True)
    cfg.level1.taggers[0].resources.pool_size = pool_size
    return cfg


def test_models_make_tiny_writes_loadable_checkpoints(tmp_path, capsys):
    from grand.config import DepthSpec
    from grand.models.registry import build_model

    assert main(["models", "make-tiny", str(tmp_path), "--arch", "depth-anything", "--arch", "rt-detr"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth-anything", "rt-detr"]
    model = build_model(DepthSpec(name="d", checkpoint=str(tmp_path / "depth-anything")))  # loads offline
    (depth,) = model.estimate([Image.new("RGB", (40, 30), (90, 120, 30))])
    assert depth.shape == (30, 40) and np.isfinite(depth).all()  # a map of the image's own size
    assert main(["models", "list"]) == 0 and "tiny:<arch>" in capsys.readouterr().out
