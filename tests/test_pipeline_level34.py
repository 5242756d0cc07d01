"""Levels 3-4 end to end (conftest's shared `combined` run of levels 1-4 with the tiny Llama on vLLM):
every good image gets a scene graph, a dense caption with its verification record and grounded
spans, and an extra-context paragraph; levels 3-4 alone over a level-2 folder give the same rows
and never touch levels 1-2; a dead LLM endpoint gives per-image errors, not a crash."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from grand.config import LLMSpec, load_config
from grand.io.status import output_status
from grand.runtime.pipeline import RunOptions, run_pipeline
from pipeline_runs import FAST_LLM, GREEDY, TINY, copy_levels, rows

pytestmark = pytest.mark.slow


def _check_level3(level2: list[dict], level3: list[dict], expected: dict[str, str], max_attempts: int = 2) -> None:
    assert [r["image_id"] for r in level3] == sorted(expected)
    for r2, r3 in zip(level2, level3):
        assert r3["status"] == expected[r3["image_id"]], (r3["image_id"], r3["error"])
        if r3["status"] != "ok":
            assert r3["error"] == r2["error"]  # the decode reason, carried through every level
            assert r3["dense_caption"] is None
            continue
        sg = r3["scene_graph"]
        assert sg["text"].strip()
        ids = {o["id"] for o in r2["objects"] + r2["floating_objects"]}
        assert {i for layer in sg["layers"] for group in layer["groups"] for i in group} <= ids
        dc = r3["dense_caption"]
        assert dc["caption"].strip()
        attempts = dc["attempts"]
        assert 1 <= len(attempts) <= max_attempts
        assert dc["caption"] in [a["caption"] for a in attempts]
        assert dc["verified"] == any(a["passed"] for a in attempts)
        if not dc["verified"]:
            # regenerated until the limit, then kept and flagged; or stopped because the LLM's checklist
            # could not be read (the random tiny Llama's usually cannot), which says so
            assert len(attempts) == max_attempts or "could not verify" in attempts[-1]["reasoning"]
        for a in attempts[:-1]:
            assert not a["passed"]  # a passing caption is never regenerated
        for d in dc["details"]:
            start, end = d["tokens_positive"]
            assert dc["caption"][start:end] == d["phrase"]
            assert d["ids"] and set(d["ids"]) <= ids


def test_levels_3_4_give_every_good_image_a_checked_caption_and_context(combined):
    _, out, expected = combined
    level2, level3, level4 = rows(out, 2), rows(out, 3), rows(out, 4)
    _check_level3(level2, level3, expected)
    assert [r["image_id"] for r in level4] == sorted(expected)
    for r4 in level4:
        if expected[r4["image_id"]] == "ok":
            assert r4["status"] == "ok" and r4["additional_context"].strip(), r4["error"]
        else:
            assert r4["status"] == "error" and r4["additional_context"] is None
    assert {p["role"] for r in level3 for p in r["provenance"]} == {"llm"}
    st = output_status(str(out))["levels"]
    assert [st[f"level{lv}"]["done"] for lv in (1, 2, 3, 4)] == [6, 6, 6, 6]


def test_levels_3_4_alone_over_level2_reproduce_the_combined_run(combined, tmp_path):
    _, both, _ = combined
    out = copy_levels(both, tmp_path / "alone", (1, 2))
    before = {p.relative_to(out): p.read_bytes() for p in out.glob("level[12]/*.parquet")}
    # separate pools (the combined run co-located the LLM and caption grounding): the same rows
    cfg = load_config(TINY, {"input": {"shard_size": 1}, "runtime": {"colocate": False}, **GREEDY, **FAST_LLM})
    summary = run_pipeline(cfg, RunOptions(input=None, output=str(out), levels=(3, 4)))
    assert summary.images == 6 and len(summary.shards_committed) == 6
    assert {p.relative_to(out): p.read_bytes() for p in out.glob("level[12]/*.parquet")} == before
    # sampling is seeded per request: the same text whatever the batches held
    for lv in (3, 4):
        for alone, combined_row in zip(rows(out, lv), rows(both, lv)):
            differ = sorted(k for k in alone if k != "provenance" and alone[k] != combined_row[k])
            assert not differ, (lv, alone["image_id"], {k: (alone[k], combined_row[k]) for k in differ})
    again = run_pipeline(cfg, RunOptions(input=None, output=str(out), levels=(1, 2, 3, 4)))
    assert again.images == 0


def test_a_dead_llm_endpoint_fails_levels_3_4_per_image_and_keeps_levels_1_2(combined, tmp_path: Path):
    _, both, expected = combined
    out = copy_levels(both, tmp_path / "dead", (1, 2))
    before = {p.relative_to(out): p.read_bytes() for p in out.glob("level[12]/*.parquet")}
    cfg = load_config(TINY)
    cfg.level3.llm = LLMSpec(  # nothing listens on port 9
        name="llama", backend="http", checkpoint="tiny-llama", resources={"num_cpus": 0.1},
        # credentials in the URL (loopback: plain http allowed) must never reach rows, manifest, report
        endpoint={"url": "http://grand:sk-SECRET1@127.0.0.1:9/v1?api_key=sk-SECRET2", "max_retries": 1,
                  "backoff_s": 0.01, "timeout_s": 5},
    )
    summary = run_pipeline(cfg, RunOptions(input=None, output=str(out), levels=(3, 4)))
    assert summary.images == 6 and summary.ok == 0
    texts = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"]  # manifest, reports
    assert texts and not [p for p in texts if b"sk-SECRET" in p.read_bytes()]
    assert not [r for lv in (3, 4) for r in rows(out, lv) if "sk-SECRET" in json.dumps(r, default=str)]
    assert {p.relative_to(out): p.read_bytes() for p in out.glob("level[12]/*.parquet")} == before
    for lv in (3, 4):
        for r in rows(out, lv):
            assert r["status"] == "error"
            if expected[r["image_id"]] == "ok":
                assert r["error"].startswith("llm 'llama'") and "127.0.0.1:9" in r["error"], r["error"]
    st = output_status(str(out))["levels"]["level3"]
    assert st["done"] == 6 and st["errors"] == 6
