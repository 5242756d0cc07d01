"""The output folder: where each file lives and how it is written so that a crash never leaves a
half-written file under its final name.

Layout of `<out>` (local path or any fsspec URI):
    level1/<shard>.parquet        one file per input shard and level, visible only when complete
    manifest.json                 committed shards (rows, ok, errors), runs (config, models, versions)
    _grand/plan.json              the shard plan made on the first run (created exclusively); later runs reuse it
    _grand/lock.json              the running run's lock: host, pid, start, heartbeat (grand.io.lock)
    _grand/tmp/                   in-progress files (removed on commit; leftovers are harmless)
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


class OutputDir:
    def __init__(self, uri: str):
        self.uri = str(uri)
        self.fs, root = fsspec.core.url_to_fs(self.uri)
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)

    # -- paths ----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def shard_path(self, level: int, shard: str) -> str:
        return self.path(f"level{level}", f"{shard}.parquet")

    @property
    def manifest_path(self) -> str:
        return self.path("manifest.json")

    @property
    def plan_path(self) -> str:
        return self.path("_grand", "plan.json")

    # -- reading --------------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read_json(self, path: str) -> dict | None:
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def committed_shards(self, level: int) -> set[str]:
        """Shard names whose level file exists; the rename at commit makes existence the truth."""
        folder = self.path(f"level{level}")
        if not self.fs.exists(folder):
            return set()
        names = set()
        for p in self.fs.ls(folder, detail=False):
            name = PurePosixPath(p).name
            if name.endswith(".parquet") and not name.startswith("."):
                names.add(name[: -len(".parquet")])
        return names

    def parquet_num_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    # -- atomic writing -------------------------------------------------------------------------
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write to a temp name in the same folder tree, fsync, then rename over `path`."""
        tmp = self.path("_grand", "tmp", f"{uuid.uuid4().hex}-{PurePosixPath(path).name}")
        self.fs.makedirs(str(PurePosixPath(tmp).parent), exist_ok=True)
        self.fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        if self.local:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX within one filesystem
            _fsync_dir(os.path.dirname(path))
        else:
            # Object stores have no rename; a single PUT of the final key is atomic there.
            self.fs.pipe_file(path, data)

    def create_json_exclusive(self, path: str, obj: dict) -> None:
        """Write `path` only if it does not exist (FileExistsError otherwise): O_EXCL locally, mode
        "xb" (a conditional PUT) on object stores."""
        data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode("utf-8")
        self.fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        if self.local:
            tmp = self.path("_grand", "tmp", f"{uuid.uuid4().hex}-{PurePosixPath(path).name}")
            self.fs.makedirs(str(PurePosixPath(tmp).parent), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # complete content under the final name, or FileExistsError
            finally:
                os.unlink(tmp)
            _fsync_dir(os.path.dirname(path))
        else:
            with self.fs.open(path, "xb") as f:
                f.write(data)

    def write_json_atomic(self, path: str, obj: dict) -> None:
        self.write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode("utf-8"))

    def write_table_atomic(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes_atomic(path, buf.getvalue())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
