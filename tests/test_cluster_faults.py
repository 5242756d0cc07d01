"""Model actors that die (the opt-in fault injection `RunOptions.fault_rate` / `grand run --fault-rate`:
the actor process exits in that fraction of batches, as a crashed CUDA worker would): Ray restarts the
actor and retries its batch, and the output equals the fault-free run's."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml
from PIL import Image

from conftest import TINYCOCO
from grand.config import load_config
from grand.runtime.pipeline import RunOptions, run_pipeline

pytestmark = pytest.mark.slow


def _rows(out) -> list[dict]:
    rows = pads.dataset(str(out / "level1"), format="parquet").to_table().to_pylist()
    return sorted(rows, key=lambda r: r["image_id"])


def test_actor_faults_give_the_fault_free_output(ray_session, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(6):
        Image.effect_mandelbrot((160 + 16 * k, 120), (-2, -1.2, 1, 1.2), 40 + k).convert("RGB").save(folder / f"{k}.png")
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump({
        "name": "faults", "input": {"shard_size": 1}, "runtime": {"cpu_task_num_cpus": 0.15},
        "level1": {"detectors": [{"name": "rtdetr", "checkpoint": "tiny:rt-detr", "score_threshold": 0.2,
                                  "batch_size": 1, "resources": {"num_cpus": 0.5}}],
                   "voting": {"min_models": 1}},
    }))
    cfg = load_config(config)
    clean = run_pipeline(cfg, RunOptions(input=str(folder), output=str(tmp_path / "clean")))
    # one batch in four kills its actor: six batches, about two restarts of ~10 s each here (none in
    # 0.75**6 = 18% of runs; the fault-free comparison still holds then)
    faulty = run_pipeline(cfg, RunOptions(input=str(folder), output=str(tmp_path / "faulty"), fault_rate=0.25))
    assert clean.images == faulty.images == 6 and faulty.errors == 0, faulty.text()

    got, want = _rows(tmp_path / "faulty"), _rows(tmp_path / "clean")
    assert [r["image_id"] for r in got] == [r["image_id"] for r in want]  # each image once
    assert sum(len(r["objects"]) for r in want) > 0  # the tiny detector finds something to compare
    for g, w in zip(got, want):
        assert (g["status"], g["width"], g["height"]) == (w["status"], w["width"], w["height"])
        assert [(o["label"], o["models"]) for o in g["objects"]] == [(o["label"], o["models"]) for o in w["objects"]]
        np.testing.assert_allclose([o["bbox"] for o in g["objects"]], [o["bbox"] for o in w["objects"]], atol=0.05)
        np.testing.assert_allclose([o["score"] for o in g["objects"]], [o["score"] for o in w["objects"]], atol=1e-4)


def test_a_run_that_stops_leaves_a_failed_report(ray_session, tmp_path, monkeypatch):
    from grand.runtime import pipeline, run
    from grand.runtime.report import latest_report

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(folder / "a.png")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "stop", "level1": {"detectors": [
        {"name": "rtdetr", "checkpoint": "tiny:rt-detr", "resources": {"num_cpus": 0.25}}]}}))

    def lost_cluster(*args, **kwargs):
        raise ConnectionError("the Ray cluster went away")

    monkeypatch.setattr(run, "_run_pass", lost_cluster)
    with pytest.raises(pipeline.RunError, match="the Ray cluster went away"):
        run_pipeline(load_config(config), RunOptions(input=str(folder), output=str(tmp_path / "out")))
    uri, report = latest_report(str(tmp_path / "out"))
    assert report["state"] == "failed" and "ConnectionError: the Ray cluster went away" in report["error"]
    assert report["images"]["processed"] == 0 and report["shards"]["planned"] == 1 and report["cluster"]["CPU"] == 2.0


def test_a_poison_image_becomes_one_error_row_and_the_run_completes(ray_session, tmp_path):
    """`--inject-crash segmenter:IMAGE`: the segmenter's process exits hard on that image, as on a
    segfault or a host OOM. Ray restarts the actor a bounded number of times; the batch is re-run
    image by image and that image alone becomes an error row saying it killed the worker."""
    folder = tmp_path / "in"
    folder.mkdir()
    photos = sorted((TINYCOCO / "images").glob("*.jpg"))[:6]  # tinycoco photos when ../shared is there
    for p in photos:
        shutil.copyfile(p, folder / p.name)
    for k in range(len(photos), 6):
        Image.effect_mandelbrot((200 + 16 * k, 150), (-2, -1.2, 1, 1.2), 40 + k).convert("RGB").save(folder / f"m{k}.png")
    victim = sorted(p.name for p in folder.iterdir())[4]
    config = tmp_path / "poison.yaml"
    config.write_text(yaml.safe_dump({
        "name": "poison", "input": {"shard_size": 3},
        "runtime": {"cpu_task_num_cpus": 0.15, "colocate": True, "step_attempts": 1},
        "level1": {"detectors": [{"name": "rtdetr", "checkpoint": "tiny:rt-detr", "score_threshold": 0.2,
                                  "batch_size": 3, "resources": {"num_cpus": 0.25}}],
                   "voting": {"min_models": 1},
                   "segmenter": {"name": "sam", "checkpoint": "tiny:sam", "batch_size": 3,
                                 "resources": {"num_cpus": 0.25}}},
    }))
    summary = run_pipeline(load_config(config), RunOptions(input=str(folder), output=str(tmp_path / "out"),
                                                           inject_crash=[f"segmenter:{victim}"]))
    assert (summary.images, summary.ok, summary.errors) == (6, 5, 1), summary.text()
    rows = {r["image_id"]: r for r in _rows(tmp_path / "out")}
    assert [i for i, r in rows.items() if r["status"] != "ok"] == [victim]
    assert rows[victim]["error"].startswith("segmenter 'sam': this image killed the sam worker process")
    assert all(r["error"] is None for i, r in rows.items() if i != victim)
