"""Shared fixtures: paths to ../shared, a local Ray for the session (own temp dir, stopped at the end)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINYCOCO = SHARED / "data" / "tinycoco"
YOLOX_DIR = SHARED / "weights" / "yolox_nano"

# Tiny checkpoints are cached inside the checkout unless the caller chose a cache.
os.environ.setdefault("GRAND_CACHE", str(ROOT / ".cache" / "grand"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

needs_shared = pytest.mark.skipif(not TINYCOCO.is_dir(), reason="../shared (tinycoco, yolox_nano) is not beside the checkout")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process pipeline run of the session."""
    import ray

    temp = tempfile.mkdtemp(prefix="gr-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="WARNING",
             runtime_env={"env_vars": {"GRAND_CACHE": os.environ["GRAND_CACHE"]}})
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def combined(ray_session, tmp_path_factory):
    """One `--levels 1,2,3,4` run of pipelines/tiny.yaml (greedy captions, the tiny Llama for levels
    3-4, one image per shard) shared by the pipeline tests: (input folder, output folder, {image_id:
    expected status})."""
    from pipeline_runs import FAST_LLM, GREEDY, TINY, make_images

    from grand.config import load_config
    from grand.runtime.pipeline import RunOptions, run_pipeline

    tmp = tmp_path_factory.mktemp("levels")
    expected = make_images(tmp / "in")
    cfg = load_config(TINY, {"input": {"shard_size": 1}, **GREEDY, **FAST_LLM})
    summary = run_pipeline(cfg, RunOptions(input=str(tmp / "in"), output=str(tmp / "all"), levels=(1, 2, 3, 4)))
    assert summary.images == 6 and summary.errors == 1, summary.text()
    return tmp / "in", tmp / "all", expected


@pytest.fixture
def no_hang():
    """Fail the test instead of hanging the suite when something that must finish does not (a FIFO
    read, a looping tar plan, a backtracking regex: minutes, where the fix takes milliseconds)."""
    import signal

    def expire(*_):
        raise TimeoutError("did not finish within 60 s: it hangs or backtracks")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
