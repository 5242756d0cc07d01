"""Where the level-1 steps run: one streaming Ray Data pipeline over every pending shard.

    planned shards -> read (tasks) -> decode/validate (tasks) -> taggers -> detectors (actor pools)
      -> vote (tasks) -> segmenter -> depth (actor pools) -> assemble (tasks) -> driver: ShardSink

Each model step is an actor pool (`map_batches` with a callable class and ActorPoolStrategy);
CPU steps are tasks with fractional CPUs so that reads and writes always find a slot, even on a
2-CPU laptop. The driver commits a shard as soon as all of its rows are through, so a crash loses
at most the shards in flight, and the next run skips every committed shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from grand.config import ConfigError, ModelSpec, PipelineConfig
from grand.io.manifest import Manifest, PlanMismatchError, load_plan, save_plan
from grand.io.output import OutputDir
from grand.io.sink import ShardSink, error_reason, shard_counts
from grand.schema import LEVEL1_SCHEMA, DepthStats, Level1Row, ModelProvenance, ObjectRecord
from grand.runtime import stages

log = logging.getLogger("grand.run")


class RunError(RuntimeError):
    """The run stopped before every pending shard was committed; committed shards are kept."""


@dataclass
class RunOptions:
    input: str
    output: str
    force: bool = False
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or a local Ray
    max_shards: int | None = None  # process at most this many pending shards (smoke tests)
    progress_interval_s: float = 5.0
    ray_progress_bars: bool | None = None  # None: only when stderr is a terminal
    check_resources: bool = True
    fault_rate: float = 0.0  # opt-in fault injection: model actors die in this fraction of batches


@dataclass
class RunSummary:
    output: str
    shards_total: int
    shards_skipped: int
    shards_committed: list[str] = field(default_factory=list)
    images: int = 0
    ok: int = 0
    errors: int = 0
    error_reasons: dict = field(default_factory=dict)
    seconds: float = 0.0
    first_row_s: float | None = None  # seconds from start until the first finished row (startup cost)
    step_images_per_s: dict = field(default_factory=dict)  # per model step, per actor busy second

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [
            f"output: {self.output}",
            f"shards: {len(self.shards_committed)} committed this run, {self.shards_skipped} already done, "
            f"{self.shards_total} planned",
            f"images: {self.images} processed ({self.ok} ok, {self.errors} errors) in {self.seconds:.1f}s "
            f"= {self.images_per_s:.2f} images/s",
        ]
        if self.step_images_per_s:
            lines.append("per-actor images/s (busy time): "
                         + ", ".join(f"{s} {r:.2f}" for s, r in self.step_images_per_s.items()))
        for reason, count in self.error_reasons.items():
            lines.append(f"  {count:6d} x {reason}")
        return "\n".join(lines)


def _normalise_input(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def plan_output(cfg: PipelineConfig, out: OutputDir, input_uri: str):
    """The shard plan of this output folder: made on the first run, reused afterwards."""
    from grand.io.sources import plan_shards

    input_uri = _normalise_input(input_uri)
    existing = load_plan(out)
    if existing is not None:
        planned_input, shards = existing
        if planned_input != input_uri:
            raise PlanMismatchError(
                f"{out.uri} holds a run planned for input {planned_input}, not {input_uri}; "
                "use another --output folder (or the same --input)"
            )
        return shards
    shards = plan_shards(input_uri, cfg.input)
    save_plan(out, input_uri, shards)
    return shards


def provenance(cfg: PipelineConfig) -> list[dict]:
    out = []
    for role, specs in (
        ("tagger", cfg.level1.taggers),
        ("detector", cfg.level1.detectors),
        ("segmenter", [cfg.level1.segmenter] if cfg.level1.segmenter else []),
        ("depth", [cfg.level1.depth] if cfg.level1.depth else []),
    ):
        for s in specs:
            out.append(dataclasses.asdict(ModelProvenance(role, s.name, s.backend, s.checkpoint)))
    return out


def step_plan(cfg: PipelineConfig) -> list[tuple[str, ModelSpec | None]]:
    """The level-1 steps in order: taggers, detectors, vote (CPU, no model), segmenter, depth."""
    l1 = cfg.level1
    plan: list[tuple[str, ModelSpec | None]] = [("tagger", t) for t in l1.taggers]
    plan += [("detector", d) for d in l1.detectors] + [("vote", None)]
    plan += [("segmenter", l1.segmenter)] if l1.segmenter else []
    plan += [("depth", l1.depth)] if l1.depth else []
    return plan


def model_steps(cfg: PipelineConfig) -> list[tuple[str, ModelSpec]]:
    """(role, spec) of each actor-pool step in pipeline order."""
    return [(role, spec) for role, spec in step_plan(cfg) if spec is not None]


def check_cluster_resources(cfg: PipelineConfig, cluster: dict) -> None:
    """Fail in seconds, naming the step, when the actor pools cannot all fit: Ray would wait forever."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    need_cpu = cfg.runtime.cpu_task_num_cpus  # at least one CPU task must always fit beside the pools
    need_gpu = 0.0
    for role, spec in model_steps(cfg):
        r = spec.resources
        if r.num_gpus > 0 and gpus < r.num_gpus:
            raise ConfigError(
                f"{role} '{spec.name}' asks for num_gpus={r.num_gpus} per actor but the Ray cluster has "
                f"{gpus:g} GPUs; set its resources.num_gpus to 0 (CPU) or run on a GPU cluster (--address)"
            )
        need_cpu += r.num_cpus * r.pool_size
        need_gpu += r.num_gpus * r.pool_size
    if need_gpu > gpus + 1e-9:
        raise ConfigError(
            f"the actor pools need {need_gpu:g} GPUs in total (sum of pool_size x num_gpus) but the cluster "
            f"has {gpus:g}; lower pool_size or num_gpus fractions"
        )
    if need_cpu > cpus + 1e-9:
        raise ConfigError(
            f"the actor pools need {need_cpu:g} CPUs in total (sum of pool_size x num_cpus, plus "
            f"runtime.cpu_task_num_cpus={cfg.runtime.cpu_task_num_cpus:g} for reading and writing) but the "
            f"cluster has {cpus:g}; lower resources.num_cpus (fractions such as 0.25 are fine)"
        )


