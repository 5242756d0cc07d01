"""Start a `grand run` in its own process group and SIGKILL it (driver and the local Ray it
started) once enough shard files are committed: the crash the resume tests recover from."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_commits(cmd: list[str], env: dict, shard_dir: Path, min_files: int, timeout_s: float = 300) -> dict[str, bytes]:
    """Run `cmd`, kill it when `shard_dir` holds >= min_files Parquet files, and return the files
    committed at that moment (name -> bytes). Fails if the run ends before it could be killed."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shard_dir.is_dir() and len(list(shard_dir.glob("*.parquet"))) >= min_files:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return {p.name: p.read_bytes() for p in shard_dir.glob("*.parquet")}
