"""Export grounded captions as GCG samples in the GranD-f layout (what GLaMM trains and is tested on).

One sample per caption:
    {"file_name", "image_id", "height", "width", "caption",
     "groundings": {phrase: {"token_positives": [start, end], "rle_masks": [COCO RLE, ...], "object_ids": [...]}},
     "target": "... <p> phrase </p> [SEG] ...", "source": "dense" | "short:<model>", "verified": bool | None}

`caption[start:end] == phrase` for every grounding; the masks of a phrase are its objects' masks
(GLaMM's loader adds them into one). `target` is the model's answer text: every grounded phrase
wrapped as `<p> phrase </p> [SEG]`, in span order. A phrase is kept only when its span matches the
caption, it names at least one object with a mask, and it overlaps no earlier kept span (nested or
crossing spans would garble the target). Two phrases with the same text get keys "phrase", "phrase #2"
(the key is only a label; the span says where the phrase is). Captions left with no grounding are
not written: a GCG sample without a mask teaches nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from grand.export import shard_names
from grand.export.rows import Committed, SampleWriter, image_rows, image_size, objects_of, ok, require_levels
from grand.io.output import OutputDir

SOURCES = ("dense", "short")

_COLUMNS = {
    1: ["image_id", "status", "width", "height", "objects", "floating_objects"],
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


def groundings(caption: str, details: list[dict], masks_by_id: dict[int, dict], skipped: Counter) -> dict:
    """The GranD-f `groundings` of one caption (see the module docstring for what is kept)."""
    kept: dict[str, dict] = {}
    last_end = -1
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
        if start < last_end:
            skipped["overlaps an earlier phrase"] += 1
            continue
        key, n = d["phrase"], 1
        while key in kept:
            n += 1
            key = f"{d['phrase']} #{n}"
        kept[key] = {"token_positives": [start, end], "rle_masks": [masks_by_id[i] for i in ids], "object_ids": ids}
        last_end = end
    return kept


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
               captioner: str | None = None) -> dict:
    """Write GCG samples of `output_uri` to `dest`: a JSON list when it ends in .json (GLaMM's
    loaders json.load it), JSON Lines otherwise. `source`: "dense" (level 3's verified dense
    captions) or "short" (level 2's short captions, one sample per caption; `captioner` keeps one
    model's, which gives one sample per image, as `grand eval gcg` wants of its ground truth).
    `verified_only`: leave out dense captions that failed verification. Returns counts."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if captioner is not None and source != "short":
        raise ValueError("a captioner chooses among short captions: use it with source='short'")
    out = OutputDir(output_uri)
    level = 3 if source == "dense" else 2
    require_levels(out, [level], f"grand export gcg --source {source}")
    levels = (1, 2, 3) if source == "dense" else (1, 2)
    skipped: Counter = Counter()
    captions = phrases = 0
    committed = Committed(out)
    with SampleWriter(dest) as writer:
        for shard in shard_names(out, (level,)):
            for rows in image_rows(out, shard, levels, _COLUMNS, committed=committed):
                if rows.get(level) is None:
                    continue
                masks = {o["id"]: o["segmentation"] for o in objects_of(rows) if o.get("segmentation")}
                width, height = image_size(rows)
                image_id = next(r for r in rows.values() if r is not None)["image_id"]
                for tag, caption, details, verified in _captions(rows, source, captioner):
                    captions += 1
                    if verified_only and verified is False:
                        skipped["caption not verified"] += 1
                        continue
                    found = groundings(caption, details, masks, skipped)
                    if not found:
                        skipped["caption without a grounded mask"] += 1
                        continue
                    phrases += len(found)
                    writer.write({
                        "file_name": image_id, "image_id": image_id, "height": height, "width": width,
                        "caption": caption, "groundings": found,
                        "target": target_text(caption, [tuple(g["token_positives"]) for g in found.values()]),
                        "source": tag, "verified": verified,
                    })
    return {"dest": dest, "samples": writer.count, "captions": captions, "phrases": phrases,
            "skipped": dict(skipped.most_common())}
