"""Export an output folder as one COCO instances JSON (pycocotools' `COCO(path)` loads it).

Objects come from level 2 when that shard has a level-2 file (the objects after phrase grounding),
else from level 1. The JSON is written in pieces: images go straight to the file while annotations
are spooled to a local temp file, because category ids (names sorted, 1..N) are only known at the
end. Memory is thus bounded by one record batch plus the label set.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO

import fsspec

from grand.core.rle import mask_area
from grand.export import iter_rows, shard_names
from grand.export.images import input_file_name
from grand.export.rows import has_mask
from grand.io.output import OutputDir

_ROW_COLUMNS = ["image_id", "status", "width", "height", "source", "objects", "floating_objects"]


def _coco_bbox(xyxy: list[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [x1, y1, x2 - x1, y2 - y1]


def _annotation(obj: dict, ann_id: int, image_id: int, floating: bool) -> dict:
    """COCO annotation of one ObjectRecord (category_id is filled in at the end)."""
    bbox = _coco_bbox(obj["bbox"])
    seg = obj.get("segmentation")
    ann: dict = {"id": ann_id, "image_id": image_id, "bbox": bbox}
    if has_mask(seg):  # an all-zero RLE is no mask (it would be an annotation of area 0)
        rle = {"size": [int(seg["size"][0]), int(seg["size"][1])], "counts": seg["counts"]}
        ann.update(segmentation=rle, area=float(mask_area(rle)), has_mask=True)
    else:
        # No mask (segmenter off, or an empty one): the box as a polygon keeps pycocotools' annToMask working,
        # and has_mask=False tells consumers it is not a real mask.
        x, y, w, h = bbox
        ann.update(segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]], area=float(w * h), has_mask=False)
    ann.update(
        iscrowd=0,
        score=float(obj["score"]),
        grand_object_id=int(obj["id"]),
        attributes=list(obj.get("attributes") or []),
        labels=list(obj.get("labels") or []),
        floating=floating,
    )
    return ann


def _image_size(row: dict, level1_sizes: dict[str, tuple[int, int]]) -> tuple[int | None, int | None]:
    """(width, height): the row's own (level 1), level 1's for a level-2 row, else a mask's size."""
    if row.get("width") is not None and row.get("height") is not None:
        return int(row["width"]), int(row["height"])
    if row["image_id"] in level1_sizes:
        return level1_sizes[row["image_id"]]
    for obj in (row.get("objects") or []) + (row.get("floating_objects") or []):
        if obj.get("segmentation") is not None:
            h, w = obj["segmentation"]["size"]
            return int(w), int(h)
    return None, None


def _level1_sizes(out: OutputDir, shard: str, sources: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """image_id -> (width, height) of one level-1 shard (level-2 rows carry no image size); fills
    `sources` (image_id -> source, for the file name's real extension) when given."""
    if shard not in out.committed_shards(1):
        return {}
    sizes = {}
    for r in iter_rows(out, 1, shard, ["image_id", "width", "height", "source"]):
        if sources is not None:
            sources[r["image_id"]] = r["source"]
        if r["width"] is not None and r["height"] is not None:
            sizes[r["image_id"]] = (int(r["width"]), int(r["height"]))
    return sizes


def export_coco(output_uri: str, dest: str, include_floating: bool = True, level: int | None = None) -> dict:
    """Write the COCO instances JSON of `output_uri` to `dest` (local path or fsspec URI).

    `level` forces objects from that level only (1 or 2); None prefers level 2 per shard.
    Returns {images, annotations, categories, skipped_error_rows, dest}.
    """
    if level not in (None, 1, 2):
        raise ValueError(f"level must be 1, 2 or None, got {level!r}")
    out = OutputDir(output_uri)
    level2 = out.committed_shards(2)
    shards = shard_names(out, (level,) if level else (1, 2))

    n_images = n_anns = skipped = 0
    labels: set[str] = set()
    fs, path = fsspec.core.url_to_fs(dest)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    partial = path + ".partial"  # renamed at the end: a crash never leaves a truncated JSON at dest
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool, fs.open(partial, "w", encoding="utf-8") as f:
        f.write('{"info": ' + json.dumps({"description": "grand export", "source": output_uri}))
        f.write(', "licenses": [], "images": [')
        for shard in shards:
            lvl = level or (2 if shard in level2 else 1)
            sources: dict[str, str] = {}
            sizes = _level1_sizes(out, shard, sources) if lvl == 2 else {}
            for row in iter_rows(out, lvl, shard, _ROW_COLUMNS):
                if row["status"] != "ok":
                    skipped += 1
                    continue
                n_images += 1
                width, height = _image_size(row, sizes)
                name = input_file_name({"image_id": row["image_id"],
                                        "source": row.get("source") or sources.get(row["image_id"])})
                image = {"id": n_images, "file_name": name, "width": width, "height": height}
                f.write(("" if n_images == 1 else ", ") + json.dumps(image))
                groups = [(row.get("objects") or [], False)]
                if include_floating:
                    groups.append((row.get("floating_objects") or [], True))
                for objs, floating in groups:
                    for obj in objs:
                        n_anns += 1
                        labels.add(obj["label"])
                        _spool(spool, obj["label"], _annotation(obj, n_anns, n_images, floating))
        categories = {name: i for i, name in enumerate(sorted(labels), start=1)}
        f.write('], "annotations": [')
        _write_annotations(spool, f, categories)
        cats = [{"id": i, "name": name, "supercategory": "object"} for name, i in categories.items()]
        f.write('], "categories": ' + json.dumps(cats) + "}\n")
    fs.mv(partial, path)
    return {
        "images": n_images,
        "annotations": n_anns,
        "categories": len(categories),
        "skipped_error_rows": skipped,
        "dest": dest,
    }


def _spool(spool: IO[str], label: str, ann: dict) -> None:
    # One line per annotation: its label (JSON, so tabs/newlines in labels are safe) then the body.
    spool.write(json.dumps(label) + "\t" + json.dumps(ann) + "\n")


def _write_annotations(spool: IO[str], f: IO[str], categories: dict[str, int]) -> None:
    spool.seek(0)
    for i, line in enumerate(spool):
        label, body = line.rstrip("\n").split("\t", 1)
        ann = json.loads(body)
        ann["category_id"] = categories[json.loads(label)]
        f.write(("" if i == 0 else ", ") + json.dumps(ann))
