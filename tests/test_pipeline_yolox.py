"""The real YOLOX-Nano detector through the Ray pipeline gives exactly what the same model gives when
called in a plain loop, after the same documented voting rules; re-running skips committed shards,
and --force redoes one with the same rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from conftest import TINYCOCO, YOLOX_DIR, needs_shared
from grand.config import parse_config
from grand.core.voting import vote_detections
from grand.io.images import open_rgb, prepare_image
from grand.models.registry import build_model
from grand.runtime.pipeline import RunOptions, run_pipeline
from test_pipeline_e2e import assert_rows_match

pytestmark = [pytest.mark.slow, needs_shared]


def _yolox_config():
    return parse_config({
        "name": "yolox",
        "input": {"shard_size": 8},
        "level1": {
            "detectors": [{
                "name": "yolox", "backend": "onnx-yolox", "checkpoint": str(YOLOX_DIR),
                "score_threshold": 0.3, "batch_size": 4, "resources": {"num_cpus": 0.5},
            }],
            "voting": {"min_models": 1},
        },
    })


def test_pipeline_reproduces_standalone_yolox_predictions(ray_session, tmp_path):
    cfg = _yolox_config()
    summary = run_pipeline(cfg, RunOptions(input=str(TINYCOCO / "images"), output=str(tmp_path / "out")))
    assert summary.images == 32 and summary.errors == 0
    rows = {r["image_id"]: r for r in pads.dataset(str(tmp_path / "out" / "level1")).to_table().to_pylist()}
    assert len(rows) == 32

    detector = build_model(cfg.level1.detectors[0])
    n_objects = 0
    for path in sorted((TINYCOCO / "images").glob("*.jpg")):
        data, width, height = prepare_image(path.read_bytes(), cfg.input.max_image_pixels)
        det = detector.detect([open_rgb(data)])[0]
        expected = vote_detections({"yolox": det}, cfg.level1.detectors, cfg.level1.voting).objects
        got = rows[path.name]["objects"]
        assert (rows[path.name]["width"], rows[path.name]["height"]) == (width, height)
        assert [o["label"] for o in got] == [o.label for o in expected], path.name
        np.testing.assert_allclose([o["bbox"] for o in got], [o.bbox for o in expected], atol=0.02)
        np.testing.assert_allclose([o["score"] for o in got], [o.score for o in expected], atol=1e-4)
        n_objects += len(got)
    assert n_objects > 32  # real detections on real photos, not an empty pass

    # The same command again commits nothing and changes nothing.
    level1 = tmp_path / "out" / "level1"
    before = {p.name: p.read_bytes() for p in level1.iterdir()}
    again = run_pipeline(cfg, RunOptions(input=str(TINYCOCO / "images"), output=str(tmp_path / "out")))
    assert again.shards_committed == [] and again.shards_skipped == 4
    assert {p.name: p.read_bytes() for p in level1.iterdir()} == before

    # --force redoes a committed shard (here: one) with the same rows, up to float noise: Ray groups
    # the images into other batches this time.
    first = sorted(before)[0]
    redo = run_pipeline(cfg, RunOptions(input=str(TINYCOCO / "images"), output=str(tmp_path / "out"),
                                        force=True, max_shards=1))
    assert redo.shards_committed == [first[: -len(".parquet")]]
    assert_rows_match(pq.read_table(level1 / first).to_pylist(), pq.read_table(pa.BufferReader(before[first])).to_pylist())
