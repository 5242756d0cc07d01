"""Reading input bytes with bounds: every read is retried when the storage fails, and capped when the
content is hostile (grand.io.errors says which is which).

* `read_file_bytes`: one folder file, at most `max_bytes`; on local disk only regular files inside
  the input root are opened (no FIFO, device or socket; no symlink out of the root), so a read can
  neither block forever nor run until MemoryError.
* `open_container`: a tar or Parquet file as a seekable stream that reopens and seeks back after a
  transient error (a dropped object-store connection costs a retry, not the shard), decompressing
  .tar.gz / .bz2 / .xz with a byte budget.
* `walk_tar`: tar members with the checks that keep planning and reading finite.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from collections.abc import Callable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from grand.io.errors import ContentError, with_retries

# Members per tar beyond which planning refuses it: SA-1B tars hold ~22k members, WebDataset shards
# a few 10k; a million 512-byte headers is already a 0.5 GB tar of nothing.
MAX_TAR_MEMBERS = 1_000_000

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


class TarStructureError(ContentError):
    """A tar header that would make walking the tar loop or explode; planning refuses the tar."""


class Retry:
    """The retry policy of one shard's reads (InputSpec.read_attempts / read_backoff_s)."""

    def __init__(self, shard: str, attempts: int, backoff_s: float) -> None:
        self.shard, self.attempts, self.backoff_s = shard, attempts, backoff_s

    def __call__(self, fn: Callable, uri: str):
        return with_retries(fn, shard=self.shard, uri=uri, attempts=self.attempts, backoff_s=self.backoff_s)


# -- folder files ----------------------------------------------------------------------------------
def read_file_bytes(fs: fsspec.AbstractFileSystem, root: str, member: str, max_bytes: int) -> bytes:
    """The bytes of `root/member`. Raises ContentError for what must not be read (over max_bytes,
    not a regular file, a symlink resolving outside root) and OSError for storage failures."""
    path = f"{root}/{member}"
    if isinstance(fs, LocalFileSystem):
        return _read_local_file(root, path, max_bytes)
    info = fs.info(path)
    if info.get("type", "file") != "file":
        raise ContentError(f"not a regular file ({info.get('type')})")
    _check_size(info.get("size"), max_bytes, "file")
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    _check_size(len(data), max_bytes, "file")
    return data


def _read_local_file(root: str, path: str, max_bytes: int) -> bytes:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ContentError("symlink resolves outside the input root; not read")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open file (not the path)
    # decides, so a file swapped for a FIFO or device after planning is caught too.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ContentError(f"not a regular file ({_file_kind(st.st_mode)}); not read")
        _check_size(st.st_size, max_bytes, "file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    _check_size(len(data), max_bytes, "file")  # grew since fstat
    return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def _check_size(size: int | None, max_bytes: int, what: str) -> None:
    if size is not None and size > max_bytes:
        raise ContentError(f"{what} is {size} bytes, over input.max_file_bytes={max_bytes}; not read")


# -- containers ------------------------------------------------------------------------------------
class RetryingFile(io.RawIOBase):
    """A read-only file of an fsspec filesystem that survives transient errors: a failed read or seek
    is retried (Retry policy) on a freshly opened file at the same position."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, retry: Retry, uri: str) -> None:
        super().__init__()
        self._fs, self._path, self._retry, self._uri = fs, path, retry, uri
        self._pos = 0
        self._f = None
        self._retry(self._reopen, uri)
        self.size = self._retry(lambda: self._fs.size(self._path), uri)

    def _reopen(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:
                pass
            self._f = None
        f = self._fs.open(self._path, "rb")
        if self._pos:
            f.seek(self._pos)
        self._f = f

    def _attempt(self, op):
        def once():
            if self._f is None:
                self._reopen()
            try:
                return op(self._f)
            except Exception:
                self._f = None  # reopen on the next try: a failed stream may be half-consumed
                raise

        return self._retry(once, self._uri)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._attempt(lambda f: f.read(len(b)))
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            # tar headers with a negative size ask for this; nothing grand reads needs it
            raise ContentError(f"{self._uri}: refusing an unbounded read (negative size in a header?)")
        return super().read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: self.size + offset}[whence]
        if target < 0:
            raise ContentError(f"negative seek to {target}")
        self._attempt(lambda f: f.seek(target))
        self._pos = target
        return target

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None
        super().close()


class BudgetedStream(io.RawIOBase):
    """A decompressed stream that refuses to produce more than `budget` bytes (compression bombs)
    and refuses unbounded reads (a negative size in a tar header would otherwise read to the end)."""

    def __init__(self, inner, budget: int, what: str) -> None:
        super().__init__()
        self._inner, self.budget, self._what = inner, budget, what

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check(self, end: int) -> None:
        if end > self.budget:
            raise ContentError(f"{self._what} expands beyond {self.budget} bytes (input.max_compression_ratio): "
                               "a compression bomb; not read further")

    def readinto(self, b) -> int:
        room = self.budget - self._inner.tell() + 1  # one byte past the budget proves it is exceeded
        data = self._inner.read(max(0, min(len(b), room)))
        self._check(self._inner.tell())
        b[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise ContentError(f"{self._what}: refusing an unbounded read (negative size in a header)")
        return super().read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            raise io.UnsupportedOperation("seek from the end of a compressed stream")
        target = offset if whence == io.SEEK_SET else self._inner.tell() + offset
        if target < 0:
            raise ContentError(f"{self._what}: negative seek to {target}")
        self._check(target)
        return self._inner.seek(target)

    def tell(self) -> int:
        return self._inner.tell()


def open_container(fs: fsspec.AbstractFileSystem, path: str, retry: Retry, uri: str,
                   max_ratio: float, min_budget: int, decompress: bool):
    """`path` as a retrying stream; with `decompress`, gzip / bzip2 / xz data (sniffed from the magic
    bytes, not the name) is decompressed with a budget of max(min_budget, max_ratio x file size)."""
    raw = RetryingFile(fs, path, retry, uri)
    if not decompress:
        return raw
    head = raw.read(6)
    raw.seek(0)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        return raw
    opener = {"gzip": lambda: gzip.GzipFile(fileobj=raw, mode="rb"),
              "bzip2": lambda: bz2.BZ2File(raw, mode="rb"), "xz": lambda: lzma.LZMAFile(raw, mode="rb")}[kind]
    budget = max(min_budget, int(max_ratio * raw.size))
    return BudgetedStream(opener(), budget, f"{kind} data")


def walk_tar(tar: tarfile.TarFile, uri: str) -> Iterator[tarfile.TarInfo]:
    """tar's members, raising ContentError where a header would make the walk loop or explode:
    a negative size, a member offset that does not increase, more than MAX_TAR_MEMBERS members."""
    last_offset = -1
    count = 0
    while True:
        member = tar.next()
        if member is None:
            return
        count += 1
        if member.size < 0:
            raise TarStructureError(f"tar {uri}: member {member.name!r} has a negative size ({member.size})")
        if member.offset <= last_offset:
            raise TarStructureError(f"tar {uri}: member {member.name!r} starts at offset {member.offset}, not after "
                               f"the previous member's {last_offset}")
        if count > MAX_TAR_MEMBERS:
            raise TarStructureError(f"tar {uri}: more than {MAX_TAR_MEMBERS} members")
        last_offset = member.offset
        yield member
