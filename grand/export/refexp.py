"""Export referring expressions (RefCOCO-like): each object with the phrases that single it out.

One record per object that has at least one expression:
    {"ref_id", "file_name", "image_id", "height", "width", "object_id", "category", "floating",
     "bbox" [x, y, w, h] (COCO), "bbox_xyxy", "segmentation" (COCO RLE or null), "area",
     "sentences": [{"sent_id", "raw", "sent", "tokens", "kind"}]}

Expressions are the object's attributes (region descriptions, kind "attribute") and level 2's
relationship phrases that name exactly this one object (kind "relationship"; a phrase linked to
several objects refers to a group, not to one of them). `raw` is the text as written; `sent` and
`tokens` are lower-cased words, as in RefCOCO. Objects come from level 2 (after phrase grounding)
where the image's level-2 row is ok, else from level 1; objects without a mask (or with an all-zero
one) keep their box and have `segmentation: null`. `file_name` follows grand.export.images.
"""

from __future__ import annotations

import re

from grand.core.rle import mask_area
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import SampleWriter, flagged_objects, good_images, has_mask, image_size, ok, require_levels
from grand.io.output import OutputDir

KINDS = ("attribute", "relationship")
_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects", "relationships"],
}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def coco_box(xyxy) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [x1, y1, x2 - x1, y2 - y1]


def expressions(obj: dict, relationships: list[dict], kinds=KINDS) -> list[tuple[str, str]]:
    """(kind, text) of one object, first occurrence of each text (case-insensitive) kept."""
    found: list[tuple[str, str]] = []
    if "attribute" in kinds:
        found += [("attribute", a) for a in obj.get("attributes") or []]
    if "relationship" in kinds:
        found += [("relationship", r["phrase"]) for r in relationships if list(r.get("object_ids") or []) == [obj["id"]]]
    seen: set[str] = set()
    unique = []
    for kind, text in found:
        key = " ".join(words(text))
        if key and key not in seen:
            seen.add(key)
            unique.append((kind, text.strip()))
    return unique


def export_refexp(output_uri: str, dest: str, kinds=KINDS, include_floating: bool = True, negatives: int = 0,
                  seed: int = 0, images_dir: str | None = None, min_side: int = MIN_SIDE,
                  check_images: bool = True) -> dict:
    """Write the referring expressions of `output_uri` to `dest` (.json: a list; else JSON Lines).
    `negatives`: also up to that many hard negatives per image (grand.export.negatives), records
    marked `negative: true`; the others then carry `negative: false`.
    `images_dir`, `min_side`, `check_images`: which image files records point at (grand.export.images)."""
    if negatives < 0:
        raise ValueError(f"--negatives must be 0 or more, got {negatives}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be among {KINDS}, got {list(kinds)}")
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export refexp")
    if kinds == ("relationship",):
        require_levels(out, [2], "grand export refexp --kinds relationship")
    n_objects = n_sentences = n_negatives = 0
    files = ImageFiles(out, images_dir, min_side, check_images)
    if negatives:
        from grand.export.negatives import label_vocabulary, negative_expressions, negative_record

        vocabulary = label_vocabulary(out, include_floating)  # a first pass: the labels only
    with SampleWriter(dest) as writer:
        for rows in good_images(out, _COLUMNS):
            rels = (rows[2].get("relationships") or []) if ok(rows.get(2)) else []
            width, height = image_size(rows)
            image_id = rows[1]["image_id"]
            file_name = ...  # resolved at the image's first record (its image is written then)
            for obj, floating in flagged_objects(rows, include_floating):
                exprs = expressions(obj, rels, kinds)
                if not exprs:
                    continue
                if file_name is ...:
                    file_name = files.resolve(rows[1])
                if file_name is None:
                    break  # a skipped image (counted by `files`)
                seg = obj["segmentation"] if has_mask(obj.get("segmentation")) else None
                box = coco_box(obj["bbox"])
                sentences = []
                for kind, text in exprs:
                    n_sentences += 1
                    toks = words(text)
                    sentences.append({"sent_id": n_sentences, "raw": text, "sent": " ".join(toks),
                                      "tokens": toks, "kind": kind})
                n_objects += 1
                writer.write({
                    "ref_id": n_objects, "file_name": file_name, "image_id": image_id, "height": height,
                    "width": width, "object_id": obj["id"], "category": obj["label"],
                    "floating": floating,
                    "bbox": box, "bbox_xyxy": [float(v) for v in obj["bbox"]], "segmentation": seg,
                    "area": float(mask_area(seg)) if seg else box[2] * box[3], "sentences": sentences,
                    **({"negative": False} if negatives else {}),
                })
            if negatives:
                if file_name is ...:
                    file_name = files.resolve(rows[1])
                if file_name is None:
                    continue  # a skipped image (counted by `files`)
                head = {"file_name": file_name, "image_id": image_id, "height": height, "width": width}
                for kind, expr, label in negative_expressions(rows, vocabulary, negatives, seed, include_floating):
                    n_objects += 1
                    n_sentences += 1
                    n_negatives += 1
                    writer.write(negative_record(head, n_objects, n_sentences, kind, expr, label))
    return {"dest": dest, "refs": n_objects, "sentences": n_sentences,
            **({"negatives": n_negatives} if negatives else {}), **files.summary()}