def _resolve_checkpoint(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """Resolve each checkpoint once in the driver: tiny test checkpoints are built here (actors never
    race to build them) and, offline, missing weights fail before any actor starts."""
    from grand.models.loading import preflight_checkpoint

    path = preflight_checkpoint(spec, base_dir)
    return spec.model_copy(update={"checkpoint": path}) if Path(path).exists() else spec


def assemble_level1(batch: dict, provenance_rows: list[dict]) -> dict:
    """Last CPU step: one complete output record per row (JSON, typed by the sink)."""
    records = []
    n = len(batch["image_id"])
    for i in range(n):
        ok = batch["status"][i] == "ok"
        best = stages.best_tag_scores(batch["tags"][i]) if ok and "tags" in batch else {}
        objects = json.loads(batch["objects"][i]) if ok else []
        floating = json.loads(batch["floating_objects"][i]) if ok else []
        depth = json.loads(batch["depth_stats"][i]) if ok and "depth_stats" in batch else None
        row = Level1Row(
            image_id=str(batch["image_id"][i]),
            source=str(batch["source"][i]),
            shard=str(batch["shard"][i]),
            index=int(batch["index"][i]),
            status=str(batch["status"][i]),
            error=str(batch["error"][i]) or None,
            width=int(batch["width"][i]) or None,
            height=int(batch["height"][i]) or None,
            tags=list(best),
            tag_scores=[round(float(s), 5) for s in best.values()],
            objects=[ObjectRecord(**o) for o in objects],
            floating_objects=[ObjectRecord(**o) for o in floating],
            depth_stats=DepthStats(**depth) if depth else None,
            provenance=[ModelProvenance(**p) for p in provenance_rows],
        )
        records.append(json.dumps(dataclasses.asdict(row)))
    step_seconds = list(batch["step_seconds"]) if "step_seconds" in batch else ["{}"] * n
    return {"shard": list(batch["shard"]), "index": list(batch["index"]), "record": records, "step_seconds": step_seconds}


def resolve_checkpoints(cfg: PipelineConfig) -> dict[str, ModelSpec]:
    """Model name -> spec with its checkpoint resolved (see _resolve_checkpoint)."""
    return {spec.name: _resolve_checkpoint(spec, cfg.base_dir) for _, spec in model_steps(cfg)}


def build_dataset(cfg: PipelineConfig, shards, fault_rate: float = 0.0, resolved: dict | None = None):
    """The lazy Ray Data pipeline over `shards` (nothing runs until it is iterated)."""
    import ray.data

    resolved = resolved or resolve_checkpoints(cfg)

    cpu = cfg.runtime.cpu_task_num_cpus
    base_dir = str(cfg.base_dir)
    items = [{"shard_spec": json.dumps(s.to_dict())} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(stages.read_shard_rows, fn_kwargs={"input_cfg": cfg.input}, num_cpus=cpu)
    ds = ds.map_batches(
        stages.prepare_images, fn_kwargs={"max_pixels": cfg.input.max_image_pixels},
        batch_size=16, batch_format="numpy", num_cpus=cpu,
    )

    def model_step(ds, role: str, spec: ModelSpec):
        r = spec.resources
        # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1).
        return ds.map_batches(
            stages.STEP_FOR_ROLE[role],
            fn_constructor_kwargs={"spec": resolved[spec.name], "base_dir": base_dir, "fault_rate": fault_rate},
            compute=ray.data.ActorPoolStrategy(size=r.pool_size),
            batch_size=spec.batch_size, batch_format="numpy",
            num_cpus=r.num_cpus, num_gpus=r.num_gpus or None,
            memory=int(r.memory_gb * 2**30) if r.memory_gb else None,
        )

    for role, spec in step_plan(cfg):
        if role == "vote":
            ds = ds.map_batches(
                stages.vote, fn_kwargs={"detectors": cfg.level1.detectors, "voting": cfg.level1.voting},
                batch_size=64, batch_format="numpy", num_cpus=cpu,
            )
        else:
            ds = model_step(ds, role, spec)
    ds = ds.map_batches(
        assemble_level1, fn_kwargs={"provenance_rows": provenance(cfg)},
        batch_size=64, batch_format="numpy", num_cpus=cpu,
    )
    return ds


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Workers inherit the driver's environment for local Ray; keep their own logs quiet.
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


class _Progress:
    def __init__(self, total_images: int, total_shards: int, interval: float, stream=sys.stderr):
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
            f"[grand] level1: shards {self.shards}/{self.total_shards} committed | images "
            f"{self.images}/{self.total_images} | {rate:.2f} images/s | errors {self.errors} | {elapsed:.0f}s",
            file=self.stream, flush=True,
        )
        if self.step_seconds:
            steps = ", ".join(f"{s} {r:.1f}" for s, r in self.step_rates().items())
            print(f"[grand]   per-actor images/s: {steps}", file=self.stream, flush=True)


def run_level1(cfg: PipelineConfig, opts: RunOptions) -> RunSummary:
    """Run level 1 over every shard of the input not yet committed in the output folder."""
    start = time.monotonic()
    out = OutputDir(opts.output)
    shards = plan_output(cfg, out, opts.input)
    manifest = Manifest.load(out)
    committed = out.committed_shards(1)
    _reconcile(manifest, out, committed)
    pending = [s for s in shards if opts.force or s.name not in committed]
    if opts.max_shards is not None:
        pending = pending[: opts.max_shards]
    summary = RunSummary(output=out.uri, shards_total=len(shards), shards_skipped=len(shards) - len(pending))
    if not pending:
        print(f"[grand] all {len(shards)} shards of {out.uri} are committed; nothing to do (--force redoes them)",
              file=sys.stderr)
        return summary

    resolved = resolve_checkpoints(cfg)  # fails fast on missing weights, before Ray starts
    init_ray(opts.address)
    import ray
    from ray.data import DataContext

    if opts.check_resources:
        check_cluster_resources(cfg, ray.cluster_resources())
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if opts.ray_progress_bars is None else opts.ray_progress_bars

    run = manifest.start_run({
        "command": "run", "levels": [1], "input": _normalise_input(opts.input),
        "config": json.loads(cfg.model_dump_json()), "models": provenance(cfg),
        "versions": package_versions(), "shards": [s.name for s in pending],
    })
    manifest.save()
    sink = ShardSink(out, 1, LEVEL1_SCHEMA, {s.name: s.num_images for s in pending}, manifest)
    total_images = sum(s.num_images for s in pending)
    progress = _Progress(total_images, len(pending), opts.progress_interval_s)
    reasons: Counter = Counter()
    print(f"[grand] level1: {len(pending)} shards ({total_images} images) to do, "
          f"{summary.shards_skipped} already committed -> {out.uri}", file=sys.stderr, flush=True)
    try:
        ds = build_dataset(cfg, pending, opts.fault_rate, resolved)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if summary.first_row_s is None:
                summary.first_row_s = time.monotonic() - start
            for shard, index, record, times in zip(batch["shard"], batch["index"], batch["record"], batch["step_seconds"]):
                rec = json.loads(record)
                if not sink.add(str(shard), int(index), rec):
                    continue  # a duplicate delivered by a retried task
                progress.add_step_times(json.loads(times))
                summary.images += 1
                if rec["status"] == "ok":
                    summary.ok += 1
                else:
                    summary.errors += 1
                    reasons[error_reason(rec["error"] or "")] += 1
            progress.update(summary.images, summary.errors, len(sink.committed))
        missing = sink.incomplete()
        if missing:
            raise RunError(f"the pipeline ended with incomplete shards (rows received): {missing}")
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        for s in pending:
            if s.name not in sink.committed:
                manifest.record_failure(1, s.name, reason[:2000])
        manifest.finish_run(run, "failed", error=reason[:2000], committed=sink.committed)
        manifest.save()
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise RunError(
            f"level 1 stopped after committing {len(sink.committed)} of {len(pending)} shards: {reason}\n"
            "Committed shards are kept; run the same command again to resume."
        ) from err
    if progress.last < time.monotonic() - 0.5:  # avoid repeating a line printed just now
        progress.print()
    summary.shards_committed = list(sink.committed)
    summary.error_reasons = dict(reasons.most_common())
    summary.step_images_per_s = {k: round(v, 3) for k, v in progress.step_rates().items()}
    summary.seconds = time.monotonic() - start
    manifest.finish_run(run, "succeeded", committed=sink.committed, images=summary.images, ok=summary.ok,
                        errors=summary.errors, seconds=round(summary.seconds, 2), duplicates_dropped=sink.duplicates,
                        step_images_per_s=summary.step_images_per_s)
    manifest.save()
    return summary


def _reconcile(manifest: Manifest, out: OutputDir, committed: set[str]) -> None:
    """A crash between a shard's rename and the manifest update leaves a committed file without an
    entry: count it from the file itself so that status stays true."""
    import pyarrow.parquet as pq

    changed = False
    for shard in committed:
        entry = manifest.shard_entry(1, shard)
        if entry and entry.get("state") == "committed":
            continue
        with out.fs.open(out.shard_path(1, shard), "rb") as f:
            table = pq.read_table(f, columns=["status", "error"])
        manifest.record_commit(1, shard, **shard_counts(table["status"].to_pylist(), table["error"].to_pylist()))
        changed = True
    if changed:
        manifest.save()


def package_versions() -> dict:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for pkg in ("grand", "ray", "torch", "transformers", "pyarrow", "pycocotools", "onnxruntime", "numpy", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["host"] = os.uname().nodename
    return versions
