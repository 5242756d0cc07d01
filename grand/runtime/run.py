"""Running a pass: one streaming Ray Data pipeline (grand.runtime.steps) per pass over the pending
shards (grand.runtime.plan), drained by the driver into one ShardSink per level, with progress and
failure bookkeeping; the run is recorded in the manifest and the run report (grand.runtime.report).

Each model step is an actor pool (or, with runtime.colocate, one actor per level); CPU steps are
tasks with fractional CPUs so that reads and writes always find a slot, even on a 2-CPU laptop. The
driver commits a shard as soon as all of its rows are through, so a crash loses at most the shards
in flight, and the next run skips every committed shard.
"""

from __future__ import annotations

import contextlib

import json
import logging
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from grand.config import ConfigError, PipelineConfig
from grand.io.errors import find_transient
from grand.io.manifest import Manifest, load_plan
from grand.io.output import OutputDir
from grand.io.sink import ShardSink, error_reason
from grand.runtime.batch import StepRuntime, parse_inject_crash
from grand.redact import redact_config
from grand.schema import SCHEMAS
from grand.runtime.plan import ALL_LEVELS, Pass, parse_levels, plan_output, plan_passes
from grand.runtime.report import package_versions, reconcile, save_run_report
from grand.runtime.steps import build_dataset, check_cluster_resources, colocate, operators, plan, provenance, resolve_checkpoints

log = logging.getLogger("grand.run")


class RunError(RuntimeError):
    """The run stopped before every pending shard was committed; committed shards are kept."""


@dataclass
class RunOptions:
    input: str | None  # None: the input this output folder was planned for
    output: str
    levels: tuple[int, ...] | str = (1,)
    force: bool = False
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or a local Ray
    max_shards: int | None = None  # process at most this many pending shards (smoke tests)
    progress_interval_s: float = 5.0
    ray_progress_bars: bool | None = None  # None: only when stderr is a terminal
    check_resources: bool = True
    fault_rate: float = 0.0  # opt-in fault injection: actors die on this fraction of batches' first start
    # testing aid: "STEP:IMAGE_ID" (or a list): that step's process exits hard whenever it meets that image
    inject_crash: tuple | list | str | None = None


@dataclass
class RunSummary:
    output: str
    shards_total: int
    shards_skipped: int
    shards_committed: list[str] = field(default_factory=list)  # at the last level of their pass
    levels: list[int] = field(default_factory=lambda: [1])
    images: int = 0
    ok: int = 0
    errors: int = 0
    error_reasons: dict = field(default_factory=dict)
    seconds: float = 0.0
    first_row_s: float | None = None  # seconds from start until the first finished row (startup cost)
    first_rows: int = 0  # rows of the first result (the steady-state rate counts the rest)
    last_row_s: float | None = None  # seconds from start until the last finished row
    peak_rss_gib: float | None = None  # this machine's Ray processes and the driver, sampled (local runs)
    colocated: bool = False
    actor_steps: tuple[int, int] | None = None  # (co-located, separate pools): actor processes at pool size 1
    step_images_per_s: dict = field(default_factory=dict)  # per model step, per actor busy second
    step_stats: dict = field(default_factory=dict)  # per model step: {"images": n, "busy_s": actor busy seconds}
    report: str | None = None  # this run's report (grand.runtime.report), beside the manifest

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float | None:
        """Images finished per second after the first result: the rate once every actor is up."""
        if self.first_row_s is None or self.last_row_s is None or self.last_row_s <= self.first_row_s:
            return None
        return (self.images - self.first_rows) / (self.last_row_s - self.first_row_s)

    def text(self) -> str:
        lines = [
            f"output: {self.output} (level{'s' if len(self.levels) > 1 else ''} {','.join(map(str, self.levels))})",
            f"shards: {len(self.shards_committed)} committed this run, {self.shards_skipped} already done, "
            f"{self.shards_total} planned",
            f"images: {self.images} processed ({self.ok} ok, {self.errors} errors) in {self.seconds:.1f}s "
            f"= {self.images_per_s:.2f} images/s",
        ]
        if self.first_row_s is not None:
            mem = f", peak memory {self.peak_rss_gib:.1f} GiB (driver + local Ray processes)" if self.peak_rss_gib else ""
            lines.append(f"start-up: first row after {self.first_row_s:.0f}s{mem}"
                         + ("; steps co-located, one actor per level (runtime.colocate)" if self.colocated else ""))
        if self.colocated and self.actor_steps:
            together, apart = self.actor_steps
            lines.append(f"co-located: {together} model actor processes instead of {apart} separate pools, so torch and "
                         f"its imports load {together} times, not {apart} (docs/benchmarks.md compares memory and start-up)")
        if self.step_images_per_s:
            lines.append("per-actor images/s (busy time): "
                         + ", ".join(f"{s} {r:.2f}" for s, r in self.step_images_per_s.items()))
        for reason, count in self.error_reasons.items():
            lines.append(f"  {count:6d} x {reason}")
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Workers inherit the driver's environment for local Ray; keep their own logs quiet.
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


