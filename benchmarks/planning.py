"""Planning a folder of tars: the sequential planner (every tar's headers read in the driver, one after
the other) against the parallel one (the same scans as Ray tasks, grand.runtime.plan.RayMapper), on
the same tars in the same run, so the ratio is meaningful on any machine. Both plans must be equal.

    .venv/bin/python benchmarks/planning.py                          # 300 local tars, local disk
    .venv/bin/python benchmarks/planning.py --latency-ms 2           # each uncached read costs a round trip
    .venv/bin/python benchmarks/planning.py --tars 1000 --images 20 --shard-size 8

On local disk a tar's scan is CPU work (parsing headers), so the speed-up is bounded by the CPUs Ray
has. On an object store it is waiting: `--latency-ms` models one with a filesystem that sleeps on
every open and every read that does not continue the previous one (a new range request, as an
uncached seek would cost on s3fs / gcsfs); the scans then overlap. The Ray times include starting
the task workers (ray.init itself is done before, as `grand run` does it anyway); "warm" repeats
with the workers up. Last line: `planning: <s> s sequential, <s> s with Ray tasks = <ratio>x for <N> tars`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grand.config import InputSpec  # noqa: E402
from grand.io.sources import plan_shards  # noqa: E402
from grand.runtime.plan import RayMapper  # noqa: E402

SLOW_PROTOCOL = "slowfile"


class _SlowFile:
    """A local file whose reads cost `latency` seconds unless they continue the previous read."""

    def __init__(self, f, latency: float) -> None:
        self._f, self._latency, self._next = f, latency, None

    def read(self, n: int = -1) -> bytes:
        if self._f.tell() != self._next:
            time.sleep(self._latency)
        data = self._f.read(n)
        self._next = self._f.tell()
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class SlowLocalFileSystem(LocalFileSystem):
    """Local files with a round-trip latency per open and per non-contiguous read (an object store
    without a block cache). The latency is a storage option, so the copy a Ray task unpickles has it."""

    protocol = SLOW_PROTOCOL

    def __init__(self, latency_ms: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.latency_s = latency_ms / 1000

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{SLOW_PROTOCOL}://"):
            path = path[len(SLOW_PROTOCOL) + 3 :]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        time.sleep(self.latency_s)
        return _SlowFile(super()._open(path, mode, **kwargs), self.latency_s)


def write_tars(root: Path, tars: int, images: int) -> None:
    """SA-1B-shaped tars: `images` small JPEG-named members, each with its .json sidecar."""
    root.mkdir(parents=True)
    for t in range(tars):
        with tarfile.open(root / f"sa_{t:06d}.tar", "w") as tar:
            for i in range(images):
                for name, data in ((f"sa_{t * images + i}.jpg", bytes(2000)),
                                   (f"sa_{t * images + i}.json", json.dumps({"annotations": []}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tars", type=int, default=300)
    ap.add_argument("--images", type=int, default=10, help="images per tar (each with a sidecar)")
    ap.add_argument("--shard-size", type=int, default=4, help="input.shard_size: tars become member ranges")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="modelled object-store round trip (0: local disk)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    ap.add_argument("--task-cpus", type=float, default=0.25, help="CPUs per planning task (runtime.cpu_task_num_cpus)")
    args = ap.parse_args()

    import fsspec
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="grand-plan-bench-"))
    try:
        write_tars(tmp / "tars", args.tars, args.images)
        cfg = InputSpec(shard_size=args.shard_size)
        uri = str(tmp / "tars")
        if args.latency_ms:
            # by module name, not __main__: the tasks import the class instead of unpickling a copy
            from benchmarks.planning import SlowLocalFileSystem as slow_fs

            fsspec.register_implementation(SLOW_PROTOCOL, slow_fs, clobber=True)
            fsspec.config.conf[SLOW_PROTOCOL] = {"latency_ms": args.latency_ms}
            uri = f"{SLOW_PROTOCOL}://{uri}"

        t0 = time.perf_counter()
        sequential = plan_shards(uri, cfg)
        seq_s = time.perf_counter() - t0

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")  # workers import grand
        mapper = RayMapper(None, args.task_cpus, parallel_after_s=0)  # every scan but the first as a task
        t0 = time.perf_counter()
        parallel = plan_shards(uri, cfg, mapper=mapper)
        par_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = plan_shards(uri, cfg, mapper=mapper)
        warm_s = time.perf_counter() - t0
        ray.shutdown()
        assert parallel == sequential == again, "the parallel plan differs from the sequential one"
        assert mapper.remote_items == args.tars - 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    where = f"{args.latency_ms:g} ms per uncached read" if args.latency_ms else "local disk"
    print(f"{args.tars} tars x {args.images} images (+ sidecars), shard_size {args.shard_size} -> "
          f"{len(sequential)} shards; {where}; Ray with {args.num_cpus} CPUs, {args.task_cpus} CPU per task")
    print(f"| {where} | {args.tars} | {seq_s:.2f} | {par_s:.2f} | {warm_s:.2f} | {seq_s / par_s:.1f}x |")
    print(f"planning: {seq_s:.2f} s sequential, {par_s:.2f} s with Ray tasks = {seq_s / par_s:.1f}x for {args.tars} tars")


if __name__ == "__main__":
    main()
