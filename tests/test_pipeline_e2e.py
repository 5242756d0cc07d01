"""End-to-end runs on a local Ray: every input image lands exactly once, bad inputs become error rows,
masks decode to the image size, re-runs skip committed shards, and a SIGKILLed run resumes to the
same output an uninterrupted run gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml

from bad_inputs import HOSTILE_REASONS, write_bad_input_corpus, write_hostile_folder
from conftest import ROOT, TINYCOCO, YOLOX_DIR, needs_shared
from kill_run import kill_after_commits
from grand.config import load_config
from grand.core.rle import decode_mask, mask_iou
from grand.io.output import OutputDir
from grand.io.status import output_status
from grand.runtime.pipeline import RunOptions, run_pipeline

pytestmark = pytest.mark.slow


def _rows(out: Path) -> list[dict]:
    return pads.dataset(str(out / "level1"), format="parquet").to_table().to_pylist()


HOSTILE_MAX_FILE = 2**20  # input.max_file_bytes of the runs over _input_folder


def _input_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "in"
    expected = write_bad_input_corpus(folder)
    # FIFO, symlinks to /dev/zero and out of the folder, over-size file, strip, EPS (issue 13)
    hostile = write_hostile_folder(folder / "hostile", tmp_path / "elsewhere", HOSTILE_MAX_FILE)
    expected.update({f"hostile/{name}": status for name, status in hostile.items()})
    if TINYCOCO.is_dir():
        for p in sorted((TINYCOCO / "images").glob("*.jpg"))[:3]:
            (folder / "coco").mkdir(exist_ok=True)
            shutil.copyfile(p, folder / "coco" / p.name)
            expected[f"coco/{p.name}"] = "ok"
    return folder, expected


# Every input once does not depend on the models: the detector, SAM and depth of tiny.yaml check that
# masks and depth come out at each odd image's oriented size (all of tiny.yaml's level-1 models run
# in conftest's shared `combined` run).
FEW_MODELS = {"level1": {"taggers": [], "label_choice": None, "attributes": None, "detectors": [
    {"name": "rtdetr", "checkpoint": "tiny:rt-detr", "score_threshold": 0.2, "batch_size": 4, "resources": {"num_cpus": 0.25}},
]}}


def test_tiny_pipeline_covers_every_input_exactly_once(ray_session, tmp_path):
    folder, expected = _input_folder(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(ROOT / "pipelines" / "tiny.yaml",
                      {"input": {"shard_size": 5, "max_file_bytes": HOSTILE_MAX_FILE}, **FEW_MODELS})
    summary = run_pipeline(cfg, RunOptions(input=str(folder), output=str(out)))

    rows = _rows(out)
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(expected)  # every input once, nothing else
    assert summary.images == len(expected)
    for r in rows:
        assert r["status"] == expected[r["image_id"]], (r["image_id"], r["error"])
        if r["status"] == "error":
            assert r["error"] and r["objects"] == []
            name = r["image_id"].removeprefix("hostile/")
            if r["image_id"].startswith("hostile/"):
                assert HOSTILE_REASONS[name] in r["error"], r
            continue
        assert r["width"] > 0 and r["height"] > 0 and r["error"] is None
        assert {p["name"] for p in r["provenance"]} == {"rtdetr", "sam", "depth_anything"}
        regions = r["objects"] + r["floating_objects"]
        assert len({o["id"] for o in regions}) == len(regions)
        for o in regions:
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 <= x2 <= r["width"] + 0.01 and 0 <= y1 <= y2 <= r["height"] + 0.01
            assert decode_mask(o["segmentation"]).shape == (r["height"], r["width"])
            assert o["segmentation_source"] == "sam" and o["models"]
        assert r["depth_stats"] is not None
    assert sum(len(r["objects"]) + len(r["floating_objects"]) for r in rows) > 0

    st = output_status(str(out))["levels"]["level1"]
    n_errors = sum(1 for s in expected.values() if s == "error")
    assert (st["done"], st["pending"], st["failed"]) == (st["shards"], 0, 0)
    assert (st["images_done"], st["errors"]) == (len(expected), n_errors)
    assert sum(st["error_reasons"].values()) == n_errors


def assert_rows_match(got: list[dict], want: list[dict]) -> None:
    """Same images, statuses, labels and model groups; boxes, scores, depths and masks equal up to
    float noise."""
    assert [r["image_id"] for r in got] == [r["image_id"] for r in want]
    for g, w in zip(got, want):
        assert (g["status"], g["error"], g["width"], g["height"]) == (w["status"], w["error"], w["width"], w["height"])
        assert set(g["tags"]) == set(w["tags"])
        for key in ("objects", "floating_objects"):
            ident = lambda objs: [(o["id"], o["labels"], o["models"]) for o in objs]  # noqa: E731
            assert ident(g[key]) == ident(w[key])
            for a, b in zip(g[key], w[key]):
                np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
                assert (a["depth"] is None) == (b["depth"] is None)
                if a["depth"] is not None:
                    assert a["depth"] == pytest.approx(b["depth"], rel=1e-3, abs=1e-9)
                assert (a["segmentation"] is None) == (b["segmentation"] is None)
                if a["segmentation"] is not None:
                    assert mask_iou([a["segmentation"]], [b["segmentation"]])[0, 0] > 0.99


def test_output_folder_refuses_another_input(ray_session, tmp_path):
    folder, _ = _input_folder(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(ROOT / "pipelines" / "tiny.yaml", {"input": {"shard_size": 50}})
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(next(folder.glob("*.png")), other / "a.png")
    OutputDir(str(out))  # nothing written yet
    from grand.io.manifest import PlanMismatchError, save_plan
    from grand.io.sources import plan_shards

    save_plan(OutputDir(str(out)), str(folder.resolve()), plan_shards(str(folder), cfg.input))
    with pytest.raises(PlanMismatchError, match="planned for input"):
        run_pipeline(cfg, RunOptions(input=str(other), output=str(out)))


# -- crash and resume ---------------------------------------------------------------------------------
def _two_yolox_config(path: Path) -> Path:
    """Two detectors (the real YOLOX weights twice): fast, deterministic, and every box is an object."""
    det = {"backend": "onnx-yolox", "checkpoint": str(YOLOX_DIR), "score_threshold": 0.3,
           "batch_size": 2, "resources": {"num_cpus": 0.25}}
    cfg = {"name": "resume", "input": {"shard_size": 2},
           "level1": {"detectors": [{"name": "yolox_a", **det}, {"name": "yolox_b", **det}]}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _three_tars(images: Path, dest: Path) -> Path:
    """tinycoco's 32 images as three SA-1B-style tars of 11, 11 and 10: with shard_size 2, each tar
    is several member-range shards (issue 12, item 3)."""
    dest.mkdir()
    photos = sorted(images.glob("*.jpg"))
    for k, group in enumerate((photos[:11], photos[11:22], photos[22:])):
        with tarfile.open(dest / f"sa_{k:06d}.tar", "w") as t:
            for p in group:
                t.add(p, arcname=p.name)
    return dest


@needs_shared
def test_sigkill_midway_then_rerun_gives_the_uninterrupted_output(ray_session, tmp_path):
    config = _two_yolox_config(tmp_path / "resume.yaml")
    images = _three_tars(TINYCOCO / "images", tmp_path / "tars")  # 6 + 6 + 5 range shards

    reference = tmp_path / "reference"
    run_pipeline(load_config(config), RunOptions(input=str(images), output=str(reference)))

    out = tmp_path / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="grk-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "grand.cli.main", "run", str(config), "--input", str(images), "--output", str(out)]
    level1 = out / "level1"
    committed_before = kill_after_commits(cmd, env, level1, min_files=3, timeout_s=240)
    assert 3 <= len(committed_before) < 17  # killed midway

    st = output_status(str(out))["levels"]["level1"]
    assert st["done"] == len(committed_before) and st["pending"] + st["failed"] == 17 - len(committed_before)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{17 - len(committed_before)} shards" in done.stderr  # only the rest was redone

    for name, data in committed_before.items():
        assert (level1 / name).read_bytes() == data  # committed shards are never rewritten
    assert sorted(p.name for p in level1.glob("*.parquet")) == sorted(
        f"sa_{k:06d}-{r:05d}.parquet" for k, ranges in enumerate((6, 6, 5)) for r in range(ranges))
    got, want = _rows(out), _rows(reference)
    assert sorted(r["image_id"] for r in got) == sorted(p.stem for p in (TINYCOCO / "images").glob("*.jpg"))  # once each
    key = lambda r: r["image_id"]  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    assert sum(len(r["objects"]) for r in got) > 32  # both detectors agree: objects, not floating
    st = output_status(str(out))["levels"]["level1"]
    assert (st["done"], st["pending"], st["failed"], st["images_done"]) == (17, 0, 0, 32)
