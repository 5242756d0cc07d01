"""Which shards need which levels: the output folder's shard plan, `--levels`, and the passes of a run
(grand.runtime.steps says what each pass runs, grand.runtime.run runs it)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from grand.config import ConfigError, PipelineConfig
from grand.io.manifest import PlanMismatchError, load_plan, save_plan
from grand.io.output import OutputDir

# Each level reads the one it builds on: level 2 adds to level 1's objects; levels 3 and 4 both
# read level 2 (the extra context needs no dense caption).
PREREQUISITE = {2: 1, 3: 2, 4: 2}
ALL_LEVELS = (1, 2, 3, 4)


def _normalise_input(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def plan_output(cfg: PipelineConfig, out: OutputDir, input_uri: str | None, address: str | None = None,
                parallel: bool = True):
    """The shard plan of this output folder: made on the first run, reused afterwards (input None:
    whatever input the folder was planned for). A new plan scans its containers (and lists a
    folder's subfolders) as Ray tasks on the cluster at `address` when there are several, unless
    not `parallel`."""
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
        _warn_other_shard_size(out, cfg)
        return shards
    mapper = RayMapper(address, cfg.runtime.cpu_task_num_cpus) if parallel else None
    shards = plan_shards(input_uri, cfg.input, mapper=mapper)
    save_plan(out, input_uri, shards, shard_size=cfg.input.shard_size)
    return shards


def _warn_other_shard_size(out: OutputDir, cfg: PipelineConfig) -> None:
    planned = (out.read_json(out.plan_path) or {}).get("shard_size")
    if planned is not None and planned != cfg.input.shard_size:
        print(f"[grand] {out.uri} was planned with input.shard_size {planned}; that plan is kept (the "
              f"config's {cfg.input.shard_size} applies to new output folders)", file=sys.stderr, flush=True)


# Planning goes parallel when the scans left would take the driver longer than this: starting Ray's
# task workers costs seconds, more than planning a few local tars (benchmarks/planning.py).
PARALLEL_AFTER_S = 10.0


class RayMapper:
    """Runs planning scans (grand.io.sources.Mapper): in the driver while the rest would take under
    `parallel_after_s` at the rate so far, and the rest as Ray tasks, a few scans per task so that
    hundreds of small tars do not pay a task each; with progress on stderr. Ray is started (or
    joined at `address`) only then: a few local tars plan without it."""

    TASKS_PER_CPU = 4  # enough tasks to keep every CPU busy when containers differ in size

    def __init__(self, address: str | None, num_cpus: float, parallel_after_s: float | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.parallel_after_s = PARALLEL_AFTER_S if parallel_after_s is None else parallel_after_s
        self.remote_items = 0  # scans the last call sent to Ray

    def __call__(self, fn, items: list, what: str) -> list:
        from grand.io.sources import PlanProgress

        progress = PlanProgress(what, len(items))
        results: list = []
        start = time.monotonic()
        while len(results) < len(items):
            results.append(fn(*items[len(results)]))
            progress.advance()
            left = len(items) - len(results)
            if left and (time.monotonic() - start) / len(results) * left > self.parallel_after_s:
                break
        rest = items[len(results):]
        self.remote_items = len(rest)
        if rest:
            results += self._remote(fn, rest, progress)
        progress.close()
        return results

    def _remote(self, fn, items: list, progress) -> list:
        import ray

        from grand.runtime.run import init_ray

        init_ray(self.address)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, math.ceil(len(items) / (self.TASKS_PER_CPU * cpus)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        task = ray.remote(num_cpus=self.num_cpus)(_scan_chunk)
        pending = {task.remote(fn, chunk): k for k, chunk in enumerate(chunks)}
        results: list = [None] * len(chunks)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    k = pending.pop(ref)
                    results[k] = _unwrap(ref)
                    progress.advance(len(chunks[k]))
        finally:
            for ref in pending:  # planning failed: the other scans are of no use
                ray.cancel(ref)
        return [r for chunk in results for r in chunk]


def _scan_chunk(fn, chunk: list) -> list:
    return [fn(*args) for args in chunk]


def _unwrap(ref):
    """ray.get, raising the scan's own error (ValueError naming the tar, TransientReadError) rather
    than Ray's wrapper with a remote traceback."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


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
class Pass:
    """One Ray Data pipeline of a run: `levels` computed over `shards`. The lowest level's input is
    the images (level 1) or a committed lower level read back from the output folder."""

    levels: tuple[int, ...]
    shards: list

    @property
    def reads(self) -> int:
        """The committed level this pass starts from (0: only the images)."""
        return PREREQUISITE.get(self.levels[0], 0)


def plan_passes(levels: tuple[int, ...], shards, committed: dict[int, set[str]], force: bool) -> tuple[list[Pass], dict[int, list[str]]]:
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
    passes = [Pass(lv, grouped) for lv, grouped in sorted(groups.items())]
    return passes, missing
