"""grand on a real multi-process Ray cluster on this machine: `ray start` nodes (node IP 127.0.0.1),
each with its own temp dir, ports and process group, token authentication on with a token of their
own (Ray 2.60; some Ray services listen on every interface whatever the node IP, the token guards
them), stopped by killing exactly the processes they started.

- a `ray job submit --working-dir <repo> -- grand run ...` batch job completes, as docs/cluster.md
  tells a user to run it;
- on a head + two worker nodes, a driver SIGKILLed after a few commits resumes, and in the resumed
  run a worker node hosting a model actor is SIGKILLed mid-run: the run still completes with every
  image exactly once (Ray restarts the actor on the surviving node and retries the lost work; the
  driver's sink drops duplicate rows).

Each test pays for Ray nodes, a driver and model actors starting on 2 shared cores, so both run
tiny level-1 configs (one tiny random-weight detector) over small generated images.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from grand.io.status import output_status
from kill_run import kill_after_commits

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def _port_block(n: int) -> int:
    """The first of n consecutive free TCP ports, above Ray's default worker ports (10002-19999) and
    below Linux's ephemeral range (32768-), so that no outgoing connection takes one meanwhile."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("", p))  # Ray binds some of them on every interface
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports")


class LocalRayCluster:
    """Ray nodes started by `ray start --block`, one process group each. Own temp dir per node, own
    ports (nothing on Ray's defaults, so other Ray sessions on this machine are untouched), token auth
    with a token of its own (RAY_AUTH_TOKEN, so ~/.ray is not touched). Never `ray stop`: that would
    stop every Ray on the machine."""

    WORKER_PORTS = 60  # worker processes per node, each with a port

    def __init__(self, root: Path):
        self.root = root
        self.nodes: list[subprocess.Popen] = []
        self.node_dirs: dict[int, Path] = {}
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `grand` / `python` for job entrypoints
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            # a dead node is noticed in ~5 s instead of ~30 s (Ray's defaults suit real networks)
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
        }
        self.gcs_port = self.dashboard_port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        base = _port_block(6 + self.WORKER_PORTS)
        temp = self.root / name
        temp.mkdir(parents=True)
        ports = [
            "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp), "--disable-usage-stats",
            "--node-manager-port", str(base), "--object-manager-port", str(base + 1),
            "--dashboard-agent-listen-port", str(base + 2), "--dashboard-agent-grpc-port", str(base + 3),
            "--runtime-env-agent-port", str(base + 4), "--metrics-export-port", str(base + 5),
            "--min-worker-port", str(base + 6), "--max-worker-port", str(base + 5 + self.WORKER_PORTS),
            "--object-store-memory", str(200 * 2**20),
        ]
        log = temp / "ray-start.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([RAY, "start", "--block", *args, *ports], env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        self.node_dirs[proc.pid] = temp
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return proc

    def start_head(self, num_cpus: int, dashboard: bool = False) -> subprocess.Popen:
        base = _port_block(3)
        self.gcs_port, self.dashboard_port = base, base + 1
        return self._start("head", [
            "--head", "--port", str(base), "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--include-dashboard", str(dashboard).lower(), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(base + 1), "--ray-client-server-port", str(base + 2),
        ])

    def add_worker(self, num_cpus: int) -> subprocess.Popen:
        return self._start(f"worker{len(self.nodes)}", [
            "--address", self.address, "--num-cpus", str(num_cpus), "--num-gpus", "0"])

    @staticmethod
    def processes(node: subprocess.Popen) -> list[psutil.Process]:
        """The node's processes: `ray start` and everything below it (raylet, agents, workers)."""
        try:
            top = psutil.Process(node.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, node: subprocess.Popen) -> None:
        """SIGKILL a node: its process group and every process under it, as a lost machine."""
        procs = self.processes(node)
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="grc-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    c = LocalRayCluster(root)
    try:
        yield c
    finally:
        c.stop()


def _write_config(path: Path, num_cpus: float, pool_size: int = 1, shard_size: int = 1) -> Path:
    """Level 1 with one tiny random-weight detector: the smallest real pipeline (read, decode, model
    actor pool, vote, assemble, commit)."""
    path.write_text(yaml.safe_dump({
        "name": "cluster-smoke",
        "input": {"shard_size": shard_size},
        "runtime": {"cpu_task_num_cpus": 0.15},
        "level1": {"detectors": [{"name": "rtdetr", "checkpoint": "tiny:rt-detr", "score_threshold": 0.2,
                                  "batch_size": 1, "resources": {"num_cpus": num_cpus, "pool_size": pool_size}}]},
    }))
    return path


def _write_images(folder: Path, n: int) -> list[str]:
    """n small PNGs (four distinct pictures, repeated under different names)."""
    folder.mkdir(parents=True)
    pictures = []
    for k in range(min(n, 4)):
        path = folder / f"img{k:03d}.png"
        Image.effect_mandelbrot((160 + 16 * k, 120), (-2, -1.2, 1, 1.2), 40 + k).convert("RGB").save(path)
        pictures.append(path.read_bytes())
    for k in range(4, n):
        (folder / f"img{k:03d}.png").write_bytes(pictures[k % 4])
    return [f"img{k:03d}.png" for k in range(n)]


