"""Hand-built grand output folders for the export and eval tests (no pipeline run, no models).

`build_output` makes a complete little output: three PNG images in a folder input, the shard plan,
a manifest with one run, and levels 1-4 written through the real Arrow schemas:

    shard images-00000: a.png (ok at every level), b.png (error at every level)
    shard images-00001: c.png (ok at levels 1-2; this shard has no level-3/4 files)

`build_synthetic` makes many small shards (levels 1-3, no images) for the memory tests.
Every mask fills its object's box exactly, so tests can rebuild the expected mask from the box.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from grand.config import InputSpec
from grand.core.rle import encode_mask
from grand.io.manifest import save_plan
from grand.io.output import OutputDir
from grand.io.sources import plan_shards
from grand.schema import (
    RLE, SCHEMAS, CaptionAttempt, DenseCaption, GroundedPhrase, Landmark, Level1Row, Level2Row, Level3Row,
    Level4Row, ModelProvenance, ObjectRecord, Relationship, SceneGraph, SceneLayer, ShortCaption,
)

W, H = 48, 36
SHARD0, SHARD1 = "images-00000", "images-00001"

DENSE_A = "A brown dog sits near a red ball while a tree stands behind them."
SHORT_A = "A brown dog next to a red ball."
SHORT_C = "A person with a cat."
CONTEXT_A = "Dogs love to play with balls in parks. Keep an eye on the ball near the road."


def pixels(seed: int) -> np.ndarray:
    """A smooth gradient image (every pixel distinct from a flat fill)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 40 + 60 * seed)], axis=-1).astype(np.uint8)


def box_mask(box, h: int = H, w: int = W) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def obj(id: int, label: str, box, masked: bool = True, attributes=(), labels=None, score: float = 0.8,
        depth: float | None = 0.5, h: int = H, w: int = W) -> ObjectRecord:
    seg = RLE(**encode_mask(box_mask(box, h, w))) if masked else None
    return ObjectRecord(id=id, bbox=[float(v) for v in box], label=label, labels=list(labels or [label]), score=score,
                        models=["det_a", "det_b"], attributes=list(attributes), depth=depth, segmentation=seg,
                        segmentation_source="sam" if masked else None)


def phrase(caption: str, text: str, ids, start_at: int = 0) -> GroundedPhrase:
    start = caption.index(text, start_at)
    return GroundedPhrase(text, [start, start + len(text)], list(ids))


def write_level(out: OutputDir, level: int, shard: str, rows: list) -> None:
    table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=SCHEMAS[level])
    out.write_table_atomic(out.shard_path(level, shard), table)


def _prov(role: str, name: str) -> list[ModelProvenance]:
    return [ModelProvenance(role, name, "transformers", f"tiny:{name}")]


def objects_a() -> tuple[list[ObjectRecord], list[ObjectRecord]]:
    dog = obj(1, "dog", (4, 4, 20, 20), attributes=["brown dog", "a dog sitting on grass"], depth=0.9)
    ball = obj(2, "ball", (24, 20, 32, 28), attributes=["red ball"], depth=0.6)
    tree = obj(3, "tree", (34, 2, 46, 30), depth=0.1)
    return [dog, ball], [tree]


def objects_c() -> tuple[list[ObjectRecord], list[ObjectRecord]]:
    person = obj(1, "person", (10, 5, 30, 35), attributes=["person in a blue shirt"])
    cat = obj(2, "cat", (35, 25, 45, 35), masked=False)  # no mask: boxes only
    return [person, cat], []


