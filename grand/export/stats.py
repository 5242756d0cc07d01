"""Dataset statistics of an output folder (levels 1-4), in the spirit of the GLaMM paper's Table 2 (GranD).

Streams each level's shards batch by batch; only counters and the label set stay in memory.
"""

from __future__ import annotations

from collections import Counter

from grand.export import iter_rows, shard_names
from grand.io.output import OutputDir
from grand.io.sink import error_reason

# Masks are never needed for counting; reading only these columns keeps batches light.
_LEVEL1_COLUMNS = ["status", "error", "objects", "floating_objects"]
_LEVEL2_COLUMNS = ["status", "error", "short_captions", "landmark", "relationships", "objects", "floating_objects"]
_LEVEL3_COLUMNS = ["status", "error", "dense_caption"]
_LEVEL4_COLUMNS = ["status", "error", "additional_context"]


def _base(shards: int) -> dict:
    return {"shards": shards, "images": 0, "ok": 0, "errors": 0, "error_reasons": Counter()}


def _count_row(s: dict, row: dict) -> bool:
    """Images/ok/errors bookkeeping; True when the row is ok and should be counted further."""
    s["images"] += 1
    if row["status"] == "ok":
        s["ok"] += 1
        return True
    s["errors"] += 1
    s["error_reasons"][error_reason(row.get("error") or "")] += 1
    return False


def _level1(out: OutputDir) -> dict:
    shards = shard_names(out, (1,))
    s = _base(len(shards))
    s.update(regions=0, objects=0, floating=0, regions_with_attributes=0, attributes=0)
    labels: set[str] = set()
    for shard in shards:
        for row in iter_rows(out, 1, shard, _LEVEL1_COLUMNS):
            if not _count_row(s, row):
                continue
            objects, floating = row.get("objects") or [], row.get("floating_objects") or []
            s["objects"] += len(objects)
            s["floating"] += len(floating)
            for obj in objects + floating:
                labels.add(obj["label"])
                attrs = obj.get("attributes") or []
                s["attributes"] += len(attrs)
                s["regions_with_attributes"] += bool(attrs)
    s["regions"] = s["objects"] + s["floating"]
    s["concepts"] = len(labels)
    return s


def _level2(out: OutputDir) -> dict:
    shards = shard_names(out, (2,))
    s = _base(len(shards))
    s.update(short_captions=0, caption_tokens=0, phrases=0, grounded_phrases=0, relationships=0,
             objects=0, floating=0, landmark_categories=Counter())
    for shard in shards:
        for row in iter_rows(out, 2, shard, _LEVEL2_COLUMNS):
            if not _count_row(s, row):
                continue
            for cap in row.get("short_captions") or []:
                s["short_captions"] += 1
                s["caption_tokens"] += len(cap["caption"].split())
                for d in cap.get("details") or []:
                    s["phrases"] += 1
                    # Grounded: the phrase names at least one object of the row.
                    s["grounded_phrases"] += bool(d.get("ids"))
            s["relationships"] += len(row.get("relationships") or [])
            s["objects"] += len(row.get("objects") or [])
            s["floating"] += len(row.get("floating_objects") or [])
            landmark = row.get("landmark")
            if landmark is not None:
                s["landmark_categories"][landmark.get("category") or "unknown"] += 1
    return s


def _level3(out: OutputDir) -> dict:
    shards = shard_names(out, (3,))
    s = _base(len(shards))
    s.update(dense_captions=0, verified=0, dense_caption_tokens=0, dense_phrases=0, dense_grounded_phrases=0,
             caption_attempts=0)
    for shard in shards:
        for row in iter_rows(out, 3, shard, _LEVEL3_COLUMNS):
            if not _count_row(s, row):
                continue
            dense = row.get("dense_caption")
            if not dense or not dense.get("caption"):
                continue
            s["dense_captions"] += 1
            s["verified"] += bool(dense.get("verified"))
            s["dense_caption_tokens"] += len(dense["caption"].split())
            s["caption_attempts"] += len(dense.get("attempts") or [])
            for d in dense.get("details") or []:
                s["dense_phrases"] += 1
                s["dense_grounded_phrases"] += bool(d.get("ids"))
    return s


