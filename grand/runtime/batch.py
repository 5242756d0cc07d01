"""The one base of every pipeline step (model, VLM, LLM, spaCy and CPU steps alike): `BatchStep`.

A step gets a batch (grand.runtime.columns.Batch: typed columns, decoded on use), works on the rows it can (`rows`: by default those whose
`status` is ok) and writes its own columns. What the base adds, the same for every step:

- isolation: when the batch fails, its rows are retried one by one and the rows that still fail
  become error rows naming the step, in the step's level error column (`status`/`error` at levels
  1-2, `error_l3` / `error_l4` at levels 3-4);
- poison images: an image that kills the worker process (host OOM, a segfault in a decoder or a
  kernel) must not make Ray restart and retry forever. Each batch start is counted in Ray's GCS
  key-value store (`_Ledger`, one key per step and batch). A batch runs whole at most
  `runtime.step_attempts` times; its next start, in the fresh actor Ray restarts, goes image by
  image, marking each image before running it. An image marked but never finished killed the
  worker: it becomes one error row saying so, and the batch goes on without it;
- testing aids: `RunOptions.fault_rate` (the actor dies at random on a batch's first start, a
  transient crash Ray's restart and retry must absorb) and `RunOptions.inject_crash` (the process
  exits hard whenever the named step meets the named image, a poison image on demand);
- step timing: a batch's busy time shared among its rows (column `step_seconds`).

Outside Ray (unit tests, benchmarks/level1.py's plain loop) there is no ledger: the rest is the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import logging
import os
import random
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grand.runtime import columns

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("grand.stages")

POISON = "killed the"  # in every poison-image error (grand status groups errors by their text)


@dataclass(frozen=True)
class StepRuntime:
    """What every step of one run is told besides its own arguments (built by the driver)."""

    run_id: str = ""  # namespace of the poison ledger (unique per run)
    attempts: int = 2  # runtime.step_attempts: whole-batch starts before going image by image
    fault_rate: float = 0.0
    inject_crash: tuple[tuple[str, str], ...] = ()  # (step name or role, image id)
    output_uri: str | None = None  # for the read steps that start from a committed level
    base_dir: str | None = None

    def crashes(self, step: "BatchStep", image_id: str) -> bool:
        return any(image_id == img and target in (step.name, step.role) for target, img in self.inject_crash)


def parse_inject_crash(values) -> tuple[tuple[str, str], ...]:
    """`STEP:IMAGE_ID` strings (or pairs) -> ((step, image id), ...); the image id may hold ':'."""
    out = []
    for v in ([values] if isinstance(values, str) else values or ()):
        if isinstance(v, (tuple, list)):
            out.append((str(v[0]), str(v[1])))
            continue
        step, sep, image = str(v).partition(":")
        if not sep or not step or not image:
            raise ValueError(f"--inject-crash {v!r}: expected STEP:IMAGE_ID, e.g. segmenter:000000006818.jpg")
        out.append((step, image))
    return tuple(out)


def ok_rows(batch) -> list[int]:
    return [i for i, status in enumerate(batch["status"]) if status == "ok"]


def record_step_time(batch: dict, step: str, seconds: float, rows: list[int]) -> None:
    """Share a batch's busy time among its rows (column `step_seconds`, {step: seconds}), so the
    driver can report each step's images/s while the run goes on."""
    columns.ensure(batch, ["step_seconds"])
    col = batch["step_seconds"]
    for i in rows:
        col[i] = {**col[i], step: col[i].get(step, 0.0) + seconds / len(rows)}


class _Ledger:
    """Counts of batch starts and per-image marks of one step, in Ray's GCS key-value store: they
    outlive the actor process that a poison image kills, and a restarted actor on any node sees
    them. None outside Ray."""

    def __init__(self, run_id: str, step_key: str):
        from ray.experimental import internal_kv as kv

        self.kv, self.prefix = kv, f"grand/{run_id}/{step_key}/"

    @classmethod
    def open(cls, runtime: StepRuntime, step_key: str) -> "_Ledger | None":
        if not runtime.run_id:
            return None
        try:
            from ray.experimental import internal_kv

            if not internal_kv._internal_kv_initialized():
                return None
        except ImportError:
            return None
        return cls(runtime.run_id, step_key)

    def _get(self, key: str) -> str | None:
        v = self.kv._internal_kv_get((self.prefix + key).encode())
        return v.decode() if v is not None else None

    def _put(self, key: str, value: str) -> None:
        self.kv._internal_kv_put((self.prefix + key).encode(), value.encode(), overwrite=True)

    def start(self, batch_key: str) -> int:
        """Count one more start of this batch; returns the starts before this one."""
        before = int(self._get(batch_key) or 0)
        self._put(batch_key, str(before + 1))
        return before

    def image_state(self, image_key: str) -> str | None:
        return self._get("img/" + image_key)

    def mark_image(self, image_key: str, state: str) -> None:
        self._put("img/" + image_key, state)

    def forget(self, batch_key: str) -> None:
        self.kv._internal_kv_del((self.prefix + batch_key).encode())


def _row_key(batch: dict, i: int) -> str:
    return f"{batch['shard'][i]}:{batch['index'][i]}"


