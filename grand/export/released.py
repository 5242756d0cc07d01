"""Export an output folder in GranD's released per-image JSON layout, which GLaMM's
`GranD/prepare_annotations/*.py` and Sa2VA-family GranD loaders read:

    {"sa_223750.jpg": {"objects": [...], "floating_objects": [...], "short_captions": [...],
                       "dense_caption": {...}, "relationships": {...}, "landmark": {...},
                       "additional_context": "..."}}

keyed by the image's file name (grand.export.images: real extension, upright images with
`images_dir`). One file per image, `<file stem>.json` (what the prepare scripts list and json.load),
or with `per_shard` one `<shard>.json` holding every image of the shard. Files are written to
`.partial` and renamed, the per-shard ones image by image. docs/exports.md lists every field.

Where grand's records differ from the release, the release's shape wins:
- `segmentation_source` is "SAM" for SA-1B ground-truth masks and "EVA" for model-made masks (the
  release's two values; our segmenter's name stays in `segmentation_model`); an all-zero mask is
  `segmentation: null`.
- caption `details` carry `id` (the smallest of `ids`, which GLaMM's caption-grounding script
  reads) beside `ids`, and name only objects with a mask (Sa2VA's loader decodes every one);
  captions are cleaned as the loaders clean them (`caption.strip('"').strip()`), spans moved with them.
- `relationships` is a dict {object_ids, floating_object_ids, grounding: [{phrase, object_ids}]}.
- `landmark` is {category, fine_category}, "" where unknown (the release's value for "none").
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter

import fsspec

from grand.export.gcg import client_caption, shift_details
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import good_images, has_mask, ok, require_levels
from grand.io.output import OutputDir

_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects", "short_captions", "landmark", "relationships"],
    3: ["image_id", "status", "dense_caption"],
    4: ["image_id", "status", "additional_context"],
}
SA1B_SOURCE = "sa1b_gt"


def released_object(obj: dict, size: tuple[int, int]) -> dict:
    seg = obj.get("segmentation")
    real = has_mask(seg, size)
    source = obj.get("segmentation_source")
    return {
        "id": int(obj["id"]), "bbox": [float(v) for v in obj["bbox"]], "labels": list(obj.get("labels") or []),
        "label": obj.get("label"), "score": obj.get("score"), "attributes": list(obj.get("attributes") or []),
        "depth": obj.get("depth"), "segmentation": seg if real else None,
        "segmentation_source": None if not real else ("SAM" if source == SA1B_SOURCE else "EVA"),
        "segmentation_model": source if real else None,
    }


def released_caption(caption: str, details: list[dict], masked: set[int], skipped: Counter) -> dict:
    """{caption, details: [{phrase, tokens_positive, id, ids, bbox}]}: cleaned as the loaders clean
    it, details whose span matches and that name at least one object with a mask."""
    text, offset = client_caption(caption)
    kept = []
    for d in shift_details(details, offset, len(text), skipped):
        span = d.get("tokens_positive") or []
        if len(span) != 2 or text[span[0]:span[1]] != d.get("phrase"):
            skipped["span does not match the caption"] += 1
            continue
        ids = [int(i) for i in d.get("ids") or [] if int(i) in masked]
        if not ids:
            skipped["phrase names no object with a mask"] += 1
            continue
        kept.append({"phrase": d["phrase"], "tokens_positive": [int(span[0]), int(span[1])], "id": min(ids),
                     "ids": ids, "bbox": d.get("bbox")})
    return {"caption": text, "details": kept}


def released_record(rows: dict[int, dict | None], skipped: Counter) -> dict:
    """One image's value in the released layout (the key is its file name)."""
    l1 = rows[1]
    src = rows[2] if ok(rows.get(2)) else l1
    size = (int(l1["height"]), int(l1["width"]))
    objects = [released_object(o, size) for o in src.get("objects") or []]
    floating = [released_object(o, size) for o in src.get("floating_objects") or []]
    masked = {o["id"] for o in objects + floating if o["segmentation"] is not None}
    object_ids, floating_ids = {o["id"] for o in objects}, {o["id"] for o in floating}
    l2 = rows[2] if ok(rows.get(2)) else None
    l3 = rows[3] if ok(rows.get(3)) else None
    l4 = rows[4] if ok(rows.get(4)) else None
    short = [{"model": c.get("model"), **released_caption(c["caption"], c.get("details") or [], masked, skipped)}
             for c in (l2.get("short_captions") or [] if l2 else []) if c.get("caption")]
    dense = None
    if l3 and (l3.get("dense_caption") or {}).get("caption"):
        dc = l3["dense_caption"]
        dense = {**released_caption(dc["caption"], dc.get("details") or [], masked, skipped),
                 "verified": bool(dc.get("verified"))}
    grounding = [{"phrase": r["phrase"], "object_ids": [int(i) for i in r.get("object_ids") or []]}
                 for r in (l2.get("relationships") or [] if l2 else [])]
    linked = {i for g in grounding for i in g["object_ids"]}
    landmark = (l2 or {}).get("landmark") or {}
    return {
        "objects": objects, "floating_objects": floating, "short_captions": short, "dense_caption": dense,
        "relationships": {"object_ids": sorted(linked & object_ids), "floating_object_ids": sorted(linked & floating_ids),
                          "grounding": grounding},
        "landmark": {"category": landmark.get("category") or "", "fine_category": landmark.get("fine_category") or ""},
        "additional_context": (l4 or {}).get("additional_context"),
    }