def _level4(out: OutputDir) -> dict:
    shards = shard_names(out, (4,))
    s = _base(len(shards))
    s.update(contexts=0, context_tokens=0)
    for shard in shards:
        for row in iter_rows(out, 4, shard, _LEVEL4_COLUMNS):
            if not _count_row(s, row):
                continue
            text = row.get("additional_context") or ""
            if text:
                s["contexts"] += 1
                s["context_tokens"] += len(text.split())
    return s


_LEVEL_STATS = ((1, _level1), (2, _level2), (3, _level3), (4, _level4))


def dataset_stats(output_uri: str, levels=(1, 2, 3, 4)) -> dict:
    """{"level1": {...}, ..., "level4": {...}} for each of `levels` with committed shards (plain dicts/ints)."""
    out = OutputDir(output_uri)
    stats: dict = {"output": output_uri}
    for level, fn in _LEVEL_STATS:
        if level in levels and out.committed_shards(level):
            s = fn(out)
            # Counters -> plain dicts, most common first, so the result is JSON-ready.
            stats[f"level{level}"] = {k: dict(v.most_common()) if isinstance(v, Counter) else v for k, v in s.items()}
    return stats


def summary_table(stats: dict) -> list[tuple[str, int]]:
    """The GLaMM paper's Table 2 rows (GranD: images, regions, unique concepts, referring
    expressions, grounded captions, tokens) from `dataset_stats`' result.

    images: ok level-1 images; regions: objects + floating objects (after phrase grounding when
    level 2 exists); concepts: distinct final labels; referring expressions: region attributes plus
    relationship phrases; captions: short + dense captions; grounded captions: those with at least
    one phrase grounded to an object; tokens: whitespace words of every caption and context.
    """
    l1, l2, l3, l4 = (stats.get(f"level{lv}") or {} for lv in (1, 2, 3, 4))
    regions = (l2.get("objects", 0) + l2.get("floating", 0)) if l2 else l1.get("regions", 0)
    return [
        ("images", l1.get("ok", 0)),
        ("regions", regions),
        ("unique concepts", l1.get("concepts", 0)),
        ("referring expressions", l1.get("attributes", 0) + l2.get("relationships", 0)),
        ("short captions", l2.get("short_captions", 0)),
        ("dense captions", l3.get("dense_captions", 0)),
        ("tokens", l2.get("caption_tokens", 0) + l3.get("dense_caption_tokens", 0) + l4.get("context_tokens", 0)),
    ]


_LABELS = {
    "shards": "shards", "images": "images", "ok": "ok", "errors": "errors",
    "regions": "regions (objects + floating)", "objects": "objects", "floating": "floating objects",
    "concepts": "unique labels (concepts)", "regions_with_attributes": "regions with attributes",
    "attributes": "attributes", "short_captions": "short captions", "caption_tokens": "caption tokens",
    "phrases": "caption phrases", "grounded_phrases": "grounded phrases", "relationships": "relationships",
    "dense_captions": "dense captions", "verified": "verified dense captions",
    "dense_caption_tokens": "dense caption tokens", "dense_phrases": "dense caption phrases",
    "dense_grounded_phrases": "grounded dense caption phrases", "caption_attempts": "caption attempts",
    "contexts": "additional contexts", "context_tokens": "context tokens",
}


def stats_text(stats: dict) -> str:
    """Human-readable table of `dataset_stats`' result."""
    lines = [f"grand dataset: {stats.get('output', '')}"]
    for level in (1, 2, 3, 4):
        s = stats.get(f"level{level}")
        if s is None:
            continue
        lines.append(f"level {level}")
        for key, value in s.items():
            if isinstance(value, dict):
                lines.append(f"  {key.replace('_', ' ')}:" + ("" if value else " none"))
                lines.extend(f"    {name}: {n:,}" for name, n in value.items())
            else:
                lines.append(f"  {_LABELS.get(key, key)}: {value:,}")
    if len(lines) == 1:
        lines.append("  no committed shards")
    return "\n".join(lines)