class BatchStep(ABC):
    """Base of every step. Subclasses set `name` / `role` / `level` (or take them from their spec)
    and implement `run_rows(batch, rows)`; optional hooks: `init_outputs` (create this step's
    columns for every row, error rows included), `rows` (which rows to run), `before` (per-batch
    preparation such as decoding images)."""

    name = "step"
    role = "step"
    level = 1
    reads: tuple[str, ...] = ()  # columns an optional earlier step may not have written (grand.runtime.columns)
    error_columns: tuple[str, ...] = ()  # () = status/error (levels 1-2); else e.g. ("error_l3",)
    timed = False  # record busy time in `step_seconds` (the actor steps)

    def __init__(self, runtime: StepRuntime | None = None):
        self.runtime = runtime or StepRuntime()
        self._ledger = _Ledger.open(self.runtime, f"l{self.level}.{self.name}")

    # -- hooks ------------------------------------------------------------------------------------
    def init_outputs(self, batch: dict, n: int) -> None:
        """Create this step's output columns so that every row has them, error rows included."""

    def rows(self, batch: dict) -> list[int]:
        return ok_rows(batch)

    def before(self, batch: dict, rows: list[int]) -> None:
        """Per-batch preparation of `rows` (runs outside the isolation: keep it failure-free)."""

    @abstractmethod
    def run_rows(self, batch: dict, rows: list[int]) -> None:
        """This step's work on `rows` (indices into `batch`): write its columns for those rows."""

    def after_error(self, batch: dict, i: int) -> None:
        """Row i just became an error row of this step (steps that write a record for every row,
        error rows included, write its error record here)."""

    # -- the shared machinery ---------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.name if self.name == self.role else f"{self.role} '{self.name}'"

    def fail(self, batch: dict, i: int, reason: str) -> None:
        if self.error_columns:
            for c in self.error_columns:
                batch[c][i] = reason
        else:
            batch["status"][i], batch["error"][i] = "error", reason
        self.after_error(batch, i)

    def __call__(self, batch) -> "pa.Table":
        """Run this step on a batch (a pyarrow Table as Ray hands it, or a dict of column lists);
        returns the typed Arrow table of its columns (grand.runtime.columns)."""
        batch = columns.Batch(batch)
        n = len(batch)
        columns.ensure(batch, self.reads + self.error_columns)
        self.init_outputs(batch, n)
        todo = self.rows(batch)
        started = time.perf_counter()
        if todo:
            self.before(batch, todo)
            key = hashlib.sha1("|".join(_row_key(batch, i) for i in range(n)).encode()).hexdigest()[:20]
            starts = self._ledger.start(key) if self._ledger else 0
            if starts == 0 and self.runtime.fault_rate > 0 and random.random() < self.runtime.fault_rate:
                log.warning("%s: fault injection: killing this process", self.label)
                os._exit(1)
            if starts >= self.runtime.attempts:
                log.warning("%s: batch of %d started %d times (its process died): running it image by image",
                            self.label, len(todo), starts)
                self._one_by_one(batch, todo, guarded=True)
            else:
                try:
                    self._run_checked(batch, todo)
                except Exception:
                    log.warning("%s: batch of %d failed, retrying image by image\n%s", self.label, len(todo),
                                traceback.format_exc())
                    self._one_by_one(batch, todo, guarded=False)
            if self._ledger:
                self._ledger.forget(key)
        if self.timed:
            record_step_time(batch, self.name, time.perf_counter() - started, todo)
        return batch.to_arrow()

    def _run_checked(self, batch: dict, rows: list[int]) -> None:
        for i in rows:
            if self.runtime.inject_crash and self.runtime.crashes(self, str(batch["image_id"][i])):
                log.warning("%s: inject_crash: image %s kills this process", self.label, batch["image_id"][i])
                os._exit(1)
        self.run_rows(batch, rows)

    def _one_by_one(self, batch: dict, rows: list[int], guarded: bool) -> None:
        for i in rows:
            image_key = _row_key(batch, i)
            if guarded and self._ledger:
                if self._ledger.image_state(image_key) == "started":  # it ran alone and never finished
                    self.fail(batch, i, f"{self.label}: this image {POISON} {self.name} worker process "
                                        f"({self.runtime.attempts} batch attempts, then alone); skipped")
                    continue
                self._ledger.mark_image(image_key, "started")
            try:
                self._run_checked(batch, [i])
            except Exception as err:
                self.fail(batch, i, f"{self.label}: {type(err).__name__}: {err}")
            if guarded and self._ledger:
                self._ledger.mark_image(image_key, "done")


def run_task_step(batch, step_class: type, kwargs: dict):
    """A CPU task's batch function: build the (cheap) step object and run it."""
    return step_class(**kwargs)(batch)


class AssembleStep(BatchStep):
    """Base of the CPU steps that write one complete record per row of their level (the level's
    grand.schema row as a dict, typed as the committed Parquet), in column `record_l<level>`: error
    rows get their record too, and a row whose assembly fails gets its error record."""

    def __init__(self, provenance_rows: list[dict], runtime: StepRuntime | None = None):
        super().__init__(runtime)
        self.provenance_rows = provenance_rows

    @property
    def record_column(self) -> str:
        return f"record_l{self.level}"

    def init_outputs(self, batch, n):
        columns.fill(batch, self.record_column)

    def rows(self, batch):
        return list(range(len(batch)))

    def after_error(self, batch, i):
        self.run_rows(batch, [i])
