"""Export GCG ground truth in the layout of GLaMM's evaluator (`eval/gcg/evaluate.py --split S
--gt_dir_path DEST --prediction_dir_path DEST/predictions`):

    DEST/<split>_gcg_coco_mask_gt.json     COCO instances: one annotation (merged RLE mask, category 1
                                           "object") per grounded phrase, in span order
    DEST/<split>_gcg_coco_caption_gt.json  COCO captions: one {image_id, caption, labels: [phrases]}
                                           per image, `labels` in the order of the mask annotations
    DEST/predictions/<image id>.json       one {image_id, caption, phrases, pred_masks} per GT image

The image id is the file name without its extension (GLaMM's inference names its outputs so), made
unique. The GT is what `grand export gcg` writes, one caption per image (level 3's dense caption, or
one captioner's short caption). `predictions` (anything `grand eval gcg` reads: GranD-f samples or
GLaMM outputs, matched by file name, image id or stem) fills the predictions folder; without it the
folder holds the GT itself, an oracle whose scores must all be 1 (a check of the layout).
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter

import fsspec
from pycocotools import mask as mask_utils

from grand.eval.gcg import GcgSample, load_samples, sample_from_dict
from grand.export.gcg import grounded_samples, output_for_gcg
from grand.export.images import MIN_SIDE, ImageFiles

SPLITS = ("val", "test")


def _write_atomic(fs, path: str, text: str) -> None:
    with fs.open(path + ".partial", "w", encoding="utf-8") as f:
        f.write(text)
    fs.mv(path + ".partial", path)


def export_gcg_eval(output_uri: str, dest: str, split: str = "val", source: str = "dense",
                    captioner: str | None = None, predictions: str | None = None, verified_only: bool = False,
                    images_dir: str | None = None, min_side: int = MIN_SIDE, check_images: bool = True) -> dict:
    """Write GLaMM's GCG evaluation layout for `output_uri` into the folder `dest` (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (GLaMM's evaluate.py takes only these), got {split!r}")
    if source == "short" and captioner is None:
        raise ValueError("GLaMM's evaluator takes one caption per image: with --source short give --captioner NAME")
    out = output_for_gcg(output_uri, source, captioner)
    preds = load_samples(predictions) if predictions else None
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/predictions", exist_ok=True)
    files = ImageFiles(out, images_dir, min_side, check_images)
    skipped: Counter = Counter()
    images, captions, used = [], [], set()
    n_anns = predicted = 0
    mask_path = f"{root}/{split}_gcg_coco_mask_gt.json"
    with fs.open(mask_path + ".partial", "w", encoding="utf-8") as f:
        f.write('{"annotations": [')
        for _, samples in grounded_samples(out, source, captioner, verified_only, skipped, files):
            if not samples:
                continue
            sample = samples[0]  # one caption per image (dense, or one captioner's)
            gt = sample_from_dict(sample)
            image_id, k = posixpath.splitext(sample["file_name"])[0].replace("/", "_"), 1
            while image_id in used:
                k += 1
                image_id = f"{posixpath.splitext(sample['file_name'])[0].replace('/', '_')}_{k}"
            used.add(image_id)
            images.append({"id": image_id, "file_name": sample["file_name"], "height": sample["height"],
                           "width": sample["width"]})
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": gt.caption,
                             "labels": gt.phrases})
            for mask in gt.masks:
                n_anns += 1
                coco = {"size": mask["size"], "counts": mask["counts"].encode("ascii")}
                ann = {"id": n_anns, "image_id": image_id, "category_id": 1, "segmentation": mask,
                       "area": float(mask_utils.area(coco)), "bbox": [float(v) for v in mask_utils.toBbox(coco)],
                       "iscrowd": 0}
                f.write(("" if n_anns == 1 else ", ") + json.dumps(ann))
            pred = gt if preds is None else _match(preds, sample, image_id)
            predicted += pred is not None
            pred = pred or GcgSample(image_id, "", [], [])
            _write_atomic(fs, f"{root}/predictions/{image_id}.json", json.dumps(
                {"image_id": image_id, "caption": pred.caption, "phrases": pred.phrases, "pred_masks": pred.masks}))
        f.write('], "images": ' + json.dumps(images) + ', "categories": [{"id": 1, "name": "object"}]}\n')
    fs.mv(mask_path + ".partial", mask_path)
    # No "categories" here: pycocotools' COCO() would then look up a category_id in every caption.
    _write_atomic(fs, f"{root}/{split}_gcg_coco_caption_gt.json",
                  json.dumps({"images": images, "annotations": captions}) + "\n")
    return {"dest": dest, "split": split, "images": len(images), "phrases": n_anns,
            "predictions": "ground truth (oracle)" if preds is None else predictions,
            "predicted_images": len(images) if preds is None else predicted,
            "skipped": dict(skipped.most_common()), **files.summary()}


def _match(preds: dict[str, GcgSample], sample: dict, image_id: str) -> GcgSample | None:
    for key in (sample["file_name"], sample["image_id"], image_id):
        if key in preds:
            return preds[key]
    return None
