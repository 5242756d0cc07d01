"""What `grand status` reports: the truth of an output folder, from its plan, files and manifest."""

from __future__ import annotations

from collections import Counter

from grand.io.manifest import Manifest, load_plan
from grand.io.output import OutputDir

LEVELS = (1, 2, 3, 4)


def output_status(uri: str) -> dict:
    """Per level: done / pending / failed shards, images done of planned, error counts and reasons.

    A shard is done when its level file exists (the commit renames it into place), failed when the
    last run that tried it stopped without committing it, pending otherwise.
    """
    out = OutputDir(uri)
    plan = load_plan(out)
    if plan is None:
        raise FileNotFoundError(f"{uri} is not a grand output folder (no _grand/plan.json); run `grand run` first")
    input_uri, shards = plan
    manifest = Manifest.load(out)
    st = {"output": out.uri, "input": input_uri, "levels": {}, "shards": []}
    for level in LEVELS:
        committed = out.committed_shards(level)
        if level > 1 and not committed and not any(manifest.shard_entry(level, s.name) for s in shards):
            continue  # a level never run in this folder is not "pending"
        done = pending = failed = images_done = errors = 0
        reasons: Counter = Counter()
        failed_shards = {}
        for s in shards:
            entry = manifest.shard_entry(level, s.name) or {}
            row = {"name": s.name, "num_images": s.num_images, "level": level}
            if s.name in committed:
                done += 1
                rows = entry.get("rows") if entry.get("state") == "committed" else None
                if rows is None:  # committed but the manifest missed it (crash right after the rename)
                    rows = out.parquet_num_rows(out.shard_path(level, s.name))
                images_done += rows
                errors += entry.get("errors", 0)
                reasons.update(entry.get("error_reasons", {}))
                row.update(state="done", errors=entry.get("errors"))
            elif entry.get("state") == "failed":
                failed += 1
                failed_shards[s.name] = entry.get("error", "")
                row.update(state="failed", error=entry.get("error"))
            else:
                pending += 1
                row.update(state="pending")
            st["shards"].append(row)
        st["levels"][f"level{level}"] = {
            "shards": len(shards), "done": done, "pending": pending, "failed": failed,
            "images_planned": sum(s.num_images for s in shards), "images_done": images_done,
            "errors": errors, "error_reasons": dict(reasons.most_common()), "failed_shards": failed_shards,
        }
    runs = manifest.data.get("runs", [])
    st["last_run"] = {k: runs[-1].get(k) for k in ("state", "started", "finished", "error")} if runs else None
    return st
