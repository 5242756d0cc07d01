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
    # add_arrow's buffers: shard -> received indices, and its (indices, struct rows) pieces as they came
    _seen: dict[str, set[int]] = field(default_factory=dict)
    _parts: dict[str, list[tuple[list[int], pa.Array]]] = field(default_factory=dict)

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

    def add_arrow(self, shards: list[str], indices: list[int], records) -> list[bool]:
        """Buffer a block of finished rows given as Arrow (`records`: a struct array typed as this
        level's schema, one row per (shard, index)), committing each shard whose last row it holds;
        returns, per row, False for a duplicate of a row already received. The rows stay Arrow data:
        nothing is parsed into Python objects."""
        if isinstance(records, pa.ChunkedArray):
            records = records.combine_chunks()
        by_shard: dict[str, list[int]] = {}
        fresh = []
        for k, (shard, index) in enumerate(zip(shards, indices)):
            if shard not in self.expected:
                raise KeyError(f"row for shard '{shard}' which this run does not process")
            seen = self._seen.setdefault(shard, set())
            if shard in self.committed or index in seen or index in self._rows.get(shard, {}):
                self.duplicates += 1  # a retried task delivered it twice: the first copy wins
                fresh.append(False)
                continue
            seen.add(index)
            by_shard.setdefault(shard, []).append(k)
            fresh.append(True)
        for shard, rows in by_shard.items():
            taken = records.take(pa.array(rows, pa.int64())) if len(rows) != len(records) else records
            self._parts.setdefault(shard, []).append(([indices[k] for k in rows], taken))
            if len(self._seen[shard]) == self.expected[shard]:
                self._commit_arrow(shard)
        return fresh

    def incomplete(self) -> dict[str, int]:
        """Shards with rows still missing: shard -> rows received so far."""
        out = {s: len(r) for s, r in self._rows.items() if s not in self.committed}
        out.update({s: len(r) for s, r in self._seen.items() if s not in self.committed and r})
        return out

    def _commit_arrow(self, shard: str) -> None:
        import numpy as np

        parts = self._parts.pop(shard)
        order = np.argsort(np.concatenate([np.asarray(i, np.int64) for i, _ in parts]), kind="stable")
        rows = pa.concat_arrays([r for _, r in parts]).take(pa.array(order))
        table = pa.Table.from_struct_array(rows).cast(self.schema).combine_chunks()
        if table["index"].to_pylist() != list(range(self.expected[shard])):
            raise RuntimeError(f"shard {shard}: row indices are not 0..{self.expected[shard] - 1}")
        self._write(shard, table, table["status"].to_pylist(), table["error"].to_pylist())

    def _commit(self, shard: str) -> None:
        rows = self._rows.pop(shard)
        ordered = [rows[i] for i in sorted(rows)]
        if sorted(rows) != list(range(self.expected[shard])):
            raise RuntimeError(f"shard {shard}: row indices are not 0..{self.expected[shard] - 1}")
        table = pa.Table.from_pylist(ordered, schema=self.schema)
        self._write(shard, table, [r["status"] for r in ordered], [r["error"] for r in ordered])

    def _write(self, shard: str, table: pa.Table, statuses: list[str], errors: list[str | None]) -> None:
        self.out.write_table_atomic(self.out.shard_path(self.level, shard), table)
        counts = shard_counts(statuses, errors)
        self.manifest.record_commit(self.level, shard, **counts)
        self.manifest.save()
        self.committed.append(shard)
        log.info("committed %s (%d rows, %d errors)", self.out.shard_path(self.level, shard), counts["rows"], counts["errors"])
