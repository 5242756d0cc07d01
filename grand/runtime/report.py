"""The run report: what one `grand run` did, saved beside the manifest when it ends.

    <out>/_grand/reports/<run>-<started>.json     one file per run (succeeded or failed)

It answers the questions of a long cluster job at a glance: how many images, how many errors and
why, how long, how fast, and which model step bounds the throughput (per step: images, actor busy
seconds, images per busy second, and that rate times the pool size, the most the pool can do).
`grand status` prints a line about the latest report. The manifest keeps the run's history; the
report is the readable summary of one run.

`python -m grand.runtime.report OUT --images 11000000 --gpus 64` scales a pilot run's report to a
full dataset: wall time, GPU-hours and pool sizes (docs/scale.md).
"""

from __future__ import annotations

import math
import re

import logging
import os
import sys

from grand.io.manifest import Manifest
from grand.io.output import OutputDir
from grand.io.sink import shard_counts

log = logging.getLogger("grand.run")

REPORT_FORMAT = "grand-run-report/1"
REPORTS_DIR = ("_grand", "reports")


def report_name(run: int, started: str) -> str:
    """`0003-20261122T013205Z.json`: the manifest's run index (zero-padded, so that names sort by
    run) and its start time."""
    stamp = re.sub(r"[^0-9T]", "", started.split("+")[0]) + "Z"
    return f"{run:04d}-{stamp}.json"


def stage_table(summary, steps: list[tuple[str, object]]) -> dict:
    """Per model step: role, pool size, resources, images, actor busy seconds, images per busy second
    (one actor), and pool_images_per_s = that rate x pool size (what the whole pool can sustain).
    `steps` is the run's model steps (grand.runtime.steps.Step, as steps.model_steps gives them;
    (role, ModelSpec) pairs work too). A model used by two steps
    (SAM at levels 1 and 2) is one entry with `pools: 2`: two actor pools of pool_size each; an
    image counts once and its busy time is the sum of both, so the rates are those of one pool doing
    both jobs (a lower bound of the two pools together)."""
    table: dict[str, dict] = {}
    uses: dict[str, int] = {}
    steps = [(s.role, s.spec) if hasattr(s, "spec") else s for s in steps]
    for _, spec in steps:
        uses[spec.name] = uses.get(spec.name, 0) + 1
    for role, spec in steps:
        if spec.name in table:
            continue
        r = spec.resources
        stats = summary.step_stats.get(spec.name, {})
        images, busy = int(stats.get("images", 0)), float(stats.get("busy_s", 0.0))
        rate = images / busy if busy > 0 else None
        table[spec.name] = {
            "role": role, "pools": uses[spec.name], "pool_size": r.pool_size, "num_gpus": r.num_gpus,
            "num_cpus": r.num_cpus,
            "accelerator_type": getattr(r, "accelerator_type", None),
            "images": images, "busy_s": round(busy, 3),
            "images_per_busy_s": round(rate, 3) if rate else None,
            "pool_images_per_s": round(rate * r.pool_size, 3) if rate else None,
        }
    return table


def _round(value, digits):
    return round(value, digits) if value is not None else None


def bottleneck(stages: dict) -> str | None:
    """The model step whose pool can sustain the fewest images per second (None: nothing measured)."""
    rated = {name: s["pool_images_per_s"] for name, s in stages.items() if s.get("pool_images_per_s")}
    return min(rated, key=rated.get) if rated else None


