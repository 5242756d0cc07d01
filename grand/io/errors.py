"""Read failures told apart: a transient one fails its shard, a content one becomes an error row.

A *transient* failure is about reaching the bytes, not about the bytes: an I/O error, a file or
tar that has vanished, an object-store 5xx or an expired credential, a timeout. It may succeed on
the next try, so the readers retry it with backoff (`with_retries`), and when it persists they
raise `TransientReadError`. The run then records the shard as failed without committing it, and
the next run retries it: no image is lost to a storage hiccup.

A *content* failure is about the bytes themselves (not a decodable image, a bomb, a file over
`input.max_file_bytes`, a FIFO where a file should be): retrying cannot help, so it becomes an
error row with the reason and the shard is committed.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("grand.io")

T = TypeVar("T")

# Tries per read and the first pause between them; the pause doubles (with jitter) each time, so
# the default waits about 1 + 2 + 4 + 8 = 15 s in total before a shard is given up for this run.
READ_ATTEMPTS = 5
READ_BACKOFF_S = 1.0

# OSErrors that describe the path, not the storage: retrying them cannot succeed.
_PERMANENT_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO})


class ContentError(ValueError):
    """The bytes (or the thing at the path) cannot be an input image; `reason` goes into the row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientReadError(OSError):
    """Reading a container or file kept failing for reasons outside its content (I/O, missing,
    object store, timeout) after every retry. The shard it belongs to must not be committed."""

    def __init__(self, shard: str, uri: str, cause: BaseException, attempts: int) -> None:
        self.shard, self.uri, self.attempts = shard, uri, attempts
        self.reason = f"cannot read {uri} after {attempts} tries: {describe(cause)}"
        super().__init__(f"shard {shard}: {self.reason}")

    def __reduce__(self):  # Ray ships exceptions between processes by pickling them
        return (_rebuild_transient, (self.shard, self.uri, self.reason, self.attempts))


def _rebuild_transient(shard: str, uri: str, reason: str, attempts: int) -> TransientReadError:
    err = TransientReadError.__new__(TransientReadError)
    OSError.__init__(err, f"shard {shard}: {reason}")
    err.shard, err.uri, err.reason, err.attempts = shard, uri, reason, attempts
    return err


def is_transient(exc: BaseException) -> bool:
    """Whether a failure while opening or reading bytes may go away on its own.

    OSErrors are (missing files, permission or credential errors, EIO, timeouts, connection
    resets; s3fs / gcsfs map their HTTP errors to OSError subclasses) unless they describe the path
    itself (a folder where a file should be). Other exception types raised by a filesystem
    (botocore, aiohttp, ...) are treated as transient too: failing a shard that the next run
    completes is better than committing error rows for readable images."""
    if isinstance(exc, ContentError):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS and not isinstance(exc, (IsADirectoryError, NotADirectoryError))
    return True


def with_retries(fn: Callable[[], T], *, shard: str, uri: str, attempts: int | None = None,
                 backoff_s: float | None = None) -> T:
    """`fn()`, retried with exponential backoff while it fails transiently. A content failure is
    raised as it is; a transient one that outlasts the tries becomes TransientReadError."""
    attempts = READ_ATTEMPTS if attempts is None else attempts
    backoff_s = READ_BACKOFF_S if backoff_s is None else backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientReadError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise TransientReadError(shard, uri, exc, attempts) from exc
            pause = backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("shard %s: reading %s failed (%s); retry %d of %d in %.1fs",
                        shard, uri, describe(exc), attempt, attempts - 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_transient(err: BaseException) -> TransientReadError | None:
    """The TransientReadError behind `err`, if any: Ray re-raises a task's exception wrapped
    (RayTaskError, Ray Data's UserCodeException), keeping the original as a cause."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TransientReadError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None
