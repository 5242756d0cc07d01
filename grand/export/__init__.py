"""Exports of an output folder (COCO, Hugging Face datasets, GCG, referring expressions, region
descriptions, Set-of-Mark) and dataset statistics; docs/exports.md describes each.

All stream the Parquet shards one record batch at a time, so memory stays bounded by the batch
size, not by the dataset. The shard-reading helpers live here so every export shares them
(rows.py joins the levels of one image and re-reads images).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow.parquet as pq

from grand.io.manifest import load_plan
from grand.io.output import OutputDir

BATCH_ROWS = 256  # rows per record batch: objects carry RLE masks, so keep batches modest


def shard_names(out: OutputDir, levels: Sequence[int] = (1, 2)) -> list[str]:
    """Shards committed at any of `levels`: plan order first (stable exports), then the rest sorted."""
    present: set[str] = set()
    for level in levels:
        present |= out.committed_shards(level)
    plan = load_plan(out)
    ordered = [s.name for s in plan[1] if s.name in present] if plan else []
    seen = set(ordered)
    return ordered + sorted(present - seen)


def iter_rows(out: OutputDir, level: int, shard: str, columns: Sequence[str] | None = None) -> Iterator[dict]:
    """Rows of one committed shard as dicts, read batch by batch."""
    with out.fs.open(out.shard_path(level, shard), "rb") as f:
        pf = pq.ParquetFile(f)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
            yield from batch.to_pylist()


from grand.export.coco import export_coco  # noqa: E402  (after the helpers coco.py imports)
from grand.export.gcg import export_gcg  # noqa: E402
from grand.export.hf import export_hf  # noqa: E402
from grand.export.refexp import export_refexp  # noqa: E402
from grand.export.regions import export_regions  # noqa: E402
from grand.export.som import export_som  # noqa: E402
from grand.export.stats import dataset_stats, stats_text  # noqa: E402

__all__ = ["export_coco", "export_gcg", "export_hf", "export_refexp", "export_regions", "export_som",
           "dataset_stats", "stats_text", "shard_names", "iter_rows"]