def build_report(summary, run_entry: dict, run: int, steps: list, cluster: dict | None, error: str | None = None) -> dict:
    stages = stage_table(summary, steps)
    cluster = cluster or {}
    return {
        "format": REPORT_FORMAT,
        "run": run,
        "state": run_entry.get("state"),
        "started": run_entry.get("started"),
        "finished": run_entry.get("finished"),
        "output": summary.output,
        "input": run_entry.get("input"),
        "levels": summary.levels,
        "config_name": (run_entry.get("config") or {}).get("name"),
        "error": error,
        "shards": {"planned": summary.shards_total, "already_done": summary.shards_skipped,
                   "committed_this_run": len(summary.shards_committed)},
        "images": {"processed": summary.images, "ok": summary.ok, "errors": summary.errors,
                   "errors_by_reason": dict(summary.error_reasons)},
        "wall_s": round(summary.seconds, 2),
        "first_row_s": round(summary.first_row_s, 2) if summary.first_row_s is not None else None,
        "images_per_s": round(summary.images_per_s, 4),
        "steady_images_per_s": _round(getattr(summary, "steady_images_per_s", None), 4),
        "peak_rss_gib": _round(getattr(summary, "peak_rss_gib", None), 2),
        "colocated": bool(getattr(summary, "colocated", False)),
        "stages": stages,
        "bottleneck": bottleneck(stages),
        "cluster": {
            "CPU": cluster.get("CPU", 0.0), "GPU": cluster.get("GPU", 0.0),
            "accelerators": {k.split(":", 1)[1]: v for k, v in cluster.items() if k.startswith("accelerator_type:")},
            # every node holds node:<its ip> = 1 (nodes sharing an IP add up)
            "nodes": int(sum(v for k, v in cluster.items() if k.startswith("node:") and not k.startswith("node:__internal"))),
        },
        "host": (run_entry.get("versions") or {}).get("host"),
    }


def save_report(out: OutputDir, manifest: Manifest, run: int, summary, steps: list, cluster: dict | None,
                error: str | None = None) -> str:
    """Write the report of manifest run `run` and note its path in that run's manifest entry (the
    caller saves the manifest). Returns the report's URI."""
    entry = manifest.data["runs"][run]
    name = report_name(run, entry.get("started") or "")
    out.write_json_atomic(out.path(*REPORTS_DIR, name), build_report(summary, entry, run, steps, cluster, error))
    rel = "/".join((*REPORTS_DIR, name))
    entry["report"] = rel
    return out.uri.rstrip("/") + "/" + rel


def save_run_report(out, manifest, run, summary, steps, cluster, error=None) -> None:
    """save_report for grand.runtime.run: a failed write never fails the run."""
    try:
        summary.report = save_report(out, manifest, run, summary, steps, cluster, error)
    except Exception as err:
        log.warning("could not write the run report: %s", err)


def reconcile(manifest: Manifest, out: OutputDir, committed: set[str], level: int = 1) -> None:
    """A crash between a shard's rename and the manifest update leaves a committed file without an
    entry: count it from the file itself so that status stays true."""
    import pyarrow.parquet as pq

    changed = False
    for shard in committed:
        entry = manifest.shard_entry(level, shard)
        if entry and entry.get("state") == "committed":
            continue
        with out.fs.open(out.shard_path(level, shard), "rb") as f:
            table = pq.read_table(f, columns=["status", "error"])
        manifest.record_commit(level, shard, **shard_counts(table["status"].to_pylist(), table["error"].to_pylist()))
        changed = True
    if changed:
        manifest.save()


