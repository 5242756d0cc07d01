"""Pipeline throughput: the Ray pipeline against the same steps called in a plain single-process loop
on the same images, in the same run (so the ratio is meaningful on any machine), plus start-up and
peak memory, with separate actor pools and co-located (runtime.colocate).

    .venv/bin/python benchmarks/level1.py                         # level 1, pipelines/tiny.yaml, tinycoco x2
    .venv/bin/python benchmarks/level1.py --levels 1,2,3,4 --repeat 1 --runs 3   # all four levels
    .venv/bin/python benchmarks/level1.py --config pipelines/grand.yaml --images /data/sample --modes separate

The loop runs exactly the plan's steps (grand.runtime.steps.LocalRun: plan(cfg, levels), each step
on slices of its own batch size) in this process: it measures what Ray adds or saves, not different
code. Each pipeline run reports, from its own progress timestamps:
  - start-up: seconds until the first finished row (Ray, actor starts, model loading);
  - steady rate: images finished per second after the first result (not the difference of two
    runs, which a busy machine can turn negative);
  - wall rate: images / wall seconds at the run's size, what a laptop user sees.
Each mode runs --runs times; the table shows medians. Output: a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import shutil
import statistics
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
from grand.runtime.pipeline import RunOptions, init_ray, parse_levels, resolve_checkpoints, run_pipeline  # noqa: E402
from grand.runtime.run import process_tree_rss  # noqa: E402
from grand.runtime.steps import LocalRun  # noqa: E402


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
            total = process_tree_rss()
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
    """The plan's steps, in this process, 16 images at a time; model loading excluded from the time."""
    local = LocalRun(cfg, levels)
    rows = local.rows(plan_shards(str(folder), cfg.input))
    start = time.perf_counter()
    for i in range(0, len(rows), 16):
        local(rows[i:i + 16])
    return len(rows), time.perf_counter() - start


def pipeline_run(cfg, folder: Path, out: Path, levels, n: int) -> dict:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        summary = run_pipeline(cfg, RunOptions(input=str(folder), output=str(out), levels=levels))
        wall = time.perf_counter() - t0
    assert summary.images == n, (summary.images, n)
    return {"wall": n / wall, "steady": summary.steady_images_per_s or 0.0, "startup": summary.first_row_s,
            "rss": mem.peak / 2**30, "steps": summary.step_images_per_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "tiny.yaml"))
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "tinycoco" / "images"))
    ap.add_argument("--repeat", type=int, default=2, help="copies of the image set in each run")
    ap.add_argument("--runs", type=int, default=3, help="pipeline runs per mode (the table shows medians)")
    ap.add_argument("--modes", default="separate,colocated", help="separate, colocated or both (comma-separated)")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--levels", default="1", help="levels to run from level 1, e.g. 1, 1,2 or 1,2,3,4")
    ap.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)  # the loop, in a child process
    args = ap.parse_args()
    levels = parse_levels(args.levels)
    if levels[0] != 1:
        ap.error("--levels must start at 1 (the loop reads images)")
    os.environ.setdefault("GRAND_CACHE", str(ROOT / ".cache" / "grand"))

    base = load_config(args.config, {"input": {"shard_size": args.shard_size}})
    work = Path(tempfile.mkdtemp(prefix="grand-bench-"))
    results: dict[str, list[dict]] = {}
    try:
        n = copy_images(Path(args.images), work / "in", args.repeat)
        resolve_checkpoints(base, levels)  # build tiny checkpoints outside every timing
        if args.loop_only:
            with PeakRSS() as loop_mem:
                n_loop, loop_s = plain_loop(base, work / "in", levels)
            print(json.dumps({"n": n_loop, "seconds": loop_s, "rss": loop_mem.peak}))
            return
        # the loop in a child process: its models (and vLLM's engine) must not count in the pipeline's memory
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--loop-only"], check=True,
                               capture_output=True, text=True)
        loop = json.loads(child.stdout.strip().splitlines()[-1])
        loop_s, loop_peak = loop["seconds"], loop["rss"]
        assert loop["n"] == n
        init_ray(None)  # Ray's own start is paid once, before every timed run, not by the first one
        for k in range(args.runs):  # modes interleaved, so that a busy spell of the machine hits both
            for mode in args.modes.split(","):
                cfg = load_config(args.config, {"input": {"shard_size": args.shard_size},
                                                "runtime": {"colocate": mode == "colocated"}})
                results.setdefault(mode, []).append(pipeline_run(cfg, work / "in", work / f"out-{mode}-{k}", levels, n))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    loop_rate = n / loop_s
    print(f"\nimages: {n}  cpus: {os.cpu_count()}  config: {Path(args.config).name}  levels: {args.levels}  "
          f"runs per mode: {args.runs} (medians)")
    print("| config, levels, mode | plain loop img/s | steady img/s | ratio steady / loop | wall img/s "
          f"({n} images) | ratio wall / loop | start-up s (first row) | peak RSS loop | peak RSS pipeline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "steady", "startup", "rss")}
        print(f"| {Path(args.config).name}, {args.levels}, {mode} | {loop_rate:.2f} | {med['steady']:.2f} | "
              f"{med['steady'] / loop_rate:.2f} | {med['wall']:.2f} | {med['wall'] / loop_rate:.2f} | "
              f"{med['startup']:.1f} | {loop_peak / 2**30:.2f} GiB | {med['rss']:.2f} GiB |")
    for mode, runs in results.items():
        print(f"{mode}: per-actor images/s of the last run (busy time): {runs[-1]['steps']}")


if __name__ == "__main__":
    main()
