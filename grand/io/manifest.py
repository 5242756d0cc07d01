"""The shard plan and the manifest of an output folder.

The plan (which images belong to which shard) is made once, on the first run, and reused by every
later run, so that a resumed run regroups nothing. Committed shards are the level files that exist
(grand.io.output); the manifest records their counts and the history of runs, and is rewritten
atomically by the driver only.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from grand.io.output import OutputDir
from grand.io.sources import ShardSpec

MANIFEST_FORMAT = "grand-manifest/1"
# /2: tar and Parquet shards may be ranges of their container (grand.io.sources.ShardSpec). A /1 plan
# reads as before (each container shard is the whole container).
PLAN_FORMAT = "grand-plan/2"
PLAN_FORMATS = ("grand-plan/1", PLAN_FORMAT)


class PlanMismatchError(ValueError):
    """The output folder was planned for another input."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_plan(out: OutputDir) -> tuple[str, list[ShardSpec]] | None:
    data = out.read_json(out.plan_path)
    if data is None:
        return None
    if data.get("format", PLAN_FORMATS[0]) not in PLAN_FORMATS:
        raise PlanMismatchError(f"{out.uri}: its shard plan has format {data.get('format')!r}, which this grand "
                                f"does not read ({', '.join(PLAN_FORMATS)}); upgrade grand to use that folder")
    return data["input"], [ShardSpec.from_dict(d) for d in data["shards"]]


def save_plan(out: OutputDir, input_uri: str, shards: list[ShardSpec], shard_size: int | None = None) -> None:
    """Create the plan; a plan is never replaced (FileExistsError when another run made one)."""
    plan = {"format": PLAN_FORMAT, "input": input_uri, "created": now_iso()}
    if shard_size is not None:
        plan["shard_size"] = shard_size  # what it was planned with (a later config's is not applied)
    out.create_json_exclusive(out.plan_path, {**plan, "shards": [s.to_dict() for s in shards]})


@dataclass
class Manifest:
    out: OutputDir
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, out: OutputDir) -> "Manifest":
        data = out.read_json(out.manifest_path) or {"format": MANIFEST_FORMAT, "shards": {}, "runs": []}
        return cls(out, data)

    def save(self) -> None:
        self.out.write_json_atomic(self.out.manifest_path, self.data)

    # -- shards ---------------------------------------------------------------------------------
    def shard_entry(self, level: int, shard: str) -> dict | None:
        return self.data["shards"].get(shard, {}).get(f"level{level}")

    def record_commit(self, level: int, shard: str, rows: int, ok: int, errors: int, error_reasons: dict) -> None:
        self.data["shards"].setdefault(shard, {})[f"level{level}"] = {
            "state": "committed",
            "file": f"level{level}/{shard}.parquet",
            "rows": rows,
            "ok": ok,
            "errors": errors,
            "error_reasons": error_reasons,
            "committed_at": now_iso(),
        }

    def record_failure(self, level: int, shard: str, reason: str) -> None:
        self.data["shards"].setdefault(shard, {})[f"level{level}"] = {
            "state": "failed",
            "error": reason,
            "failed_at": now_iso(),
        }

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, info: dict) -> int:
        self.data["runs"].append({"started": now_iso(), "state": "running", **info})
        return len(self.data["runs"]) - 1

    def finish_run(self, run: int, state: str, **extra) -> None:
        self.data["runs"][run].update({"finished": now_iso(), "state": state, **extra})
