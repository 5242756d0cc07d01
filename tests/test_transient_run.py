"""A tar that is unreachable after planning fails its shards instead of committing error rows, and the
next run, with the tar back, completes them with ok rows (issue 13, item 1). The tars are split into
member ranges (input.shard_size 1), planned by Ray tasks (issue 12, items 3 and 4)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TINYCOCO, YOLOX_DIR, needs_shared
from grand.config import load_config
from grand.io.output import OutputDir
from grand.io.sources import plan_shards
from grand.io.status import output_status
from grand.runtime.pipeline import RunError, RunOptions, plan_output, run_pipeline

pytestmark = [pytest.mark.slow, needs_shared]


def _config(path: Path) -> Path:
    det = {"name": "yolox", "backend": "onnx-yolox", "checkpoint": str(YOLOX_DIR), "score_threshold": 0.3,
           "batch_size": 2, "resources": {"num_cpus": 0.25}}
    cfg = {"name": "transient", "input": {"read_attempts": 2, "read_backoff_s": 0, "shard_size": 1},
           "level1": {"detectors": [det]}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tar_gone_after_planning_fails_its_shard_then_the_next_run_completes_it(ray_session, tmp_path, monkeypatch):
    images = sorted((TINYCOCO / "images").glob("*.jpg"))[:4]
    tars = tmp_path / "tars"
    tars.mkdir()
    for name, group in (("a", images[:2]), ("b", images[2:])):
        with tarfile.open(tars / f"{name}.tar", "w") as t:
            for p in group:
                t.add(p, arcname=p.name)
    cfg = load_config(_config(tmp_path / "c.yaml"))
    out = tmp_path / "out"
    monkeypatch.setattr("grand.runtime.plan.PARALLEL_AFTER_S", 0.0)  # scan the second tar as a Ray task
    shards = plan_output(cfg, OutputDir(str(out)), str(tars))
    assert shards == plan_shards(str(tars), cfg.input)  # the plan the driver alone makes
    assert [(s.name, s.num_images) for s in shards] == [("a-00000", 1), ("a-00001", 1), ("b-00000", 1), ("b-00001", 1)]
    (tars / "b.tar").rename(tmp_path / "b.tar")  # moved away after planning (an object-store outage)

    with pytest.raises(RunError, match=r"shard b-0000[01]: cannot read .*b\.tar after 2 tries: FileNotFoundError"):
        run_pipeline(cfg, RunOptions(input=str(tars), output=str(out)))
    assert not list((out / "level1").glob("b-*.parquet"))  # no error rows committed for its ranges
    st = output_status(str(out))["levels"]["level1"]
    assert any(st["failed_shards"][name].startswith("TransientReadError: cannot read") for name in ("b-00000", "b-00001"))
    assert st["errors"] == 0
    done_before = {p.name for p in (out / "level1").glob("*.parquet")}

    (tmp_path / "b.tar").rename(tars / "b.tar")
    summary = run_pipeline(cfg, RunOptions(input=str(tars), output=str(out)))
    assert {"b-00000", "b-00001"} <= set(summary.shards_committed) and summary.errors == 0
    assert not done_before & {f"{name}.parquet" for name in summary.shards_committed}  # committed ranges skipped
    rows = pq.read_table(out / "level1").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(p.stem for p in images)  # each image once
    assert [r["status"] for r in rows] == ["ok"] * 4
    st = output_status(str(out))["levels"]["level1"]
    assert (st["done"], st["failed"], st["errors"]) == (4, 0, 0)