def package_versions() -> dict:
    """The versions a run's manifest entry records (and the host it ran from)."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for pkg in ("grand", "ray", "torch", "transformers", "pyarrow", "pycocotools", "onnxruntime", "numpy", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["host"] = os.uname().nodename
    return versions


def latest_report(uri: str) -> tuple[str, dict] | None:
    """(URI, content) of the newest report of an output folder, None when it has none."""
    out = OutputDir(uri)
    folder = out.path(*REPORTS_DIR)
    if not out.exists(folder):
        return None
    names = sorted(n.rsplit("/", 1)[-1] for n in out.fs.ls(folder, detail=False) if n.endswith(".json"))
    if not names:
        return None
    return out.uri.rstrip("/") + "/" + "/".join((*REPORTS_DIR, names[-1])), out.read_json(out.path(*REPORTS_DIR, names[-1]))


def report_line(found: tuple[str, dict] | None) -> str | None:
    """One line for `grand status`: the latest report, its outcome and its slowest step."""
    if found is None:
        return None
    uri, r = found
    slow = f"; slowest step: {r['bottleneck']}" if r.get("bottleneck") else ""
    return (f"latest report: {uri} ({r.get('state')}: {r['images']['processed']} images, {r['images']['errors']} errors "
            f"in {r['wall_s']:.1f}s = {r['images_per_s']:.2f} images/s{slow})")


def estimate(report: dict, images: float, devices: float) -> dict:
    """Scale a pilot run's report to `images` on `devices` GPUs (CPUs when the pilot ran no GPU
    stage). Two estimates:

    - as measured: the pilot's images/s per device its pools reserved (sum of pool_size x share),
      times `devices`. Keeps the pilot's pool balance, efficiency and start-up costs.
    - balanced bound: C = sum over steps of (busy seconds per image x device share per actor) is the
      device time one image reserves; pools sized in proportion to it reach devices / C images/s
      when every actor is always busy. Each step's pool for that: devices x its part of C / share.
      Shares do not cap what an actor uses, so this is right for a device that was saturated and
      evenly shared in the pilot, and optimistic otherwise: use it to see where actors should go,
      trust `measured` from a long pilot.

    Both assume the driver, the input reads and the CPU steps keep up (docs/scale.md)."""
    stages = {n: s for n, s in report["stages"].items() if s.get("images")}
    key = "num_gpus" if any(s["num_gpus"] for s in stages.values()) else "num_cpus"
    per_image = {n: s["busy_s"] / s["images"] * s[key] for n, s in stages.items()}  # both pools of SAM
    c_total = sum(per_image.values())
    reserved = sum(s["pool_size"] * s.get("pools", 1) * s[key] for s in report["stages"].values())  # idle ones too
    per_device = report["images_per_s"] / reserved if reserved else 0.0
    out = {"device": "GPU" if key == "num_gpus" else "CPU", "images": images, "devices": devices,
           "pilot_devices_reserved": reserved, "pilot_images_per_s_per_device": per_device,
           "device_s_per_image": c_total, "pools": {},
           # start-up (actors loading models) counts in the pilot's wall time: a short pilot underrates
           "startup_share": (report.get("first_row_s") or 0.0) / report["wall_s"] if report.get("wall_s") else None}
    if per_device:
        out["measured"] = {"images_per_s": per_device * devices, "wall_h": images / (per_device * devices) / 3600,
                           "device_h": images / per_device / 3600}
    if c_total:
        out["balanced"] = {"images_per_s": devices / c_total, "wall_h": images * c_total / devices / 3600,
                           "device_h": images * c_total / 3600}
        for n, s in stages.items():
            share = devices * per_image[n] / c_total
            per_pool = share / s.get("pools", 1) / s[key] if s[key] else None  # actors of each of its pools
            out["pools"][n] = {"share_of_devices": round(per_image[n] / c_total, 4), "devices": share,
                               "pool_size": max(1, math.ceil(per_pool - 1e-9)) if per_pool else None}
    return out


def estimate_text(e: dict) -> str:
    d = e["device"]
    lines = [f"pilot: {e['pilot_images_per_s_per_device']:.3f} images/s per {d} reserved "
             f"({e['pilot_devices_reserved']:g} {d}s reserved); {e['device_s_per_image']:.4f} {d}-seconds reserved per image"]
    if d == "CPU":
        lines.append("note: on CPU an actor uses whole cores whatever its num_cpus share, so 'balanced' only ranks "
                     "where the time goes; plan GPUs from a GPU pilot")
    if (e.get("startup_share") or 0) > 0.2:
        lines.append(f"note: the first results came {e['startup_share']:.0%} into the pilot (start-up, and rows pass "
                     "in bundles): 'measured' is pessimistic; run a pilot long enough that this is small")
    for kind in ("measured", "balanced"):
        if kind in e:
            m = e[kind]
            lines.append(f"{kind:9s}: {e['images']:,.0f} images on {e['devices']:g} {d}s: {m['images_per_s']:,.1f} images/s, "
                         f"{m['wall_h']:,.1f} h wall, {m['device_h']:,.0f} {d}-hours")
    for n, p in sorted(e["pools"].items(), key=lambda kv: -kv[1]["devices"]):
        lines.append(f"  {n:24s} {p['share_of_devices']:6.1%} of the {d}s = {p['devices']:8.2f} -> pool_size {p['pool_size']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m grand.runtime.report OUT --images 11000000 --gpus 64`: scale OUT's latest report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m grand.runtime.report", description=main.__doc__)
    parser.add_argument("output", help="a grand output folder with a run report (a pilot run)")
    parser.add_argument("--images", type=float, required=True, help="images to plan for, e.g. 11000000")
    parser.add_argument("--gpus", type=float, required=True, help="GPUs (CPUs for a CPU-only pilot) to plan for")
    args = parser.parse_args(argv)
    found = latest_report(args.output)
    if found is None:
        parser.error(f"{args.output} has no run report (_grand/reports/): run `grand run` first")
    print(f"report: {found[0]}")
    print(estimate_text(estimate(found[1], args.images, args.gpus)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
