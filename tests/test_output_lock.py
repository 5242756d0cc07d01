"""One writer per output folder (issue 13, item 6): a second run is refused at once naming the
holder; a dead holder's lock is taken over; the plan is created exclusively."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from grand.io.lock import OutputLock, OutputLockedError
from grand.io.manifest import save_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec


def test_second_lock_is_refused_naming_host_pid_and_start(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    with OutputLock(out) as held:
        with pytest.raises(OutputLockedError) as err:
            OutputLock(out).acquire()
        msg = str(err.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started {held.info['started']}" in msg
        assert "one run per output folder" in msg
    OutputLock(out).acquire().release()  # released: free again
    assert not (tmp_path / "out" / "_grand" / "lock.json").exists()


def test_heartbeat_keeps_the_lock_fresh_and_a_stale_one_is_taken_over(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    lock_file = tmp_path / "out" / "_grand" / "lock.json"
    with OutputLock(out, heartbeat_s=0.05):
        first = json.loads(lock_file.read_text())["heartbeat_unix"]
        deadline = time.time() + 10
        while json.loads(lock_file.read_text())["heartbeat_unix"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads(lock_file.read_text())["heartbeat_unix"] > first
    # a run on another host that stopped beating 10 minutes ago
    lock_file.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "2026-01-01T00:00:00Z",
                                     "heartbeat_unix": time.time() - 600, "token": "x"}))
    with pytest.raises(OutputLockedError, match="node-7"):
        OutputLock(out, stale_after_s=3600).acquire()
    with OutputLock(out, stale_after_s=300) as taker:
        assert json.loads(lock_file.read_text())["token"] == taker.token


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out" / "_grand").mkdir(parents=True)
    (tmp_path / "out" / "_grand" / "lock.json").write_text(json.dumps({
        "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat_unix": time.time(), "token": "x"}))
    lock = OutputLock(out).acquire()  # a fresh heartbeat, but its holder is gone: taken over at once
    assert json.loads((tmp_path / "out" / "_grand" / "lock.json").read_text())["token"] == lock.token != "x"
    lock.release()


def test_plan_is_created_exclusively(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    spec = [ShardSpec(name="s0", kind="folder", uri="/in", num_images=1, members=("a.jpg",))]
    save_plan(out, "/in", spec)
    with pytest.raises(FileExistsError):
        save_plan(out, "/other", spec)
    assert json.loads((tmp_path / "out" / "_grand" / "plan.json").read_text())["input"] == "/in"


def test_cli_run_into_a_held_folder_is_refused_at_once(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with OutputLock(out):
        done = subprocess.run([sys.executable, "-m", "grand.cli.main", "run", str(ROOT / "pipelines" / "tiny.yaml"),
                               "--input", str(tmp_path), "--output", str(tmp_path / "out")],
                              capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"pid {os.getpid()}" in done.stderr and "another grand run" in done.stderr
    assert not (tmp_path / "out" / "_grand" / "plan.json").exists()  # nothing planned or written
