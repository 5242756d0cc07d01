"""The driver's commit path at SA-1B row size, before and after typed Arrow rows, in one run.

Synthetic records for levels 1-4 of 1500x2250 images with 75 objects, each with a COCO RLE mask
(level 2 repeats level 1's objects, as today's level-2 rows do), go through the driver's commit path:

  json   what the driver did before: each level's record arrives as a JSON string, is parsed
         (json.loads) and handed to ShardSink.add, which builds the shard with pa.Table.from_pylist
         and writes it;
  arrow  what it does now (grand.runtime.run.take_block): records arrive as the workers' typed
         Arrow structs and the sinks group them by shard and write them; no row is parsed.

Building the records (the workers' work) is not timed. Writing Parquet (zstd) is, in both.
Then one 10,000-row level-1 shard goes through the arrow path alone: the driver's peak RSS above
its start-up RSS while it buffers and commits that shard.

    python benchmarks/driver.py [--images 1000] [--shard-size 500] [--big-shard 10000]

The last line reads `driver: <ms> ms/image, <MiB> MiB peak for a 10000-row shard` (arrow path,
levels 1-4 together).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grand.core.rle import encode_masks  # noqa: E402
from grand.io.manifest import Manifest  # noqa: E402
from grand.io.output import OutputDir  # noqa: E402
from grand.io.sink import ShardSink  # noqa: E402
from grand.runtime.columns import column  # noqa: E402
from grand.runtime.run import take_block  # noqa: E402
from grand.schema import (  # noqa: E402
    RLE, SCHEMAS, DenseCaption, DepthStats, GroundedPhrase, Landmark, Level1Row, Level2Row, Level3Row, Level4Row,
    ModelProvenance, ObjectRecord, Relationship, SceneGraph, SceneLayer, ShortCaption,
)

H, W, OBJECTS, LEVELS = 1500, 2250, 75, (1, 2, 3, 4)
BLOCK = 64  # rows per block reaching the driver


def _objects(rng: np.random.Generator) -> list[ObjectRecord]:
    """75 objects with elliptical masks of random size and place, as COCO RLE."""
    yy, xx = np.mgrid[0:H, 0:W]
    masks, boxes = [], []
    for _ in range(OBJECTS):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(20, 300), rng.uniform(20, 300)
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        boxes.append([max(0, cx - rx), max(0, cy - ry), min(W, cx + rx), min(H, cy + ry)])
    rles = encode_masks(np.stack(masks))
    return [ObjectRecord(id=k, bbox=[round(float(v), 2) for v in b], label="thing", labels=["thing", "object"],
                         score=0.5, models=["codetr", "eva02"], attributes=["a small thing"], depth=0.3,
                         segmentation=RLE(**r), segmentation_source="sa1b_gt")
            for k, (b, r) in enumerate(zip(boxes, rles))]


def records(objects: list[ObjectRecord], shard: str, index: int) -> dict[int, dict]:
    prov = [ModelProvenance("detector", "codetr", "hf", "x")]
    half = len(objects) // 2
    ids = dict(image_id=f"{shard}/{index}", shard=shard, index=index, status="ok")
    l1 = Level1Row(source="sa1b.tar", width=W, height=H, tags=["thing"] * 20, tag_scores=[0.5] * 20,
                   objects=objects[:half], floating_objects=objects[half:], provenance=prov,
                   depth_stats=DepthStats(0.0, 1.0, 0.4, 0.5), **ids)
    details = [GroundedPhrase("a thing", [0, 7], [1, 2], [1.0, 2.0, 3.0, 4.0])] * 5
    l2 = Level2Row(short_captions=[ShortCaption("blip2", "a thing on a thing " * 3, details)] * 2,
                   landmark=Landmark("Outdoor", "Urban", ["Outdoor", "Urban"]),
                   relationships=[Relationship("a thing", [1, 2])] * 5,
                   objects=objects[:half], floating_objects=objects[half:], provenance=prov, **ids)
    l3 = Level3Row(scene_graph=SceneGraph([SceneLayer("foreground", [[1, 2], [3]])] * 4, "scene " * 200),
                   dense_caption=DenseCaption("caption " * 100, True, details * 4, []), provenance=prov, **ids)
    l4 = Level4Row(additional_context="context " * 150, provenance=prov, **ids)
    return {1: dataclasses.asdict(l1), 2: dataclasses.asdict(l2), 3: dataclasses.asdict(l3), 4: dataclasses.asdict(l4)}


def _sinks(out: OutputDir, expected: dict[str, int], levels) -> dict[int, ShardSink]:
    manifest = Manifest.load(out)
    return {lv: ShardSink(out, lv, SCHEMAS[lv], expected, manifest) for lv in levels}


def run_json(work: Path, template: dict[int, dict], n: int, shard_size: int) -> float:
    """Seconds the driver spends on n rows the way it did before (JSON per row and level)."""
    expected = {f"s{k}": min(shard_size, n - k * shard_size) for k in range((n + shard_size - 1) // shard_size)}
    sinks = _sinks(OutputDir(str(work / "json")), expected, LEVELS)
    spent = 0.0
    for i in range(n):
        shard, index = f"s{i // shard_size}", i % shard_size
        texts = {lv: json.dumps({**rec, "shard": shard, "index": index}) for lv, rec in template.items()}  # worker
        t = time.perf_counter()
        for lv in LEVELS:
            sinks[lv].add(shard, index, json.loads(texts[lv]))
        spent += time.perf_counter() - t
    assert all(len(s.committed) == len(expected) for s in sinks.values())
    return spent


def _block(template: dict[int, pa.Array], shards: list[str], indices: list[int], levels) -> pa.Table:
    """A block as a worker hands it on: typed columns, records as the level's struct."""
    n = len(shards)
    cols = {"shard": pa.array(shards), "index": pa.array(indices, pa.int64()),
            "step_seconds": pa.array([{"codetr": 0.1}] * n, type=column("step_seconds").arrow_type)}
    for lv in levels:
        rec = template[lv].take(pa.array(np.zeros(n, np.int64)))  # a fresh copy per row, as from a worker
        fields = [f.name for f in rec.type]
        arrays = [rec.field(f) for f in fields]
        arrays[fields.index("shard")], arrays[fields.index("index")] = pa.array(shards), pa.array(indices, pa.int32())
        cols[f"record_l{lv}"] = pa.StructArray.from_arrays(arrays, fields=list(rec.type))
    return pa.table(cols)


