"""`grand browse` on a large output: how long its narrow index takes to build, and how long one list
page and one image take, against reading every level's shards whole (what a viewer that loads the
data up front would do), measured in the same run on the same synthetic folder.

    .venv/bin/python benchmarks/browse.py                      # 100 shards x 1000 images = 100k images
    .venv/bin/python benchmarks/browse.py --shards 20 --images 500

The folder (tests/export_fixtures.build_synthetic: 4 masked objects, a short and a dense caption per
image, levels 1-3) is built in a temp dir and removed. Prints a Markdown row for docs/quality.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--images", type=int, default=1000, help="images per shard")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from export_fixtures import build_synthetic
    from grand.io.output import OutputDir
    from grand.viz.browse import BrowseIndex

    tmp = Path(tempfile.mkdtemp(prefix="grand-browse-bench-"))
    try:
        t = time.perf_counter()
        out = build_synthetic(tmp / "out", args.shards, images_per_shard=args.images)
        built = time.perf_counter() - t
        n = args.shards * args.images

        t = time.perf_counter()
        index = BrowseIndex(str(out))
        t_index = time.perf_counter() - t
        assert len(index.entries) == n

        t = time.perf_counter()
        page = index.page(offset=n // 2, limit=50, label="dog", min_objects=2)
        t_page = time.perf_counter() - t
        t = time.perf_counter()
        detail = index.detail(n - 1)
        t_detail = time.perf_counter() - t
        assert page["items"] and detail["objects_list"]

        # Baseline: every level's shards read whole, as a load-everything viewer would.
        o = OutputDir(str(out))
        t = time.perf_counter()
        for level in (1, 2, 3):
            for shard in sorted(o.committed_shards(level)):
                pq.read_table(o.shard_path(level, shard)).to_pylist()
        t_full = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"folder: {n:,} images in {args.shards} shards (built in {built:.0f} s)")
    print("| images | index build | one list page (filtered) | one image | read everything (baseline) | index / baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| {n:,} | {t_index:.1f} s | {1000 * t_page:.0f} ms | {1000 * t_detail:.0f} ms | {t_full:.1f} s | "
          f"{t_index / t_full:.2f} |")


if __name__ == "__main__":
    main()
