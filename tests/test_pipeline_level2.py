"""Levels 1-2 end to end on a local Ray with the tiny checkpoints of pipelines/tiny.yaml: every image
gets a level-2 row, spans index their captions, relationship ids exist, level 2 alone runs over a
committed level 1 without rewriting it, and a SIGKILLed level-2 run resumes without duplicates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from kill_run import kill_after_commits
from pipeline_runs import GREEDY, TINY, copy_levels, rows as _rows
from grand.config import load_config
from grand.core.rle import decode_mask
from grand.io.status import output_status
from grand.runtime.pipeline import RunOptions, run_pipeline

pytestmark = pytest.mark.slow

def _check_level2(level1: list[dict], level2: list[dict], expected: dict[str, str],
                  captioners: tuple[str, ...] = ("blip2", "llava")) -> None:
    assert [r["image_id"] for r in level2] == sorted(expected)  # every image once
    for r1, r2 in zip(level1, level2):
        assert r2["status"] == r1["status"] == expected[r2["image_id"]], (r2["image_id"], r2["error"])
        if r2["status"] != "ok":
            assert r2["error"] == r1["error"]  # level 1's reason carried forward
            continue
        assert [c["model"] for c in r2["short_captions"]] == list(captioners)
        for cap in r2["short_captions"]:
            assert isinstance(cap["caption"], str)
            for d in cap["details"]:
                start, end = d["tokens_positive"]
                assert cap["caption"][start:end] == d["phrase"]
        assert r2["landmark"] is not None and len(r2["landmark"]["answers"]) >= 1
        ids2 = {o["id"] for o in r2["objects"] + r2["floating_objects"]}
        ids1 = {o["id"]: o for o in r1["objects"] + r1["floating_objects"]}
        assert set(ids1) <= ids2  # grounding adds and promotes, never drops
        for o in r2["objects"] + r2["floating_objects"]:
            if o["id"] in ids1:
                assert set(ids1[o["id"]]["labels"]) <= set(o["labels"])
            else:
                assert any(m.startswith("phrase_grounding:") for m in o["models"])
                # level 2 masks what it adds
                assert decode_mask(o["segmentation"]).shape == (r1["height"], r1["width"])
        for rel in r2["relationships"]:
            assert rel["object_ids"] and set(rel["object_ids"]) <= ids2


def _level1_only_copy(src: Path, dst: Path) -> Path:
    return copy_levels(src, dst, (1,))


def test_levels_1_2_give_every_image_grounded_captions(combined):
    _, both, expected = combined
    level1, level2 = _rows(both, 1), _rows(both, 2)
    _check_level2(level1, level2, expected)
    ok = [r for r in level2 if r["status"] == "ok"]
    assert sum(len(c["details"]) for r in ok for c in r["short_captions"]) > 0, "no phrase at all"
    # the region captioner described large objects (level-1 attributes)
    assert any(o["attributes"] for r in level1 for o in r["objects"] + r["floating_objects"])
    st = output_status(str(both))["levels"]
    assert st["level2"]["done"] == st["level1"]["done"] == 6


def test_level2_alone_reproduces_the_combined_run_without_touching_level1(combined, tmp_path):
    _, both, _ = combined
    alone = _level1_only_copy(both, tmp_path / "alone")
    before = {p.name: p.read_bytes() for p in (alone / "level1").glob("*.parquet")}
    # separate actor pools, one per step, where the combined run co-located each level's steps
    # (tiny.yaml's runtime.colocate): the same rows
    cfg = load_config(TINY, {"input": {"shard_size": 1}, "runtime": {"colocate": False}, **GREEDY})
    summary = run_pipeline(cfg, RunOptions(input=None, output=str(alone), levels=(2,)))
    assert summary.images == 6 and len(summary.shards_committed) == 6
    assert {p.name: p.read_bytes() for p in (alone / "level1").glob("*.parquet")} == before
    assert _strip(_rows(alone, 2)) == _strip(_rows(both, 2))

    again = run_pipeline(cfg, RunOptions(input=None, output=str(alone), levels=(1, 2)))
    assert again.images == 0  # everything committed at both levels: nothing redone


def test_separate_pools_write_the_level1_rows_of_the_colocated_run(combined, tmp_path):
    images, both, _ = combined
    cfg = load_config(TINY, {"input": {"shard_size": 1}, "runtime": {"colocate": False}, **GREEDY})
    summary = run_pipeline(cfg, RunOptions(input=str(images), output=str(tmp_path / "apart"), levels=(1,)))
    assert summary.images == 6 and not summary.colocated
    assert _rows(tmp_path / "apart", 1) == _rows(both, 1)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "provenance"} for r in rows]


def test_level2_resumes_after_sigkill(combined, tmp_path):
    _, both, expected = combined
    out = _level1_only_copy(both, tmp_path / "out")

    ray_tmp = tempfile.mkdtemp(prefix="grk2-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    # the resume logic does not depend on the models: one captioner and no grounding keep it quick
    llava_only = '[{name: llava, checkpoint: "tiny:llava", landmark: true, resources: {num_cpus: 0.1}}]'
    cmd = [sys.executable, "-m", "grand.cli.main", "run", str(TINY), "--output", str(out), "--levels", "2",
           "--set", f"level2.captioners={llava_only}", "--set", "level2.grounding=null"]
    level2 = out / "level2"
    committed = kill_after_commits(cmd, env, level2, min_files=1)
    assert 1 <= len(committed) < 6

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{6 - len(committed)} shards" in done.stderr  # only the rest was redone
    for name, data in committed.items():
        assert (level2 / name).read_bytes() == data  # committed level-2 shards are never rewritten
    _check_level2(_rows(out, 1), _rows(out, 2), expected, captioners=("llava",))
    st = output_status(str(out))["levels"]["level2"]
    assert (st["done"], st["pending"], st["failed"], st["images_done"]) == (6, 0, 0, 6)


def test_export_stats_and_viz_read_a_real_output(combined, tmp_path, capsys):
    """The export commands on the combined run's folder: what pycocotools and PIL read back."""
    import json

    from pycocotools.coco import COCO

    from grand.cli.main import main

    _, both, expected = combined
    dest = tmp_path / "coco.json"
    assert main(["export", "coco", str(both), str(dest)]) == 0
    coco = COCO(str(dest))
    level2 = {r["image_id"]: r for r in _rows(both, 2)}
    ok_ids = sorted(i for i, s in expected.items() if s == "ok")
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ok_ids
    want = sum(len(level2[i]["objects"]) + len(level2[i]["floating_objects"]) for i in ok_ids)
    assert len(coco.dataset["annotations"]) == want
    ann = coco.dataset["annotations"][0]
    assert coco.annToMask(ann).shape == tuple(ann["segmentation"]["size"])

    capsys.readouterr()
    assert main(["stats", str(both), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert json.dumps(st)  # plain JSON
    assert main(["stats", str(both)]) == 0 and capsys.readouterr().out.strip()

    png = tmp_path / "viz.png"
    assert main(["viz", str(both), "--id", ok_ids[0], "--dest", str(png)]) == 0
    with Image.open(png) as im:
        assert im.width >= 64 and im.height >= 64
    assert main(["viz", str(both), "--id", "no-such-image.jpg", "--dest", str(png)]) == 2