def build_output(root: Path) -> Path:
    """The three-image output described in the module docstring; returns the output folder."""
    images = root / "images"
    images.mkdir(parents=True)
    for seed, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.fromarray(pixels(seed)).save(images / name)
    specs = plan_shards(str(images), InputSpec(shard_size=2))
    assert [s.name for s in specs] == [SHARD0, SHARD1]
    out = OutputDir(str(root / "out"))
    save_plan(out, str(images), specs)

    src = lambda name: str(images / name)  # noqa: E731
    a_obj, a_float = objects_a()
    c_obj, c_float = objects_c()
    l1 = dict(width=W, height=H, provenance=_prov("detector", "det_a"))
    write_level(out, 1, SHARD0, [
        Level1Row("a.png", src("a.png"), SHARD0, 0, "ok", tags=["dog", "ball", "tree"], tag_scores=[0.9, 0.8, 0.7],
                  objects=a_obj, floating_objects=a_float, **l1),
        Level1Row("b.png", src("b.png"), SHARD0, 1, "error", error="decode: cannot identify image"),
    ])
    write_level(out, 1, SHARD1, [
        Level1Row("c.png", src("c.png"), SHARD1, 0, "ok", tags=["person", "cat"], tag_scores=[0.9, 0.6],
                  objects=c_obj, floating_objects=c_float, **l1),
    ])

    # Level 2: the dog gains "puppy", and phrase grounding adds a floating frisbee (id 4).
    a2_obj = [dataclasses.replace(a_obj[0], labels=["dog", "puppy"]), a_obj[1]]
    a2_float = a_float + [obj(4, "frisbee", (2, 28, 10, 34), depth=None)]
    write_level(out, 2, SHARD0, [
        Level2Row("a.png", SHARD0, 0, "ok",
                  short_captions=[ShortCaption("blip2", SHORT_A, [phrase(SHORT_A, "A brown dog", [1]),
                                                                  phrase(SHORT_A, "a red ball", [2])])],
                  landmark=Landmark("Outdoor", "Natural landscape", ["Outdoor", "Natural landscape"]),
                  relationships=[Relationship("a dog next to a ball", [1]), Relationship("dog and tree", [1, 3])],
                  objects=a2_obj, floating_objects=a2_float, provenance=_prov("captioner", "blip2")),
        Level2Row("b.png", SHARD0, 1, "error", error="decode: cannot identify image"),
    ])
    write_level(out, 2, SHARD1, [
        Level2Row("c.png", SHARD1, 0, "ok",
                  short_captions=[ShortCaption("blip2", SHORT_C, [phrase(SHORT_C, "A person", [1]),
                                                                  phrase(SHORT_C, "a cat", [2])])],
                  landmark=Landmark("Indoor", "Living space", ["Indoor", "Living space"]),
                  relationships=[Relationship("a person with a cat", [1])],
                  objects=c_obj, floating_objects=c_float, provenance=_prov("captioner", "blip2")),
    ])

    details = [phrase(DENSE_A, "a tree", [3]), phrase(DENSE_A, "A brown dog", [1]),  # not in span order
               phrase(DENSE_A, "a red ball", [2]), phrase(DENSE_A, "them", [])]  # "them": grounded to nothing
    graph = SceneGraph([SceneLayer("foreground", [[1], [2]]), SceneLayer("background", [[3]])], "scene graph text")
    write_level(out, 3, SHARD0, [
        Level3Row("a.png", SHARD0, 0, "ok", scene_graph=graph,
                  dense_caption=DenseCaption(DENSE_A, True, details, [CaptionAttempt(DENSE_A, "dog, ball, tree",
                                                                                     ["dog", "ball", "tree"], [], True)]),
                  provenance=_prov("llm", "vicuna")),
        Level3Row("b.png", SHARD0, 1, "error", error="decode: cannot identify image"),
    ])
    write_level(out, 4, SHARD0, [
        Level4Row("a.png", SHARD0, 0, "ok", additional_context=CONTEXT_A, provenance=_prov("llm", "vicuna")),
        Level4Row("b.png", SHARD0, 1, "error", error="decode: cannot identify image"),
    ])
    out.write_json_atomic(out.manifest_path, {
        "format": "grand-manifest/1", "shards": {},
        "runs": [{
            "command": "run", "levels": [1, 2, 3, 4], "input": str(images), "state": "succeeded",
            "started": "2026-11-01T10:00:00+00:00", "finished": "2026-11-01T10:05:00+00:00",
            "config": {"name": "tiny-test", "input": {"shard_size": 2}},
            "models": {"level1": [{"role": "detector", "name": "det_a", "backend": "transformers",
                                   "checkpoint": "tiny:owlv2"}],
                       "level2": [{"role": "captioner", "name": "blip2", "backend": "transformers",
                                   "checkpoint": "tiny:blip2"}],
                       "level3": [{"role": "llm", "name": "vicuna", "backend": "vllm", "checkpoint": "tiny:llama"}],
                       "level4": [{"role": "llm", "name": "vicuna", "backend": "vllm", "checkpoint": "tiny:llama"}]},
            "versions": {"python": "3.11", "grand": "0.1.0"},
        }],
    })
    return Path(out.uri)


# -- many small shards ---------------------------------------------------------------------------
SYN_LABELS = ["dog", "cat", "ball", "tree", "car", "person"]


def build_synthetic(root: Path, n_shards: int, images_per_shard: int = 4, start: int = 0, size: int = 64) -> Path:
    """`n_shards` shards named syn-<k> (k from `start`, so a folder can be grown) with levels 1-3:
    four masked objects per image from a fixed label set, a short and a dense caption."""
    out = OutputDir(str(root))
    caption = "A dog and a cat near a ball."
    for k in range(start, start + n_shards):
        shard = f"syn-{k:05d}"
        rows1, rows2, rows3 = [], [], []
        for i in range(images_per_shard):
            image_id = f"{shard}/{i}.jpg"
            objects = [obj(j + 1, SYN_LABELS[(i + j) % len(SYN_LABELS)], (j * 10, j * 8, j * 10 + 12, j * 8 + 12),
                           attributes=[f"a {SYN_LABELS[j]} number {j}"], h=size, w=size) for j in range(4)]
            rows1.append(Level1Row(image_id, f"mem://{image_id}", shard, i, "ok", width=size, height=size,
                                   objects=objects))
            details = [phrase(caption, "A dog", [1]), phrase(caption, "a cat", [2]), phrase(caption, "a ball", [3])]
            rows2.append(Level2Row(image_id, shard, i, "ok", short_captions=[ShortCaption("m", caption, details)],
                                   relationships=[Relationship("a dog and a cat", [1])], objects=objects))
            rows3.append(Level3Row(image_id, shard, i, "ok", dense_caption=DenseCaption(caption, True, details)))
        write_level(out, 1, shard, rows1)
        write_level(out, 2, shard, rows2)
        write_level(out, 3, shard, rows3)
    return Path(out.uri)


def read_json_or_jsonl(path: Path) -> list[dict]:
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)
