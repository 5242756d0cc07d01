"""Dataset statistics of an output folder, in the spirit of the GLaMM paper's Table 2 (GranD).

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


def dataset_stats(output_uri: str) -> dict:
    """{"level1": {...}, "level2": {...}} for each level with committed shards (plain dicts/ints)."""
    out = OutputDir(output_uri)
    stats: dict = {"output": output_uri}
    for level, fn in ((1, _level1), (2, _level2)):
        if out.committed_shards(level):
            s = fn(out)
            # Counters -> plain dicts, most common first, so the result is JSON-ready.
            stats[f"level{level}"] = {k: dict(v.most_common()) if isinstance(v, Counter) else v for k, v in s.items()}
    return stats


_LABELS = {
    "shards": "shards", "images": "images", "ok": "ok", "errors": "errors",
    "regions": "regions (objects + floating)", "objects": "objects", "floating": "floating objects",
    "concepts": "unique labels (concepts)", "regions_with_attributes": "regions with attributes",
    "attributes": "attributes", "short_captions": "short captions", "caption_tokens": "caption tokens",
    "phrases": "caption phrases", "grounded_phrases": "grounded phrases", "relationships": "relationships",
}


def stats_text(stats: dict) -> str:
    """Human-readable table of `dataset_stats`' result."""
    lines = [f"grand dataset: {stats.get('output', '')}"]
    for level in (1, 2):
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
