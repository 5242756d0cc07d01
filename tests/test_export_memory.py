"""Exports stream shard by shard: the Python heap peak of an export over 60 shards is that of one
over 10 (tracemalloc peaks; nothing is timed). The 60-shard folder holds the 10-shard one's shards
plus 50 more, with the same label set, so only the amount of data differs."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import pytest
from export_fixtures import build_synthetic

from grand.export import dataset_stats, export_coco
from grand.export.gcg import export_gcg
from grand.export.mdvp import export_mdvp
from grand.export.refexp import export_refexp
from grand.export.regions import export_regions

SMALL, LARGE = 10, 60


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mem")
    small = build_synthetic(root / "small", SMALL)
    large = root / "large"
    shutil.copytree(small, large)
    build_synthetic(large, LARGE - SMALL, start=SMALL)
    return small, large


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _hf(src: Path, dest: Path) -> None:
    pytest.importorskip("datasets")
    from grand.export.hf import export_hf

    # Row groups of 16: the one group in memory is the export's fixed bound (128 rows by default,
    # more than the small folder holds, which would make the small run look cheaper than it is).
    export_hf(str(src), str(dest), overwrite=True, rows_per_group=16)


EXPORTS = {
    "hf": _hf,
    "gcg": lambda src, dest: export_gcg(str(src), str(dest / "gcg.json")),
    "gcg-short": lambda src, dest: export_gcg(str(src), str(dest / "gcg.jsonl"), source="short"),
    "refexp": lambda src, dest: export_refexp(str(src), str(dest / "refs.jsonl")),
    "regions": lambda src, dest: export_regions(str(src), str(dest / "regions.json")),
    "regions-osprey": lambda src, dest: export_regions(str(src), str(dest / "osprey.json"), format="osprey"),
    "refexp-negatives": lambda src, dest: export_refexp(str(src), str(dest / "neg.jsonl"), negatives=3),
    "coco": lambda src, dest: export_coco(str(src), str(dest / "coco.json")),
    "mdvp": lambda src, dest: export_mdvp(str(src), str(dest / "mdvp.jsonl"), points_per_object=2, box_noise=0.1),
    "stats": lambda src, dest: dataset_stats(str(src)),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_peak_memory_is_flat(name: str, folders, tmp_path: Path) -> None:
    small, large = folders
    run = EXPORTS[name]
    (tmp_path / "warm").mkdir()
    run(small, tmp_path / "warm")  # imports and one-time caches are not the export's growth
    peaks = {}
    for label, src in (("small", small), ("large", large)):
        dest = tmp_path / label
        dest.mkdir()
        peaks[label] = peak_bytes(lambda: run(src, dest))
    # 6x the data; a per-shard leak of even a few KB would show. The slack covers allocator noise.
    assert peaks["large"] <= 1.2 * peaks["small"] + 256 * 1024, peaks
