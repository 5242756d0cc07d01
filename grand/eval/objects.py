"""`grand eval objects`: grand's objects against a COCO or LVIS ground truth of the same images.

What is compared: per image, the objects (and floating objects) of level 2 where that image's
level-2 row is ok, else level 1's (`--level` forces one level), i.e. what `grand export coco`
writes. GT images are matched to output rows by file name (grand.eval.categories); only matched
images are evaluated, and an error row counts as an image where nothing was found.

- Box AP / AP50: pycocotools COCOeval "bbox" (AP over IoU 0.50:0.95 and at 0.5; all areas; its
  default 100 detections per image), scores = the objects' scores.
  - class-aware: each object's final label mapped to a GT category (CategoryVocabulary); objects
    whose label maps to none take no part (their share is reported as `unmapped`).
  - class-agnostic: every object and every GT instance in one category "object".
  LVIS (federated) ground truth: a detection of a category neither annotated nor listed as
  negative for its image is dropped, as LVIS's evaluation ignores it. LVIS's other rules (not-
  exhaustive categories, 300 detections) are not applied: use lvis-api for published numbers.
- Mask AP / AP50: the same with COCOeval "segm" on the objects' RLE masks (objects without a mask
  are left out, and counted).
- Recall at IoU 0.5 (class-agnostic): the share of non-crowd GT instances matched one-to-one, as
  COCOeval matches (predictions in falling score order, each taking the unmatched GT box it
  overlaps most, IoU >= 0.5), by `objects` alone and by objects plus floating objects. The
  difference is what the >= 2-models vote gives up.
- The pairs of that objects-plus-floating matching give:
  - mean mask IoU of our mask with the GT instance's mask (the box-prompted mask quality that
    SAM-family papers report), over the pairs where our object has a mask;
  - label accuracy: the share of pairs whose final label maps to the GT instance's category, and
    the share where any candidate label (`labels`) does;
  - per model: the objects each detector voted for (`models`), how many of them are matched (true
    positives), that precision, and the true positives no other model saw.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from grand.eval.categories import (
    CategoryVocabulary, GroundTruth, load_ground_truth, load_label_map, match_images, output_image_ids,
)
from grand.export import shard_names
from grand.export.rows import Committed, flagged_objects, image_rows, require_levels
from grand.io.output import OutputDir

MATCH_IOU = 0.5
_COLUMNS = ["image_id", "status", "error", "objects", "floating_objects"]


def _xywh(xyxy: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1)]


def _rle(seg: dict) -> dict:
    counts = seg["counts"]
    return {"size": [int(seg["size"][0]), int(seg["size"][1])],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def read_predictions(output_uri: str, level: int | None = None, keep: set[str] | None = None):
    """Yield (image_id, status, [(object, is floating)]) for every image of the output folder
    (only those in `keep`, when given)."""
    out = OutputDir(output_uri)
    levels = (level,) if level else (1, 2)
    committed = Committed(out)
    columns = {lv: _COLUMNS for lv in levels}
    for shard in shard_names(out, levels):
        for rows in image_rows(out, shard, levels, columns, committed=committed):
            # flagged_objects prefers rows[2] when ok, else rows[1]: with --level, only that level.
            src = rows if level is None else {1: rows.get(level)}
            base = src.get(1) or rows.get(2)
            if keep is not None and base["image_id"] not in keep:
                continue
            yield base["image_id"], base.get("status"), flagged_objects(src, floating=True)


def evaluate_objects(
    output_uri: str,
    gt: str | GroundTruth,
    level: int | None = None,
    include_floating: bool = True,
    label_map: dict[str, str] | str | None = None,
) -> dict:
    """Box/mask AP, recall, mask IoU, label accuracy and per-model contribution (module doc).
    `include_floating`: floating objects take part in AP (as `grand export coco` writes them)."""
    truth = gt if isinstance(gt, GroundTruth) else load_ground_truth(gt)
    vocab = CategoryVocabulary(truth.categories, label_map=load_label_map(label_map) if isinstance(label_map, str)
                               else label_map)
    if level not in (None, 1, 2):
        raise ValueError(f"level must be 1, 2 or None, got {level!r}")
    require_levels(OutputDir(output_uri), (level,) if level else (1, 2), "grand eval objects")
    # Match on the ids first: only the matched images' objects are then held in memory.
    image_ids = output_image_ids(output_uri, (level,) if level else (1, 2))
    matched = match_images(truth, image_ids)
    if not matched:
        raise ValueError(
            f"no image of {output_uri!r} matches a file_name of the ground truth (e.g. GT "
            f"{truth.dataset['images'][0]['file_name'] if truth.dataset['images'] else '-'!r}, output "
            f"{image_ids[0] if image_ids else '-'!r}): give the annotations of the images that were run"
        )
    coco_gt = truth.coco()

    evaluated: list[int] = []
    errors = 0
    box_aware, box_agnostic, segm_aware, segm_agnostic = [], [], [], []
    per_image: dict[int, list[tuple[dict, bool, int | None]]] = {}
    unmapped: Counter = Counter()
    n_pred = {"objects": 0, "floating": 0}
    no_mask = 0
    allowed = _lvis_allowed(truth) if truth.is_lvis else None
    for image_id, status, objs in read_predictions(output_uri, level, keep=set(matched)):
        gid = matched[image_id]
        evaluated.append(gid)
        errors += status != "ok"
        kept = []
        for obj, floating in objs:
            n_pred["floating" if floating else "objects"] += 1
            cat = vocab.category_of(obj.get("label"))
            kept.append((obj, floating, cat))
            if floating and not include_floating:
                continue
            if cat is None:
                unmapped[obj.get("label") or ""] += 1
            box = {"image_id": gid, "bbox": _xywh(obj["bbox"]), "score": float(obj.get("score") or 0.0)}
            box_agnostic.append({**box, "category_id": 1})
            aware = cat is not None and (allowed is None or cat in allowed.get(gid, ()))
            if aware:
                box_aware.append({**box, "category_id": cat})
            seg = obj.get("segmentation")
            if seg and seg.get("counts"):
                mask = {"image_id": gid, "segmentation": {"size": list(seg["size"]), "counts": seg["counts"]},
                        "score": box["score"]}
                segm_agnostic.append({**mask, "category_id": 1})
                if aware:
                    segm_aware.append({**mask, "category_id": cat})
            else:
                no_mask += 1
        per_image[gid] = kept

    gt_ids = {im["id"] for im in truth.dataset["images"]}
    evaluated_set = set(evaluated)
    result: dict = {
        "output": output_uri,
        "images": {"gt": len(gt_ids), "evaluated": len(evaluated), "error_rows": errors,
                   "gt_without_output": len(gt_ids - set(evaluated)),
                   "output_without_gt": len(image_ids) - len(evaluated)},
        "ground_truth": "lvis" if truth.is_lvis else "coco",
        "gt_instances": sum(1 for a in truth.dataset["annotations"]
                            if not a["iscrowd"] and a["image_id"] in evaluated_set),
        "predictions": n_pred,
        "include_floating": include_floating,
        "notes": [],
    }
    n_ap = len(box_agnostic)
    result["unmapped"] = {"predictions": sum(unmapped.values()), "share": (sum(unmapped.values()) / n_ap) if n_ap else 0.0,
                          "top_labels": dict(unmapped.most_common(20))}
    agnostic_gt = _agnostic(coco_gt)
    result["box"] = {"class_aware": coco_ap(coco_gt, box_aware, "bbox", evaluated),
                     "class_agnostic": coco_ap(agnostic_gt, box_agnostic, "bbox", evaluated)}
    if segm_agnostic:
        result["segm"] = {"class_aware": coco_ap(coco_gt, segm_aware, "segm", evaluated),
                          "class_agnostic": coco_ap(agnostic_gt, segm_agnostic, "segm", evaluated)}
    else:
        result["segm"] = None
        result["notes"].append("no object has a mask (segmenter off?): mask AP and mask IoU not computed")
    if no_mask and segm_agnostic:
        result["notes"].append(f"{no_mask} objects without a mask are left out of mask AP")

    result.update(_matching(coco_gt, per_image, vocab))
    return result


def _lvis_allowed(truth: GroundTruth) -> dict[int, set[int]]:
    """LVIS: per image, the categories it is evaluated on (annotated positives and negatives)."""
    allowed: dict[int, set[int]] = defaultdict(set)
    for im in truth.dataset["images"]:
        allowed[im["id"]].update(int(c) for c in im.get("neg_category_ids") or [])
    for ann in truth.dataset["annotations"]:
        allowed[ann["image_id"]].add(int(ann["category_id"]))
    return allowed


def _agnostic(coco_gt):
    """The same GT with every instance in one category (id 1)."""
    from pycocotools.coco import COCO

    data = {"images": coco_gt.dataset["images"], "categories": [{"id": 1, "name": "object"}],
            "annotations": [{**a, "category_id": 1} for a in coco_gt.dataset["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        agn = COCO()
        agn.dataset = data
        agn.createIndex()
    return agn


def coco_ap(coco_gt, detections: list[dict], iou_type: str, image_ids: Sequence[int]) -> dict:
    """{"AP", "AP50"} of COCOeval (`iou_type` "bbox" or "segm") over `image_ids`; AP 0 without
    detections, None without GT instances."""
    from pycocotools.cocoeval import COCOeval

    ids = sorted(set(image_ids))
    if not any(coco_gt.getAnnIds(imgIds=ids)):
        return {"AP": None, "AP50": None, "detections": len(detections)}
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 means no category had GT: report as None, never as a score.
    ap, ap50 = (float(v) if v >= 0 else None for v in ev.stats[:2])
    return {"AP": ap, "AP50": ap50, "detections": len(detections)}


def greedy_match(pred_boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
                 threshold: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """COCOeval's matching: predictions by falling score, each takes the unmatched GT box with the
    highest IoU >= threshold. Boxes are [x, y, w, h]. Returns (pred, gt, IoU) pairs."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return []
    iou = np.asarray(mask_utils.iou(pred_boxes.tolist(), gt_boxes.tolist(), [0] * len(gt_boxes)))
    iou = iou.reshape(len(pred_boxes), len(gt_boxes))
    taken = np.zeros(len(gt_boxes), bool)
    pairs = []
    for p in np.argsort(-scores, kind="stable"):
        row = np.where(taken, -1.0, iou[p])
        g = int(np.argmax(row))
        if row[g] >= threshold:
            taken[g] = True
            pairs.append((int(p), g, float(row[g])))
    return pairs


