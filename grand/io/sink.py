"""ShardSink: gathers finished rows per shard and commits a shard's Parquet file only when every one
of its planned images has arrived (atomically: temp file, fsync, rename)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from grand.io.manifest import Manifest
from grand.io.output import OutputDir

log = logging.getLogger("grand.sink")


def error_reason(error: str) -> str:
    """A short grouping key for error summaries: the text up to its second colon."""
    parts = error.split(":")
    return ":".join(parts[:2]).strip()[:80]


def shard_counts(statuses: list[str], errors: list[str | None]) -> dict:
    """rows / ok / errors / error_reasons of one shard, as the manifest records them."""
    failed = [e or "" for s, e in zip(statuses, errors) if s != "ok"]
    reasons = Counter(error_reason(e) for e in failed)
    return {"rows": len(statuses), "ok": len(statuses) - len(failed), "errors": len(failed),
            "error_reasons": dict(reasons.most_common())}


@dataclass
class ShardSink:
    out: OutputDir
    level: int
    schema: pa.Schema
    expected: dict[str, int]  # shard -> number of planned images
    manifest: Manifest
    committed: list[str] = field(default_factory=list)
    duplicates: int = 0
    _rows: dict[str, dict[int, dict]] = field(default_factory=dict)

    def add(self, shard: str, index: int, record: dict) -> bool:
        """Buffer one finished row (committing its shard when it is the last one); returns False for a
        duplicate of a row already received."""
        if shard not in self.expected:
            raise KeyError(f"row for shard '{shard}' which this run does not process")
        rows = self._rows.setdefault(shard, {})
        if index in rows:
            # A retried task may deliver a row twice; the first copy wins, the output stays exact.
            self.duplicates += 1
            return False
        rows[index] = record
        if len(rows) == self.expected[shard]:
            self._commit(shard)
        return True

    def incomplete(self) -> dict[str, int]:
        """Shards with rows still missing: shard -> rows received so far."""
        return {s: len(r) for s, r in self._rows.items() if s not in self.committed}

    def _commit(self, shard: str) -> None:
        rows = self._rows.pop(shard)
        ordered = [rows[i] for i in sorted(rows)]
        if sorted(rows) != list(range(self.expected[shard])):
            raise RuntimeError(f"shard {shard}: row indices are not 0..{self.expected[shard] - 1}")
        table = pa.Table.from_pylist(ordered, schema=self.schema)
        self.out.write_table_atomic(self.out.shard_path(self.level, shard), table)
        counts = shard_counts([r["status"] for r in ordered], [r["error"] for r in ordered])
        self.manifest.record_commit(self.level, shard, **counts)
        self.manifest.save()
        self.committed.append(shard)
        log.info("committed %s (%d rows, %d errors)", self.out.shard_path(self.level, shard), counts["rows"], counts["errors"])
