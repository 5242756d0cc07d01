"""Pipeline throughput: the Ray pipeline against the same models called in a plain single-process
loop on the same images, in the same run (so the ratio is meaningful on any machine), plus peak memory.

    .venv/bin/python benchmarks/level1.py                         # level 1, pipelines/tiny.yaml, tinycoco x2
    .venv/bin/python benchmarks/level1.py --levels 1,2            # levels 1 and 2
    .venv/bin/python benchmarks/level1.py --levels 1,2,3,4 --repeat 1   # all four (LLM levels included)
    .venv/bin/python benchmarks/level1.py --config pipelines/grand.yaml --images /data/sample --repeat 1

The baseline runs exactly the pipeline's step classes (grand.runtime.stages, level2_stages, level34_stages) in
order, in this process, one batch at a time: it measures what Ray adds or saves, not different code.
Results are printed as a Markdown table row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grand.config import load_config  # noqa: E402
from grand.io.sources import plan_shards  # noqa: E402
from grand.runtime import level2_stages, level34_stages, stages  # noqa: E402
from grand.runtime.pipeline import (  # noqa: E402
    STEP_CLASSES, RunOptions, _resolve_checkpoint, assemble_level1, level2_plan, llm_plan, model_steps, parse_levels,
    provenance, run_pipeline, step_plan,
)


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Ray workers included), sampled."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            # local Ray's raylet / workers are not always our children: count processes of our session
            self.peak = max(self.peak, total + _ray_workers_rss(me))
            self._stop.wait(self.interval)


def _ray_workers_rss(me: psutil.Process) -> int:
    own = {me.pid, *(c.pid for c in me.children(recursive=True))}
    total = 0
    for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
        if p.pid in own:
            continue
        cmd = " ".join(p.info.get("cmdline") or [])
        if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "default_worker.py" in cmd:
            total += p.info["memory_info"].rss if p.info.get("memory_info") else 0
    return total


def copy_images(src: Path, dest: Path, repeat: int) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for r in range(repeat):
        for p in files:
            shutil.copyfile(p, dest / f"r{r}_{p.name}")
    return len(files) * repeat


def plain_loop(cfg, folder: Path, levels: tuple[int, ...]) -> tuple[int, float]:
    """The same steps, in this process, batch after batch; model loading excluded from the time."""
    plan = step_plan(cfg)
    plan2 = level2_plan(cfg) if 2 in levels else []
    steps = {spec.name: STEP_CLASSES[role](_resolve_checkpoint(spec, cfg.base_dir), str(cfg.base_dir))
             for role, spec in plan + plan2 if spec is not None}
    if plan2:
        captioners = [c.name for c in cfg.level2.captioners]
        steps["phrases"] = level2_stages.PhraseStep(cfg.level2.phrases, captioners)
    llms = [level34_stages.LLMStep(_resolve_checkpoint(spec, cfg.base_dir), cfg.level3 if 3 in served else None,
                                   cfg.level4 if 4 in served else None, str(cfg.base_dir))
            for spec, served in llm_plan(cfg, levels)]
    grounder = level34_stages.CaptionGroundStep(cfg.level3, cfg.level2.phrases.spacy_model) if 3 in levels else None
    rows = []
    for shard in plan_shards(str(folder), cfg.input):
        rows += list(stages.read_shard_rows({"shard_spec": json.dumps(shard.to_dict())}, cfg.input))
    batch_size = min(spec.batch_size for _, spec in plan if spec is not None)
    prov = provenance(cfg)
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        batch = stages.prepare_images({k: [r[k] for r in chunk] for k in chunk[0]}, cfg.input.max_image_pixels)
        for role, spec in plan:
            if role == "vote":
                batch = stages.vote(batch, cfg.level1.detectors, cfg.level1.voting)
            else:
                batch = steps[spec.name](batch)
        batch = assemble_level1(batch, prov)
        for role, spec in plan2:
            batch = steps["phrases" if role == "phrases" else spec.name](batch)
        if plan2:
            batch = level2_stages.assemble_level2(batch, captioners, provenance(cfg, 2))
        if llms:  # the pipeline's level 3-4 steps, in its order
            batch = level34_stages.as_stored_level2(batch)
            if grounder is not None:
                batch = level34_stages.scene_graph_step(batch, cfg.level3.scene_graph)
            for llm in llms:
                batch = llm(batch)
            if grounder is not None:
                batch = level34_stages.assemble_level3(grounder(batch), provenance(cfg, 3))
            if 4 in levels:
                level34_stages.assemble_level4(batch, provenance(cfg, 4))
    return len(rows), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "tiny.yaml"))
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "tinycoco" / "images"))
    ap.add_argument("--repeat", type=int, default=2, help="copies of the image set in the small run (the large has 2x)")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--levels", default="1", help="levels to run from level 1, e.g. 1, 1,2 or 1,2,3,4")
    args = ap.parse_args()
    levels = parse_levels(args.levels)
    if levels[0] != 1:
        ap.error("--levels must start at 1 (the loop reads images)")
    os.environ.setdefault("GRAND_CACHE", str(ROOT / ".cache" / "grand"))

    cfg = load_config(args.config, {"input": {"shard_size": args.shard_size}})
    work = Path(tempfile.mkdtemp(prefix="grand-bench-"))
    try:
        n = copy_images(Path(args.images), work / "small", args.repeat)
        n2 = copy_images(Path(args.images), work / "large", 2 * args.repeat)
        for _, spec in model_steps(cfg, levels):
            _resolve_checkpoint(spec, cfg.base_dir)  # build tiny checkpoints outside every timing

        with PeakRSS() as loop_mem:
            n_loop, loop_s = plain_loop(cfg, work / "small", levels)
        # Two pipeline runs in one Ray session: each pays for its actors' start and model loading,
        # so the difference of their times is the cost of the extra n2 - n images alone.
        with PeakRSS() as pipe_mem:
            times = {}
            for name, count in (("small", n), ("large", n2)):
                t0 = time.perf_counter()
                summary = run_pipeline(cfg, RunOptions(input=str(work / name), output=str(work / f"out-{name}"),
                                                       levels=levels))
                times[name] = time.perf_counter() - t0
                assert summary.images == count, (summary.images, count)
        assert n_loop == n
    finally:
        shutil.rmtree(work, ignore_errors=True)

    loop_rate = n / loop_s
    wall_rate = n2 / times["large"]
    marginal = (n2 - n) / (times["large"] - times["small"])
    fixed = times["small"] - n / marginal
    print(f"\nimages: {n} and {n2}  cpus: {os.cpu_count()}  config: {Path(args.config).name}  levels: {args.levels}")
    print("| config, levels | plain loop img/s | pipeline img/s, wall (" + str(n2) + " images) | pipeline img/s, marginal | "
          "ratio marginal / loop | fixed cost per run s | peak RSS loop | peak RSS pipeline (all Ray processes) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {Path(args.config).name}, {args.levels} | {loop_rate:.2f} | {wall_rate:.2f} | {marginal:.2f} | {marginal / loop_rate:.2f} | "
          f"{fixed:.1f} | {loop_mem.peak / 2**30:.2f} GiB | {pipe_mem.peak / 2**30:.2f} GiB |")
    print(f"per-actor images/s of the large run (busy time): {summary.step_images_per_s}")


if __name__ == "__main__":
    main()