def run_arrow(work: Path, template: dict[int, pa.Array], n: int, shard_size: int, levels=LEVELS, name="arrow") -> float:
    """Seconds the driver spends on n rows now (grand.runtime.run.take_block over Arrow blocks)."""
    expected = {f"s{k}": min(shard_size, n - k * shard_size) for k in range((n + shard_size - 1) // shard_size)}
    sinks = _sinks(OutputDir(str(work / name)), expected, levels)
    spent = 0.0
    for a in range(0, n, BLOCK):
        rows = range(a, min(n, a + BLOCK))
        block = _block(template, [f"s{i // shard_size}" for i in rows], [i % shard_size for i in rows], levels)  # worker
        t = time.perf_counter()
        take_block(block, sinks, levels)
        spent += time.perf_counter() - t
    assert all(len(s.committed) == len(expected) for s in sinks.values())
    return spent


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_of_big_shard(work: Path, template: dict[int, pa.Array], rows: int) -> float:
    """MiB the driver's RSS rises, at its peak, while one `rows`-row level-1 shard goes through."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    run_arrow(work, template, rows, rows, levels=(1,), name="big")
    done.set()
    t.join()
    return (max(peak[0], _rss()) - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="images through each path (levels 1-4)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--big-shard", type=int, default=10000, help="rows of the one shard whose peak RSS is measured")
    args = ap.parse_args()

    objects = _objects(np.random.default_rng(0))
    template = records(objects, "s0", 0)
    kib = len(json.dumps(template[1])) / 1024
    structs = {lv: pa.array([template[lv]], type=pa.struct(list(SCHEMAS[lv]))) for lv in LEVELS}
    print(f"rows: {W}x{H}, {OBJECTS} objects with RLE masks, level-1 record {kib:.0f} KiB of JSON; "
          f"{args.images} images, shards of {args.shard_size}, levels 1-4", flush=True)
    with tempfile.TemporaryDirectory(prefix="grand-driver-") as tmp:
        work = Path(tmp)
        before = run_json(work, template, args.images, args.shard_size) / args.images * 1000
        print(f"  json  (before): {before:.2f} ms/image in the driver = {1000 / before:.0f} images/s", flush=True)
        after = run_arrow(work, structs, args.images, args.shard_size) / args.images * 1000
        print(f"  arrow (now):    {after:.2f} ms/image in the driver = {1000 / after:.0f} images/s "
              f"({before / after:.1f}x)", flush=True)
        mib = peak_rss_of_big_shard(work, structs, args.big_shard)
    print(f"driver: {after:.2f} ms/image, {mib:.0f} MiB peak for a {args.big_shard}-row shard")


if __name__ == "__main__":
    main()