def _assert_every_image_once(out: Path, names: list[str]) -> None:
    rows = pads.dataset(str(out / "level1"), format="parquet").to_table(columns=["image_id", "status"]).to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(names)  # each exactly once, nothing else
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"][:5]
    st = output_status(str(out))["levels"]["level1"]
    assert (st["done"], st["pending"], st["failed"], st["images_done"]) == (st["shards"], 0, 0, len(names))


def test_ray_job_submit_runs_grand_on_a_local_head(cluster, tmp_path):
    cluster.start_head(num_cpus=2, dashboard=True)
    names = _write_images(tmp_path / "in", 3)
    config = _write_config(tmp_path / "smoke.yaml", num_cpus=0.5)
    out = tmp_path / "out"
    # --working-dir uploads the checkout (Ray honours .gitignore: no .venv, .cache); the job's driver
    # and actors import grand from it, as a cluster without grand installed would.
    cmd = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}",
           "--working-dir", str(ROOT), "--runtime-env-json", '{"excludes": [".git"]}', "--",
           "grand", "run", str(config), "--input", str(tmp_path / "in"), "--output", str(out)]
    done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=300)
    # exit 0 = the job succeeded (its streamed log may end before the driver's last lines: the files
    # and the run report say what it did)
    assert done.returncode == 0 and "succeeded" in done.stdout + done.stderr, done.stdout[-4000:] + done.stderr[-2000:]
    _assert_every_image_once(out, names)
    status = subprocess.run([sys.executable, "-m", "grand.cli.main", "status", str(out)], capture_output=True,
                            text=True, env=cluster.env, timeout=60)
    assert "latest report: " in status.stdout and "(succeeded: 3 images, 0 errors" in status.stdout


def _actor_node(cluster: LocalRayCluster, nodes: list[subprocess.Popen], marker: str):
    """The first of `nodes` running a process whose title names `marker` (Ray titles an actor's
    process after its class), or None."""
    for node in nodes:
        for p in cluster.processes(node):
            try:
                if marker in " ".join(p.cmdline()):
                    return node
            except psutil.Error:
                continue
    return None


def test_driver_kill_and_worker_node_kill_still_give_every_image_once(cluster, tmp_path):
    # The head runs the driver only, as deploy/cluster.yaml's. Workers of 2 (logical) CPUs: the
    # pipeline's final column selection runs as tasks of 1 whole CPU, which must fit beside the actor.
    cluster.start_head(num_cpus=0)
    workers = [cluster.add_worker(num_cpus=2), cluster.add_worker(num_cpus=2)]
    # One detector actor (~60 images/s here) and enough images that it is still busy for seconds
    # after the resumed run's first commit: the CPU steps after it pass rows on in bundles of 64,
    # so shards (8 images) commit in waves of eight, the first one only after 64 images.
    names = _write_images(tmp_path / "in", 320)
    shards = len(names) // 8
    config = _write_config(tmp_path / "smoke.yaml", num_cpus=0.4, pool_size=1, shard_size=8)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "grand.cli.main", "run", str(config), "--input", str(tmp_path / "in"),
           "--output", str(out), "--address", cluster.address]
    level1 = out / "level1"

    # (1) the driver dies after a few commits (SIGKILL, no cleanup); the cluster stays up
    first = kill_after_commits(cmd, cluster.env, level1, min_files=2, timeout_s=240)
    assert 2 <= len(first) < shards

    # (2) the same command resumes; after its first new commit, the worker node running the detector
    # actor is killed (raylet, object store, workers: a lost machine). Ray restarts the actor on the
    # other node and redoes the lost work; the driver drops rows it already has.
    logs = {k: tmp_path / f"resumed.{k}" for k in ("out", "err")}  # files: a full pipe would stall the driver
    with open(logs["out"], "w") as fo, open(logs["err"], "w") as fe:
        driver = subprocess.Popen(cmd, env=cluster.env, stdout=fo, stderr=fe, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(level1.glob("*.parquet"))) <= len(first) and driver.poll() is None:
            assert time.monotonic() < deadline, "no shard committed by the resumed run"
            time.sleep(0.02)
        assert driver.poll() is None, "the resumed run ended before the node could be killed"
        victim = _actor_node(cluster, workers, "DetectStep")
        assert victim is not None, "no worker node runs a detector actor"
        at_kill = len(list(level1.glob("*.parquet")))
        cluster.kill(victim)
        assert at_kill < shards, "the run had finished before the node was killed"
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    stdout, stderr = logs["out"].read_text(), logs["err"].read_text()
    assert driver.returncode == 0, stderr[-4000:]
    assert f"{shards - len(first)} shards" in stderr  # the resumed run did only the rest
    for name, data in first.items():
        assert (level1 / name).read_bytes() == data  # committed shards are never rewritten
    _assert_every_image_once(out, names)
    assert f"images: {len(names) - 8 * len(first)} processed" in stdout