def _matching(coco_gt, per_image: dict[int, list[tuple[dict, bool, int | None]]], vocab: CategoryVocabulary) -> dict:
    recalled = {"objects": 0, "objects_and_floating": 0}
    n_gt = 0
    mask_ious: list[float] = []
    size_mismatch = 0
    labels_ok = any_ok = pairs_n = 0
    models: dict[str, Counter] = defaultdict(Counter)
    for gid, kept in per_image.items():
        anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[gid])) if not a["iscrowd"]]
        n_gt += len(anns)
        for obj, _floating, _cat in kept:
            for m in obj.get("models") or []:
                models[m]["voted"] += 1
        if not anns or not kept:
            continue
        gt_boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.array([_xywh(o["bbox"]) for o, _, _ in kept], np.float64).reshape(-1, 4)
        scores = np.array([float(o.get("score") or 0.0) for o, _, _ in kept])
        solid = np.array([not f for _, f, _ in kept])
        solid_pairs = greedy_match(boxes[solid], scores[solid], gt_boxes)
        recalled["objects"] += len(solid_pairs)
        pairs = greedy_match(boxes, scores, gt_boxes)
        recalled["objects_and_floating"] += len(pairs)
        img = coco_gt.imgs[gid]
        for p, g, _ in pairs:
            obj, _, cat = kept[p]
            ann = anns[g]
            pairs_n += 1
            labels_ok += cat == ann["category_id"]
            any_ok += any(vocab.category_of(lb) == ann["category_id"] for lb in [obj.get("label"), *(obj.get("labels") or [])])
            voters = obj.get("models") or []
            for m in voters:
                models[m]["true_positives"] += 1
            if len(set(voters)) == 1:
                models[voters[0]]["only_model_true_positives"] += 1
            seg = obj.get("segmentation")
            if seg and seg.get("counts"):
                if [int(v) for v in seg["size"]] != [int(img["height"]), int(img["width"])]:
                    size_mismatch += 1
                    continue
                gt_rle = coco_gt.annToRLE(ann)
                mask_ious.append(float(mask_utils.iou([_rle(seg)], [gt_rle], [0])[0][0]))
    out = {
        "recall50": {k: (v / n_gt if n_gt else None) for k, v in recalled.items()},
        "recalled": recalled,
        "matched_pairs": pairs_n,
        "mask_iou": {"mean": float(np.mean(mask_ious)) if mask_ious else None, "pairs": len(mask_ious),
                     "size_mismatch": size_mismatch},
        "label_accuracy": {"final": labels_ok / pairs_n if pairs_n else None,
                           "any_candidate": any_ok / pairs_n if pairs_n else None, "pairs": pairs_n},
        "per_model": {
            name: {"voted": c["voted"], "true_positives": c["true_positives"],
                   "precision": c["true_positives"] / c["voted"] if c["voted"] else None,
                   "only_model_true_positives": c["only_model_true_positives"]}
            for name, c in sorted(models.items())
        },
    }
    return out


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def objects_text(r: dict) -> str:
    """Human-readable summary of `evaluate_objects`' result."""
    im = r["images"]
    lines = [
        f"images: {im['evaluated']} evaluated of {im['gt']} in the ground truth ({im['gt_without_output']} not in the "
        f"output, {im['output_without_gt']} output images without GT, {im['error_rows']} error rows)",
        f"GT instances (not crowd): {r['gt_instances']}; predictions: {r['predictions']['objects']} objects, "
        f"{r['predictions']['floating']} floating" + ("" if r["include_floating"] else " (floating left out of AP)"),
        f"labels mapped to no GT category: {r['unmapped']['predictions']} ({_fmt(r['unmapped']['share'], True)})"
        + (f", e.g. {', '.join(list(r['unmapped']['top_labels'])[:5])}" if r["unmapped"]["top_labels"] else ""),
        "",
        f"{'':24s}{'AP':>8s}{'AP50':>8s}",
    ]
    for kind in ("box", "segm"):
        block = r.get(kind)
        if not block:
            continue
        for mode in ("class_aware", "class_agnostic"):
            name = f"{'box' if kind == 'box' else 'mask'} {mode.replace('_', '-')}"
            lines.append(f"{name:24s}{_fmt(block[mode]['AP']):>8s}{_fmt(block[mode]['AP50']):>8s}")
    rec = r["recall50"]
    lines += [
        "",
        f"recall@0.5: objects {_fmt(rec['objects'], True)}, objects + floating {_fmt(rec['objects_and_floating'], True)}",
        f"mean mask IoU on matched GT: {_fmt(r['mask_iou']['mean'])} ({r['mask_iou']['pairs']} pairs)",
        f"label accuracy on matched: final {_fmt(r['label_accuracy']['final'], True)}, any candidate "
        f"{_fmt(r['label_accuracy']['any_candidate'], True)} ({r['label_accuracy']['pairs']} pairs)",
        "per model: voted / true positives / precision / TPs no other model saw",
    ]
    for name, m in r["per_model"].items():
        lines.append(f"  {name:22s}{m['voted']:8d}{m['true_positives']:8d}{_fmt(m['precision'], True):>8s}"
                     f"{m['only_model_true_positives']:8d}")
    lines += [f"note: {n}" for n in r.get("notes") or []]
    return "\n".join(lines)