def _stem(file_name: str) -> str:
    """A flat file stem for one image's JSON: GranD names it after the image (`sa_1.jpg` -> `sa_1`)."""
    return posixpath.splitext(file_name)[0].replace("/", "_") or "image"


def export_grand(output_uri: str, dest: str, per_shard: bool = False, images_dir: str | None = None,
                 min_side: int = MIN_SIDE, check_images: bool = True) -> dict:
    """Write `output_uri` in GranD's released layout into the folder `dest` (see the module docstring).
    `images_dir`, `min_side`, `check_images`: which image files the keys name (grand.export.images)."""
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export grand")
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    files = ImageFiles(out, images_dir, min_side, check_images)
    skipped: Counter = Counter()
    used: set[str] = set()
    n_images = n_files = 0
    shard_file = None  # (shard, open .partial file, path, entries written)

    def close_shard() -> None:
        nonlocal shard_file, n_files
        if shard_file is not None:
            _, f, path, _ = shard_file
            f.write("\n}\n")
            f.close()
            fs.mv(path + ".partial", path)
            n_files += 1
            shard_file = None

    try:
        for rows in good_images(out, _COLUMNS, levels=(1, 2, 3, 4)):
            name = files.resolve(rows[1])
            if name is None:
                continue
            record = released_record(rows, skipped)
            n_images += 1
            if per_shard:
                shard = rows[1]["shard"]
                if shard_file is None or shard_file[0] != shard:
                    close_shard()
                    path = f"{root}/{shard}.json"
                    shard_file = [shard, fs.open(path + ".partial", "w", encoding="utf-8"), path, 0]
                    shard_file[1].write("{")
                shard_file[1].write(("\n" if shard_file[3] == 0 else ",\n") + json.dumps(name) + ": "
                                    + json.dumps(record, ensure_ascii=False))
                shard_file[3] += 1
                continue
            stem, k = _stem(name), 1
            while stem in used:
                k += 1
                stem = f"{_stem(name)}_{k}"
            used.add(stem)
            path = f"{root}/{stem}.json"
            with fs.open(path + ".partial", "w", encoding="utf-8") as f:
                json.dump({name: record}, f, ensure_ascii=False)
            fs.mv(path + ".partial", path)
            n_files += 1
        close_shard()
    except BaseException:
        if shard_file is not None:
            shard_file[1].close()
            fs.rm(shard_file[2] + ".partial")
        raise
    return {"dest": dest, "images": n_images, "files": n_files, "skipped": dict(skipped.most_common()),
            **files.summary()}
