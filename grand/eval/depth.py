"""`grand eval depth`: the stored relative depth maps (config `level1.depth.store_map`) against
ground-truth metric depth, with the protocol used for relative (affine-invariant) depth models
(MiDaS, Depth Anything):

1. grand's map is relative inverse depth (larger = nearer). It is resized to the GT's size
   (bilinear) and aligned per image to the GT's inverse depth by least squares: s, t minimise
   sum (s * pred + t - 1 / gt)^2 over the pixels where both are valid (GT > 0 and finite; grand's
   map non-zero).
2. The aligned inverse depth is turned back into depth (clamped to at most `max_depth`, or the
   GT's largest value when none is given), and compared with the GT depth on the same pixels:
   - AbsRel = mean |d - gt| / gt,
   - δ < 1.25 = share of pixels with max(d / gt, gt / d) < 1.25.
   Both are averaged per image, then over images.

GT files: `DIR/<image_id without its extension>.{npy,png,tif,tiff}`, else the same by the id's last
path part. `.npy`: float depth; `.png`/`.tif`: 16-bit or float depth (any unit: the alignment
absorbs scale). Zero means no measurement. `gt_kind="disparity"` reads the files as inverse depth.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from grand.core.depth import decode_depth_map
from grand.export import iter_rows, shard_names
from grand.export.rows import require_levels
from grand.io.output import OutputDir

GT_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


def align_scale_shift(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Least-squares (s, t) with s * pred + t ~ target on `valid` pixels."""
    p = pred[valid].astype(np.float64)
    y = target[valid].astype(np.float64)
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(s), float(t)


def image_depth_metrics(pred_inverse: np.ndarray, gt: np.ndarray, gt_kind: str = "depth",
                        max_depth: float | None = None) -> dict | None:
    """{"AbsRel", "delta1", "pixels", "scale", "shift"} of one image (module doc), or None when
    fewer than 10 pixels are valid in both."""
    gt = np.asarray(gt, np.float64)
    if pred_inverse.shape != gt.shape:
        img = Image.fromarray(np.asarray(pred_inverse, np.float32), mode="F")
        # Resize only valid values, so invalid zeros do not bleed into their neighbours.
        valid_img = Image.fromarray((pred_inverse != 0).astype(np.float32), mode="F")
        size = (gt.shape[1], gt.shape[0])
        w = np.asarray(valid_img.resize(size, Image.BILINEAR), np.float64)
        v = np.asarray(img.resize(size, Image.BILINEAR), np.float64)
        pred = np.where(w > 0.5, v / np.maximum(w, 1e-6), 0)
    else:
        pred = np.asarray(pred_inverse, np.float64)
    ok_gt = np.isfinite(gt) & (gt > 0)
    valid = ok_gt & np.isfinite(pred) & (pred != 0)
    if valid.sum() < 10:
        return None
    gt_depth = np.where(ok_gt, gt, 0) if gt_kind == "depth" else np.where(ok_gt, 1.0 / np.where(ok_gt, gt, 1), 0)
    target = np.zeros_like(gt_depth)
    target[valid] = 1.0 / gt_depth[valid]
    s, t = align_scale_shift(pred, target, valid)
    cap = float(max_depth) if max_depth else float(gt_depth[valid].max())
    inverse = np.maximum(s * pred[valid] + t, 1.0 / cap)
    d, g = 1.0 / inverse, gt_depth[valid]
    ratio = np.maximum(d / g, g / d)
    return {"AbsRel": float(np.mean(np.abs(d - g) / g)), "delta1": float(np.mean(ratio < 1.25)),
            "pixels": int(valid.sum()), "scale": s, "shift": t}


def read_gt_depth(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float64)
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float64)


def find_gt_file(root: Path, image_id: str) -> Path | None:
    stem = PurePosixPath(image_id).with_suffix("")
    for base in (root / str(stem), root / stem.name):
        for suffix in GT_SUFFIXES:
            candidate = base.with_name(base.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def evaluate_depth(output_uri: str, gt_dir: str, gt_kind: str = "depth", max_depth: float | None = None) -> dict:
    """AbsRel and δ < 1.25 over the images that have both a stored map and a GT file (module doc)."""
    if gt_kind not in ("depth", "disparity"):
        raise ValueError(f"gt_kind must be 'depth' or 'disparity', got {gt_kind!r}")
    root = Path(gt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--gt-depth {gt_dir!r} is not a folder of depth maps")
    out = OutputDir(output_uri)
    require_levels(out, (1,), "grand eval depth")
    per_image: dict[str, dict] = {}
    no_map = no_gt = too_few = 0
    for shard in shard_names(out, (1,)):
        for row in iter_rows(out, 1, shard, ["image_id", "status", "depth_stats"]):
            if row["status"] != "ok":
                continue
            pred = decode_depth_map(row.get("depth_stats"))
            if pred is None:
                no_map += 1
                continue
            path = find_gt_file(root, row["image_id"])
            if path is None:
                no_gt += 1
                continue
            m = image_depth_metrics(pred, read_gt_depth(path), gt_kind, max_depth)
            if m is None:
                too_few += 1
                continue
            per_image[row["image_id"]] = m
    if not per_image:
        hint = ("no ok image has a stored depth map: run level 1 with `--set level1.depth.store_map=true`"
                if no_map and not no_gt else f"no GT depth file in {gt_dir!r} matches an image id (e.g. <id stem>.png)")
        raise ValueError(f"nothing to evaluate: {hint}")
    return {
        "output": output_uri, "images": len(per_image),
        "AbsRel": float(np.mean([m["AbsRel"] for m in per_image.values()])),
        "delta1": float(np.mean([m["delta1"] for m in per_image.values()])),
        "skipped": {"no_stored_map": no_map, "no_gt_file": no_gt, "too_few_valid_pixels": too_few},
        "per_image": per_image,
    }


def depth_text(r: dict) -> str:
    s = r["skipped"]
    return "\n".join([
        f"images: {r['images']} evaluated (skipped: {s['no_stored_map']} without a stored map, {s['no_gt_file']} "
        f"without a GT file, {s['too_few_valid_pixels']} with too few valid pixels)",
        f"AbsRel:    {r['AbsRel']:.4f}",
        f"δ < 1.25:  {100 * r['delta1']:.1f}%",
    ])
