"""Export grounded captions as GCG samples in the GranD-f layout (what GLaMM trains and is tested on).

One sample per caption:
    {"file_name", "image_id", "height", "width", "caption",
     "groundings": {phrase: {"token_positives": [start, end], "all_token_positives": [[start, end], ...],
                             "rle_masks": [one merged COCO RLE], "object_ids": [...]}},
     "target": "... <p> phrase </p> [SEG] ...", "source": "dense" | "short:<model>", "verified": bool | None}

What the clients (GLaMM's GCGBaseDataset, Sa2VA's GranD-f loader) need, and this export holds to:
- `caption` is cleaned as they clean it (`caption.strip('"').strip() == caption`) before spans are
  computed, so `caption[start:end] == phrase` holds in the text they index.
- A phrase has one mask, the union of its objects' masks (pycocotools `merge`), with the object ids
  beside it: the loaders add a phrase's `rle_masks` into one uint8 array, so separate overlapping
  masks would give targets of 2.
- An all-zero mask is no mask. A phrase is kept only when its span matches the caption, it names at
  least one object with a real mask, and it overlaps no earlier kept span (nested or crossing spans
  would garble the target).
- A phrase written several times is one grounding keyed by its exact text: `token_positives` is its
  first span (what the loaders read), `all_token_positives` every span, the mask covers the objects
  of every occurrence.
- `file_name` and the image size follow grand.export.images (upright images, real extensions,
  images under `min_side` px skipped).
`target` wraps every grounding's `token_positives` as `<p> phrase </p> [SEG]`, in span order: what
GLaMM's `tag_caption` builds. Captions left with no grounding are not written: a GCG sample
without a mask teaches nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from grand.export import shard_names
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import (
    Committed, SampleWriter, has_mask, image_rows, image_size, merged_mask, objects_of, ok, require_levels,
)
from grand.io.output import OutputDir

SOURCES = ("dense", "short")

_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects", "short_captions"],
    3: ["image_id", "status", "dense_caption"],
}


def target_text(caption: str, spans: list[tuple[int, int]]) -> str:
    """The caption with each span wrapped as `<p> span </p> [SEG]` (spans must not overlap)."""
    parts, last = [], 0
    for start, end in sorted(spans):
        parts += [caption[last:start], "<p> ", caption[start:end], " </p> [SEG]"]
        last = end
    parts.append(caption[last:])
    return "".join(parts)


def client_caption(caption: str) -> tuple[str, int]:
    """(the caption as its clients clean it, the offset of that text in `caption`). GLaMM's and
    Sa2VA's loaders use `caption.strip('"').strip()` before reading the spans; repeated until
    stable, so that cleaning the result again changes nothing."""
    start, end = 0, len(caption)
    while True:
        text = caption[start:end]
        cleaned = text.strip('"').strip()
        if cleaned == text:
            return text, start
        start += text.index(cleaned) if cleaned else len(text)
        end = start + len(cleaned)


def shift_details(details: list[dict], offset: int, length: int, skipped: Counter) -> list[dict]:
    """`details` with spans moved by -offset; a span reaching outside [0, length) is dropped (counted)."""
    if not offset and all(len(d.get("tokens_positive") or []) != 2 or d["tokens_positive"][1] <= length
                          for d in details or []):
        return list(details or [])
    moved = []
    for d in details or []:
        span = d.get("tokens_positive") or []
        if len(span) == 2:
            start, end = int(span[0]) - offset, int(span[1]) - offset
            if start < 0 or end > length:
                skipped["span outside the cleaned caption"] += 1
                continue
            d = {**d, "tokens_positive": [start, end]}
        moved.append(d)
    return moved


def groundings(caption: str, details: list[dict], masks_by_id: dict[int, dict], skipped: Counter) -> dict:
    """The GranD-f `groundings` of one caption (see the module docstring for what is kept)."""
    kept: dict[str, dict] = {}
    spans: list[tuple[int, int]] = []
    # Span order; at one start the longer phrase first (it is the fuller description).
    ordered = sorted(details or [], key=lambda d: (d["tokens_positive"][0], -d["tokens_positive"][1])
                     if len(d.get("tokens_positive") or []) == 2 else (-1, 0))
    for d in ordered:
        span = d.get("tokens_positive") or []
        if len(span) != 2 or caption[span[0]:span[1]] != d["phrase"] or span[0] >= span[1]:
            skipped["span does not match the caption"] += 1
            continue
        ids = [i for i in d.get("ids") or [] if i in masks_by_id]
        if not ids:
            skipped["no object with a mask"] += 1
            continue
        start, end = int(span[0]), int(span[1])
        if any(start < e and s < end for s, e in spans):
            skipped["overlaps an earlier phrase"] += 1
            continue
        spans.append((start, end))
        g = kept.setdefault(d["phrase"], {"token_positives": [start, end], "all_token_positives": [], "ids": []})
        g["all_token_positives"].append([start, end])
        g["ids"] += [i for i in ids if i not in g["ids"]]
    found = {}
    for phrase, g in kept.items():
        mask = merged_mask(masks_by_id[i] for i in g["ids"])
        if mask is None:
            skipped["no object with a mask"] += 1
            continue
        found[phrase] = {"token_positives": g["token_positives"], "all_token_positives": g["all_token_positives"],
                         "rle_masks": [mask], "object_ids": sorted(g["ids"])}
    return found


def _captions(rows: dict, source: str, captioner: str | None = None) -> Iterator[tuple[str, str, list[dict], bool | None]]:
    """(source tag, caption, details, verified) of one image."""
    if source == "dense":
        row = rows.get(3)
        dense = row.get("dense_caption") if ok(row) else None
        if dense and dense.get("caption"):
            yield "dense", dense["caption"], dense.get("details") or [], bool(dense.get("verified"))
    else:
        row = rows.get(2)
        for cap in (row.get("short_captions") or []) if ok(row) else []:
            if cap.get("caption") and captioner in (None, cap.get("model")):
                yield f"short:{cap.get('model')}", cap["caption"], cap.get("details") or [], None


def export_gcg(output_uri: str, dest: str, source: str = "dense", verified_only: bool = False,
               captioner: str | None = None, images_dir: str | None = None, min_side: int = MIN_SIDE,
               check_images: bool = True) -> dict:
    """Write GCG samples of `output_uri` to `dest`: a JSON list when it ends in .json (GLaMM's
    loaders json.load it), JSON Lines otherwise. `source`: "dense" (level 3's verified dense
    captions) or "short" (level 2's short captions, one sample per caption; `captioner` keeps one
    model's, which gives one sample per image, as `grand eval gcg` wants of its ground truth).
    `verified_only`: leave out dense captions that failed verification. `images_dir`, `min_side`,
    `check_images`: which image files samples point at (grand.export.images). Returns counts."""
    out = output_for_gcg(output_uri, source, captioner)
    skipped: Counter = Counter()
    captions = phrases = 0
    files = ImageFiles(out, images_dir, min_side, check_images)
    with SampleWriter(dest) as writer:
        for n, samples in grounded_samples(out, source, captioner, verified_only, skipped, files):
            captions += n
            for sample in samples:
                phrases += len(sample["groundings"])
                writer.write(sample)
    return {"dest": dest, "samples": writer.count, "captions": captions, "phrases": phrases,
            "skipped": dict(skipped.most_common()), **files.summary()}


def output_for_gcg(output_uri: str, source: str, captioner: str | None) -> OutputDir:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if captioner is not None and source != "short":
        raise ValueError("a captioner chooses among short captions: use it with source='short'")
    out = OutputDir(output_uri)
    level = 3 if source == "dense" else 2
    require_levels(out, [level], f"grand export gcg --source {source}")
    return out


def image_info(rows: dict[int, dict | None], shard: str) -> dict:
    """What `ImageFiles` needs of an image: its level-1 row, or the fields the other levels have."""
    if rows.get(1) is not None:
        return rows[1]
    row = next(r for r in rows.values() if r is not None)
    width, height = image_size(rows)
    return {"image_id": row["image_id"], "shard": shard, "index": row["index"], "source": None,
            "width": width, "height": height}


def grounded_samples(out: OutputDir, source: str, captioner: str | None, verified_only: bool, skipped: Counter,
                     files: ImageFiles) -> Iterator[tuple[int, list[dict]]]:
    """(captions read, [GranD-f sample, ...]) per image with a level-`source` row, in plan order;
    an image whose samples are skipped (small, rotated input, unreadable) yields none."""
    level = 3 if source == "dense" else 2
    levels = (1, 2, 3) if source == "dense" else (1, 2)
    committed = Committed(out)
    for shard in shard_names(out, (level,)):
        for rows in image_rows(out, shard, levels, _COLUMNS, committed=committed):
            if rows.get(level) is None or (rows.get(1) is not None and not ok(rows[1])):
                continue
            width, height = image_size(rows)
            size = (height, width) if width is not None else None
            masks = {o["id"]: o["segmentation"] for o in objects_of(rows) if has_mask(o.get("segmentation"), size)}
            info = image_info(rows, shard)
            samples, n = [], 0
            for tag, raw_caption, details, verified in _captions(rows, source, captioner):
                n += 1
                if verified_only and verified is False:
                    skipped["caption not verified"] += 1
                    continue
                caption, offset = client_caption(raw_caption)
                found = groundings(caption, shift_details(details, offset, len(caption), skipped), masks, skipped)
                if not found:
                    skipped["caption without a grounded mask"] += 1
                    continue
                samples.append({
                    "image_id": info["image_id"], "height": height, "width": width,
                    "caption": caption, "groundings": found,
                    "target": target_text(caption, [tuple(g["token_positives"]) for g in found.values()]),
                    "source": tag, "verified": verified,
                })
            if samples:
                name = files.resolve(info)
                samples = [{"file_name": name, **s} for s in samples] if name is not None else []
            yield n, samples
