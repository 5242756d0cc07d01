"""One writer per output folder: `<out>/_grand/lock.json`, created only if absent, kept fresh by a
heartbeat, taken over when stale.

Two runs into one folder would overwrite each other's plan and manifest. The lock file is created
exclusively (O_EXCL on local disk; mode "xb" on fsspec filesystems, which object stores implement
as a conditional PUT: s3fs with If-None-Match, gcsfs with ifGenerationMatch=0). A second run is
refused at once with the holder's host, pid and start time. The holder rewrites the heartbeat every
`heartbeat_s`; a lock whose heartbeat is older than `stale_after_s` (a run that was SIGKILLed, or a
lost node) is taken over, and so is a lock left on this host by a process that no longer exists.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from grand.io.output import OutputDir

log = logging.getLogger("grand.lock")

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: a live run never looks stale, a dead one waits 5 min


class OutputLockedError(RuntimeError):
    """Another run holds the output folder."""


class OutputLock:
    def __init__(self, out: OutputDir, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 command: str = "run") -> None:
        self.out, self.heartbeat_s, self.stale_after_s = out, heartbeat_s, stale_after_s
        self.path = out.path("_grand", "lock.json")
        self.token = uuid.uuid4().hex
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                     "started": _iso(time.time()), "token": self.token}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release ---------------------------------------------------------------------------
    def acquire(self) -> "OutputLock":
        self.out.fs.makedirs(self.out.path("_grand"), exist_ok=True)
        if not self._create():
            holder = self._read()
            why = self._stale_reason(holder)
            if why is None:
                raise OutputLockedError(self._refusal(holder))
            log.warning("taking over the lock of %s: %s (%s)", self.out.uri, why, _describe_holder(holder))
            self._remove_if(holder)
            if not self._create():  # another run took it over first
                raise OutputLockedError(self._refusal(self._read()))
        self._thread = threading.Thread(target=self._beat, name="grand-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder and holder.get("token") == self.token:
            self._remove_if(holder)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals -----------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        return json.dumps({**self.info, "heartbeat": _iso(time.time()), "heartbeat_unix": time.time()}).encode()

    def _create(self) -> bool:
        """Create the lock file if absent; False when it exists."""
        data = self._payload()
        if self.out.local:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        try:
            with self.out.fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False

    def _read(self) -> dict | None:
        try:
            with self.out.fs.open(self.path, "rb") as f:
                return json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}  # half-written by a crashed writer: judged by the file's age below

    def _stale_reason(self, holder: dict | None) -> str | None:
        if holder is None:
            return "it was released meanwhile"
        beat = holder.get("heartbeat_unix")
        if beat is None:
            beat = self._mtime()
        age = time.time() - float(beat)
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f}s (stale after {self.stale_after_s:.0f}s)"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return f"process {holder['pid']} on this host has exited"
        return None

    def _mtime(self) -> float:
        try:
            info = self.out.fs.info(self.path)
            m = info.get("mtime") or info.get("LastModified") or info.get("updated")
            return m.timestamp() if hasattr(m, "timestamp") else float(m)
        except Exception:
            return 0.0

    def _remove_if(self, holder: dict | None) -> None:
        try:
            self.out.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def _refusal(self, holder: dict | None) -> str:
        return (f"{self.out.uri} is being written by another grand run ({_describe_holder(holder)}); "
                f"one run per output folder. Wait for it to finish, or use another --output. If that run "
                f"is dead, its lock ({self.path}) is taken over {self.stale_after_s:.0f}s after its last "
                "heartbeat, or delete the file.")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read()
                if not holder or holder.get("token") != self.token:
                    log.error("lost the lock of %s to %s; stopping the heartbeat", self.out.uri,
                              _describe_holder(holder))
                    return
                self.out.write_bytes_atomic(self.path, self._payload())
            except Exception as err:  # a missed beat is not fatal: staleness needs ten of them
                log.warning("lock heartbeat for %s failed: %s", self.out.uri, err)


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "holder unknown"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, "
            f"last heartbeat {holder.get('heartbeat')}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
