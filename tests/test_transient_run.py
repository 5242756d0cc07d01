"""A tar that is unreachable after planning fails its shard instead of committing error rows, and the
next run, with the tar back, completes it with ok rows (issue 13, item 1)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TINYCOCO, YOLOX_DIR, needs_shared
from grand.config import load_config
from grand.io.output import OutputDir
from grand.io.status import output_status
from grand.runtime.pipeline import RunError, RunOptions, plan_output, run_pipeline

pytestmark = [pytest.mark.slow, needs_shared]


def _config(path: Path) -> Path:
    det = {"name": "yolox", "backend": "onnx-yolox", "checkpoint": str(YOLOX_DIR), "score_threshold": 0.3,
           "batch_size": 2, "resources": {"num_cpus": 0.25}}
    cfg = {"name": "transient", "input": {"read_attempts": 2, "read_backoff_s": 0}, "level1": {"detectors": [det]}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tar_gone_after_planning_fails_its_shard_then_the_next_run_completes_it(ray_session, tmp_path):
    images = sorted((TINYCOCO / "images").glob("*.jpg"))[:4]
    tars = tmp_path / "tars"
    tars.mkdir()
    for name, group in (("a", images[:2]), ("b", images[2:])):
        with tarfile.open(tars / f"{name}.tar", "w") as t:
            for p in group:
                t.add(p, arcname=p.name)
    cfg = load_config(_config(tmp_path / "c.yaml"))
    out = tmp_path / "out"
    plan_output(cfg, OutputDir(str(out)), str(tars))
    (tars / "b.tar").rename(tmp_path / "b.tar")  # moved away after planning (an object-store outage)

    with pytest.raises(RunError, match=r"shard b: cannot read .*b\.tar after 2 tries: FileNotFoundError"):
        run_pipeline(cfg, RunOptions(input=str(tars), output=str(out)))
    assert not (out / "level1" / "b.parquet").exists()  # no error rows committed for it
    st = output_status(str(out))["levels"]["level1"]
    assert st["failed_shards"]["b"].startswith("TransientReadError: cannot read")
    assert st["errors"] == 0

    (tmp_path / "b.tar").rename(tars / "b.tar")
    summary = run_pipeline(cfg, RunOptions(input=str(tars), output=str(out)))
    assert "b" in summary.shards_committed and summary.errors == 0
    rows = pq.read_table(out / "level1" / "b.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    st = output_status(str(out))["levels"]["level1"]
    assert (st["done"], st["failed"], st["errors"]) == (2, 0, 0)
