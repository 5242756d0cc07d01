"""Export region <-> description pairs for region-level training (GPT4RoI / Osprey style).

One record per image (the default), listing its described regions:
    {"file_name", "image_id", "height", "width",
     "regions": [{"object_id", "label", "labels", "descriptions": [...], "bbox" [x1, y1, x2, y2],
                  "bbox_xywh", "segmentation" (COCO RLE or null), "depth", "floating"}]}
or, with `per_region`, one record per (region, description) pair:
    {"file_name", "image_id", "height", "width", "object_id", "label", "description", "bbox",
     "bbox_xywh", "segmentation"}

Descriptions are the region's attributes (GRiT / GPT4RoI-style region captions of level 1);
`all_regions` also lists regions that have only a label (descriptions: [], or the label itself as
the description with `per_region`). Objects come from level 2 where its row is ok, else level 1.
An all-zero mask is no mask (`segmentation: null`); `file_name` follows grand.export.images.
"""

from __future__ import annotations

from grand.export.refexp import coco_box
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import SampleWriter, flagged_objects, good_images, has_mask, image_size, require_levels
from grand.io.output import OutputDir

_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects"],
}


def _region(obj: dict, floating: bool) -> dict:
    return {"object_id": obj["id"], "label": obj["label"], "labels": list(obj.get("labels") or []),
            "descriptions": list(obj.get("attributes") or []), "bbox": [float(v) for v in obj["bbox"]],
            "bbox_xywh": coco_box(obj["bbox"]),
            "segmentation": obj["segmentation"] if has_mask(obj.get("segmentation")) else None, "depth": obj.get("depth"),
            "floating": floating}


def export_regions(output_uri: str, dest: str, per_region: bool = False, all_regions: bool = False,
                   include_floating: bool = True, format: str = "grand", seed: int = 0,
                   images_dir: str | None = None, min_side: int = MIN_SIDE, check_images: bool = True) -> dict:
    """Write region/description records of `output_uri` to `dest` (.json: a list; else JSON Lines).
    `format` "gpt4roi" / "osprey": multi-region conversations in that project's layout instead
    (grand.export.region_chat). `images_dir`, `min_side`, `check_images`: which image files records
    point at (grand.export.images)."""
    if format != "grand":
        if per_region:
            raise ValueError("--per-region applies to --format grand only (gpt4roi/osprey write one record per image)")
        from grand.export.region_chat import export_region_chat

        return export_region_chat(output_uri, dest, format, all_regions=all_regions,
                                  include_floating=include_floating, seed=seed, images_dir=images_dir,
                                  min_side=min_side, check_images=check_images)
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export regions")
    n_images = n_regions = n_pairs = 0
    files = ImageFiles(out, images_dir, min_side, check_images)
    with SampleWriter(dest) as writer:
        for rows in good_images(out, _COLUMNS):
            regions = [_region(o, floating) for o, floating in flagged_objects(rows, include_floating)
                       if all_regions or o.get("attributes")]
            if not regions:
                continue
            file_name = files.resolve(rows[1])
            if file_name is None:
                continue  # a skipped image (counted by `files`)
            width, height = image_size(rows)
            head = {"file_name": file_name, "image_id": rows[1]["image_id"], "height": height,
                    "width": width}
            n_images += 1
            n_regions += len(regions)
            if not per_region:
                n_pairs += sum(len(r["descriptions"]) for r in regions)
                writer.write({**head, "regions": regions})
                continue
            for r in regions:
                for text in r["descriptions"] or [r["label"]]:
                    n_pairs += 1
                    writer.write({**head, "object_id": r["object_id"], "label": r["label"], "description": text,
                                  "bbox": r["bbox"], "bbox_xywh": r["bbox_xywh"], "segmentation": r["segmentation"]})
    return {"dest": dest, "images": n_images, "regions": n_regions, "pairs": n_pairs, **files.summary()}