class _Progress:
    def __init__(self, label: str, total_images: int, total_shards: int, interval: float, stream=sys.stderr):
        self.label = label
        self.total_images, self.total_shards, self.interval = total_images, total_shards, interval
        self.images = self.errors = self.shards = 0
        self.start = self.last = time.monotonic()
        self.stream = stream
        self.step_seconds: dict[str, float] = {}
        self.step_images: dict[str, int] = {}

    def add_step_times(self, times: dict[str, float]) -> None:
        for step, seconds in times.items():
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + seconds
            self.step_images[step] = self.step_images.get(step, 0) + 1

    def step_rates(self) -> dict[str, float]:
        """Images per second of actor busy time, per model step (divide by pool size for the pool)."""
        return {s: self.step_images[s] / t for s, t in self.step_seconds.items() if t > 0}

    def update(self, images: int, errors: int, shards: int) -> None:
        self.images, self.errors, self.shards = images, errors, shards
        if time.monotonic() - self.last >= self.interval:
            self.print()

    def print(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        print(
            f"[grand] {self.label}: shards {self.shards}/{self.total_shards} committed | images "
            f"{self.images}/{self.total_images} | {rate:.2f} images/s | errors {self.errors} | {elapsed:.0f}s",
            file=self.stream, flush=True,
        )
        if self.step_seconds:
            steps = ", ".join(f"{s} {r:.1f}" for s, r in self.step_rates().items())
            print(f"[grand]   per-actor images/s: {steps}", file=self.stream, flush=True)


class _PeakRSS:
    """Peak resident memory of the driver and its child processes (a local Ray's GCS, raylet and
    workers), sampled at most once per second while rows come in; on a cluster, the head's share."""

    def __init__(self):
        self.peak, self.last = 0, 0.0

    def sample(self) -> None:
        if time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        try:
            self.peak = max(self.peak, process_tree_rss())
        except Exception:  # memory is informative only; never fail a run over it
            pass


def process_tree_rss() -> int:
    """Resident bytes of this process and all its descendants."""
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_pipeline(cfg: PipelineConfig, opts: RunOptions) -> RunSummary:
    """Run `opts.levels` over every shard of the input not yet committed at those levels, holding the
    output folder's lock (grand.io.lock: a second run into it is refused at once)."""
    from grand.io.lock import OutputLock

    with OutputLock(OutputDir(opts.output)):
        return _run_pipeline(cfg, opts)


def _run_pipeline(cfg: PipelineConfig, opts: RunOptions) -> RunSummary:
    start = time.monotonic()
    levels = parse_levels(opts.levels)
    for lv in levels:
        if lv > 1 and getattr(cfg, f"level{lv}") is None:
            raise ConfigError(f"--levels includes {lv} but the config has no level{lv} section (see pipelines/tiny.yaml)")
    out = OutputDir(opts.output)
    shards = plan_output(cfg, out, opts.input, address=opts.address)  # may start Ray to plan in parallel
    manifest = Manifest.load(out)
    committed = {lv: out.committed_shards(lv) for lv in ALL_LEVELS}
    for lv in ALL_LEVELS:
        reconcile(manifest, out, committed[lv], lv)
    passes, missing = plan_passes(levels, shards, committed, opts.force)
    for base, names in missing.items():
        print(f"[grand] {len(names)} shards have no level-{base} output yet and are skipped (add {base} to "
              f"--levels to compute it): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}",
              file=sys.stderr, flush=True)
    if opts.max_shards is not None:
        budget = opts.max_shards
        for p in passes:
            p.shards, budget = p.shards[:budget], max(0, budget - len(p.shards))
        passes = [p for p in passes if p.shards]
    n_pending = sum(len(p.shards) for p in passes)
    summary = RunSummary(output=out.uri, shards_total=len(shards), shards_skipped=len(shards) - n_pending,
                         levels=list(levels))
    if not passes:
        print(f"[grand] nothing to do: level(s) {','.join(map(str, levels))} of {out.uri} are committed for every "
              "shard that can run (--force redoes them)", file=sys.stderr)
        return summary

    all_levels = tuple(sorted({lv for p in passes for lv in p.levels}))
    inject_crash = parse_inject_crash(opts.inject_crash)
    known = {n for p in passes for s in plan(cfg, p.levels) for n in (s.name, s.role)}
    for step, _ in inject_crash:
        if step not in known:
            raise ConfigError(f"--inject-crash {step}:...: no step or role {step!r} in this run; "
                              f"use one of: {', '.join(sorted(known))}")
    # fails fast on missing weights, before Ray starts
    resolved = resolve_checkpoints(cfg, all_levels)
    init_ray(opts.address)
    import ray
    from ray.data import DataContext

    cluster = ray.cluster_resources()
    if opts.check_resources:
        for p in passes:
            check_cluster_resources(cfg, cluster, p.levels)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if opts.ray_progress_bars is None else opts.ray_progress_bars
    if len(ray.nodes()) == 1:
        # one machine (a laptop, CI, the demo): Ray Data's "operator uses N MiB per worker" advice is
        # about cluster scheduling; the run summary reports this machine's peak memory instead
        with contextlib.suppress(AttributeError):
            ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1

    run = manifest.start_run({
        "command": "run", "levels": list(levels), "input": load_plan(out)[0],
        "config": redact_config(json.loads(cfg.model_dump_json())), "models": {f"level{lv}": provenance(cfg, lv) for lv in all_levels},
        "versions": package_versions(), "passes": [{"levels": list(p.levels), "shards": [s.name for s in p.shards]} for p in passes],
    })
    manifest.save()
    reasons: Counter = Counter()
    step_rates: dict[str, float] = {}
    runtime = StepRuntime(run_id=uuid.uuid4().hex[:12], attempts=cfg.runtime.step_attempts, fault_rate=opts.fault_rate,
                          inject_crash=inject_crash, output_uri=out.uri, base_dir=str(cfg.base_dir))
    summary.colocated = cfg.runtime.colocate
    if cfg.runtime.colocate:
        summary.actor_steps = tuple(sum(s.kind == "actor" for s in steps)
                                    for steps in (colocate(plan(cfg, all_levels)), plan(cfg, all_levels)))
    model_steps = [m for s in operators(cfg, all_levels) for m in s.model_steps]  # for the run report
    for p in passes:
        try:
            _run_pass(cfg, out, manifest, p, opts, runtime, resolved, summary, reasons, step_rates, start)
        except BaseException as err:
            reason = f"{type(err).__name__}: {err}"
            manifest.finish_run(run, "failed", error=reason[:2000], committed=summary.shards_committed)
            summary.error_reasons, summary.seconds = dict(reasons.most_common()), time.monotonic() - start
            save_run_report(out, manifest, run, summary, model_steps, cluster, reason[:2000])
            manifest.save()
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            raise RunError(
                f"level(s) {','.join(map(str, p.levels))} stopped after committing {len(summary.shards_committed)} "
                f"shard files: {reason}\nCommitted shards are kept; run the same command again to resume."
            ) from err
    summary.error_reasons = dict(reasons.most_common())
    summary.step_images_per_s = {k: round(v, 3) for k, v in step_rates.items()}
    summary.seconds = time.monotonic() - start
    manifest.finish_run(run, "succeeded", committed=summary.shards_committed, images=summary.images, ok=summary.ok,
                        errors=summary.errors, seconds=round(summary.seconds, 2),
                        step_images_per_s=summary.step_images_per_s)
    save_run_report(out, manifest, run, summary, model_steps, cluster)
    manifest.save()
    return summary


def take_block(block, sinks: dict[int, ShardSink], levels: tuple[int, ...]) -> list[tuple[bool, str, str | None, dict]]:
    """The driver's commit path for one block of finished rows: every level's sink gets the rows (the
    first copy of a retried row wins; a shard commits when complete). `record_l<N>` is each level's
    row as its shard stores it, built as Arrow in the workers (grand.runtime.columns): the sinks take
    it as it is, and only ids, the last level's status and error, and timings are read. Returns,
    per row, (fresh, status, error, step seconds)."""
    import pyarrow.compute as pc

    shards, indices = block.column("shard").to_pylist(), block.column("index").to_pylist()
    fresh = [sinks[lv].add_arrow(shards, indices, block.column(f"record_l{lv}")) for lv in levels][-1]
    last = block.column(f"record_l{levels[-1]}")
    statuses, errors = pc.struct_field(last, "status").to_pylist(), pc.struct_field(last, "error").to_pylist()
    times = [dict(t) for t in block.column("step_seconds").to_pylist()]
    return list(zip(fresh, statuses, errors, times))


def _run_pass(cfg, out, manifest, p: Pass, opts, runtime: StepRuntime, resolved, summary, reasons, step_rates,
              start) -> None:
    """Stream one pass and commit each of its shards at every level it computes. A row counts as ok
    when its last level is ok (level 2 carries level 1's error forward)."""
    expected = {s.name: s.num_images for s in p.shards}
    sinks = {lv: ShardSink(out, lv, SCHEMAS[lv], expected, manifest) for lv in p.levels}
    last = p.levels[-1]
    label = "level" + ",".join(map(str, p.levels)) if len(p.levels) == 1 else "levels " + ",".join(map(str, p.levels))
    total_images = sum(expected.values())
    progress = _Progress(label, total_images, len(p.shards), opts.progress_interval_s)
    images = errors = 0
    print(f"[grand] {label}: {len(p.shards)} shards ({total_images} images) to do -> {out.uri}",
          file=sys.stderr, flush=True)
    try:
        ds = build_dataset(cfg, p.shards, p.levels, runtime, resolved)
        memory = _PeakRSS()
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if summary.first_row_s is None:
                summary.first_row_s, summary.first_rows = time.monotonic() - start, block.num_rows
            summary.last_row_s = time.monotonic() - start
            memory.sample()
            summary.peak_rss_gib = max(summary.peak_rss_gib or 0.0, memory.peak / 2**30) or None
            rows = take_block(block, sinks, p.levels)
            for fresh, status, error, times in rows:
                if not fresh:
                    continue
                progress.add_step_times(times)
                images += 1
                summary.images += 1
                if status == "ok":
                    summary.ok += 1
                else:
                    errors += 1
                    summary.errors += 1
                    reasons[error_reason(error or "")] += 1
            progress.update(images, errors, len(sinks[last].committed))
        missing = sinks[last].incomplete()
        if missing:
            raise RunError(f"the pipeline ended with incomplete shards (rows received): {missing}")
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        # A shard whose input could not be read (grand.io.errors) is failed with that reason; the
        # others in flight were stopped by it. Nothing uncommitted is written: the next run retries.
        transient = find_transient(err)
        for lv in p.levels:
            for s in p.shards:
                if s.name not in sinks[lv].committed:
                    why = f"TransientReadError: {transient.reason}" if transient and transient.shard == s.name else (
                        f"stopped: shard {transient.shard} could not be read" if transient else reason)
                    manifest.record_failure(lv, s.name, why[:2000])
        if transient:
            raise RunError(f"shard {transient.shard}: {transient.reason}") from err
        raise
    finally:
        summary.shards_committed += sinks[last].committed
        for step, seconds in progress.step_seconds.items():  # for the run report
            stats = summary.step_stats.setdefault(step, {"images": 0, "busy_s": 0.0})
            stats["images"] += progress.step_images[step]
            stats["busy_s"] += seconds
    if progress.last < time.monotonic() - 0.5:  # avoid repeating a line printed just now
        progress.print()
    step_rates.update(progress.step_rates())


