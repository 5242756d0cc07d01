"""The `grand` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  grand run pipelines/tiny.yaml --input photos/ --output out/       # level 1, local Ray, tiny CPU models
  grand run pipelines/tiny.yaml --output out/ --levels 2             # add level 2 to that folder
  grand run pipelines/tiny.yaml --input photos/ --output out2/ --levels 1,2
  grand run pipelines/grand.yaml --input s3://bucket/sa1b/ --output s3://bucket/grand/ --address auto
  grand status out/
  grand stats out/                                                   # images, regions, concepts, captions
  grand export coco out/ out/coco.json                               # pycocotools-readable instances
  grand viz out/ --id photo.jpg --dest photo.png                      # masks, labels, caption spans
  grand models make-tiny ~/.cache/grand/tiny
  grand demo                                                          # sample photos end to end
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from grand.config import ConfigError
    from grand.io.manifest import PlanMismatchError
    from grand.models.loading import ModelUnavailableError
    from grand.runtime.pipeline import RunError

    try:
        return args.func(args) or 0
    except (ConfigError, PlanMismatchError, ModelUnavailableError, FileNotFoundError, ValueError) as err:
        print(f"grand: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"grand: run failed: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grand", description="Build GranD-style densely grounded image datasets on Ray.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (model loading, commits)")
    sub = parser.add_subparsers(title="commands")

    run = sub.add_parser("run", help="annotate images; resumes where the output folder left off",
                         description="Run the pipeline over every shard of INPUT not yet committed in OUTPUT. "
                                     "Re-running the same command skips committed shards.")
    run.add_argument("config", help="pipeline YAML, e.g. pipelines/tiny.yaml")
    run.add_argument("--input", "-i", default=None,
                     help="image folder (recursive), SA-1B style .tar file(s), or Parquet file(s)/folder; "
                          "needed on the first run of an output folder, later runs reuse its input")
    run.add_argument("--output", "-o", required=True, help="output folder (local path or fsspec URI)")
    run.add_argument("--levels", default="1",
                     help="comma-separated levels: 1 (objects, masks, depth, attributes), 2 (captions, landmark, "
                          "grounded phrases). '2' alone runs over the folder's committed level-1 shards (default: 1)")
    run.add_argument("--force", action="store_true", help="redo shards that are already committed")
    run.add_argument("--address", default=None,
                     help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this run)")
    run.add_argument("--shard-size", type=int, default=None, help="images per shard for folder inputs (input.shard_size)")
    run.add_argument("--max-shards", type=int, default=None, help="process at most N pending shards, then stop")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set runtime.cpu_task_num_cpus=0.5 (YAML value)")
    run.add_argument("--no-resource-check", action="store_true",
                     help="skip the check that the actor pools fit the cluster (autoscaling clusters)")
    run.add_argument("--fault-rate", type=float, default=0.0, help=argparse.SUPPRESS)  # fault-injection tests
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="done / pending / failed shards and error counts of an output folder")
    status.add_argument("output")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--shards", action="store_true", help="list every shard")
    status.set_defaults(func=cmd_status)

    models = sub.add_parser("models", help="model utilities")
    msub = models.add_subparsers(title="model commands")
    tiny = msub.add_parser("make-tiny", help="write tiny random-weight checkpoints of every architecture (offline)")
    tiny.add_argument("dir")
    tiny.add_argument("--arch", action="append", help="only these architectures (repeatable)")
    tiny.set_defaults(func=cmd_make_tiny)
    lst = msub.add_parser("list", help="list adapters and tiny architectures")
    lst.set_defaults(func=cmd_models_list)

    export = sub.add_parser("export", help="convert an output folder into other formats")
    esub = export.add_subparsers(title="formats")
    coco = esub.add_parser("coco", help="COCO instances JSON (RLE masks, categories from the final labels)",
                           description="Objects after phrase grounding (level 2) where it exists, else level 1; "
                                       "pycocotools.coco.COCO reads the result.")
    coco.add_argument("output", help="a grand output folder")
    coco.add_argument("dest", help="JSON file to write")
    coco.add_argument("--no-floating", action="store_true", help="leave out floating objects (seen by one model)")
    coco.add_argument("--level", type=int, choices=[1, 2], default=None, help="read this level only (default: 2, else 1)")
    coco.set_defaults(func=cmd_export_coco)

    stats = sub.add_parser("stats", help="dataset statistics (images, regions, concepts, captions, ...) and errors")
    stats.add_argument("output")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=cmd_stats)

    viz = sub.add_parser("viz", help="render one image's masks, boxes, labels, depth order and caption spans to a PNG")
    viz.add_argument("output")
    viz.add_argument("--id", required=True, dest="image_id", help="image_id as in the Parquet rows")
    viz.add_argument("--dest", default=None, help="PNG to write (default: <image_id>.png here)")
    viz.add_argument("--floating", action="store_true", help="also draw floating objects")
    viz.set_defaults(func=cmd_viz)

    demo = sub.add_parser("demo", help="run levels 1-2 of pipelines/tiny.yaml on a few sample photos and show the result")
    demo.add_argument("--output", default="demo-out", help="folder for the sample images and results")
    demo.add_argument("--config", default=None, help="pipeline YAML (default: pipelines/tiny.yaml)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _overrides(args) -> dict:
    import yaml

    out: dict = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    if getattr(args, "shard_size", None):
        out.setdefault("input", {})["shard_size"] = args.shard_size
    return out


def cmd_run(args) -> int:
    from grand.config import load_config
    from grand.runtime.pipeline import RunOptions, parse_levels, run_pipeline

    levels = parse_levels(args.levels)
    cfg = load_config(args.config, _overrides(args))
    summary = run_pipeline(cfg, RunOptions(
        input=args.input, output=args.output, levels=levels, force=args.force, address=args.address,
        max_shards=args.max_shards, check_resources=not args.no_resource_check, fault_rate=args.fault_rate,
    ))
    print(summary.text())
    return 0


def cmd_status(args) -> int:
    from grand.io.status import output_status

    st = output_status(args.output)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(st_text(st, args.shards))
    return 0


def st_text(st: dict, list_shards: bool) -> str:
    lines = [f"output: {st['output']}", f"input:  {st['input']}"]
    for level, lv in st["levels"].items():
        lines.append(
            f"{level}: {lv['done']} done, {lv['pending']} pending, {lv['failed']} failed of {lv['shards']} shards | "
            f"images {lv['images_done']}/{lv['images_planned']} ({lv['errors']} errors)"
        )
        for reason, count in lv["error_reasons"].items():
            lines.append(f"  {count:6d} x {reason}")
        for name, why in lv["failed_shards"].items():
            lines.append(f"  failed {name}: {why}")
    if st.get("last_run"):
        r = st["last_run"]
        lines.append(f"last run: {r.get('state')} (started {r.get('started')}, finished {r.get('finished', '-')})")
    if list_shards:
        for s in st["shards"]:
            lines.append(f"  {s['name']:40s} {s['state']:9s} {s['num_images']:6d} images  errors={s.get('errors', '-')}")
    return "\n".join(lines)


def cmd_export_coco(args) -> int:
    from grand.export.coco import export_coco

    summary = export_coco(args.output, args.dest, include_floating=not args.no_floating, level=args.level)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_stats(args) -> int:
    from grand.export.stats import dataset_stats, stats_text

    st = dataset_stats(args.output)
    print(json.dumps(st, indent=1) if args.json else stats_text(st))
    return 0


def cmd_viz(args) -> int:
    from grand.viz.render import render_to_file

    dest = args.dest or (args.image_id.replace("/", "_") + ".png")
    try:
        path = render_to_file(args.output, args.image_id, dest, show_floating=args.floating)
    except KeyError as err:  # an unknown image id: the user's input, not a bug
        raise ValueError(err.args[0] if err.args else str(err)) from None
    print(f"wrote {path}")
    return 0


def cmd_make_tiny(args) -> int:
    from grand.models.tiny import TINY_ARCHS, build_tiny

    for arch in args.arch or sorted(TINY_ARCHS):
        path = build_tiny(arch, Path(args.dir) / arch)
        print(f"{arch:16s} -> {path}")
    return 0


def cmd_models_list(args) -> int:
    from grand.models.tiny import TINY_ARCHS

    print("adapters (config `backend` / role):")
    print("  tagger          transformers  CLIP / SigLIP zero-shot over a concept vocabulary")
    print("  detector        transformers  queries: tags -> GroundingDINO, OWLv2, OWL-ViT; queries: none -> RT-DETR, DETR, ...")
    print("  detector        onnx-yolox    YOLOX exported to ONNX (e.g. ../shared/weights/yolox_nano)")
    print("  segmenter       transformers  SAM / SAM-HQ with box prompts")
    print("  depth           transformers  Depth Anything / DPT")
    print("  label_choice    transformers  CLIP / SigLIP: an object's final label from its crop")
    print("  attributes      transformers  BLIP-2 / LLaVA-1.5 describing object crops")
    print("  captioner       transformers  BLIP-2 / LLaVA-1.5 short captions (+ landmark questions)")
    print("  captioner       vllm          LLaVA-1.5 on the vLLM engine (also for attributes; docs/install.md)")
    print("  phrase_grounder transformers  GroundingDINO, OWLv2 / OWL-ViT, one query per phrase")
    print("tiny architectures (checkpoint: tiny:<arch>):")
    for arch in sorted(TINY_ARCHS):
        print(f"  {arch}")
    return 0


def cmd_demo(args) -> int:
    from grand.config import load_config
    from grand.cli.demo import show_example, write_sample_images
    from grand.runtime.pipeline import RunOptions, run_pipeline

    out = Path(args.output)
    images = write_sample_images(out / "images")
    config = args.config or str(Path(__file__).resolve().parents[2] / "pipelines" / "tiny.yaml")
    if not Path(config).is_file():
        config = "pipelines/tiny.yaml"
    cfg = load_config(config)
    summary = run_pipeline(cfg, RunOptions(input=str(images), output=str(out / "results"), levels=(1, 2)))
    print(summary.text())
    print(show_example(str(out / "results")))
    print(f"\nresults: {out / 'results'}/level1/*.parquet and level2/*.parquet   "
          f"(inspect: grand status {out / 'results'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
