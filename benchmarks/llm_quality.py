"""Levels 3-4 with a real small LLM: what the verification loop does with it, and what batching gains
on vLLM's CPU engine. Defaults: pipelines/tiny.yaml's level-3/4 settings (SmolLM2-135M-Instruct,
`checkpoint: packaged:smollm2`) over the 32 tinycoco photos of ../shared.

    .venv/bin/python benchmarks/llm_quality.py                     # quality + batching, tinycoco
    .venv/bin/python benchmarks/llm_quality.py --no-batching --images photos/ --config my.yaml
    .venv/bin/python benchmarks/llm_quality.py --no-quality --batch-sizes 4,16

Quality. Level 1 is YOLOX-Nano (../shared/weights/yolox_nano, real COCO objects) through `grand run`;
levels 1-2 of tiny.yaml would give random labels and noise captions, which says nothing about the
LLM. The level-2 record is that level-1 row with no short captions, relationships or landmark (so
the scene graph lists the detected objects; depth is unknown). Levels 3-4 then run the pipeline's
own step classes (grand.runtime.level34_stages: scene graph, LLMStep) in this process, batch by
batch as an actor would. Reported, per attempt k of the dense-caption loop: how many captions
reached attempt k, the share whose checklist answer parsed, the mean checklist length and the mean
number of checklist objects found missing (and, over images regenerated after attempt k, whether
the feedback reduced that number); the share of images verified at attempt 1, 2, 3; the share of
extra-context paragraphs that differ from the image's dense caption (and how many distinct ones);
mean caption length.

Batching. The same engine (tiny.yaml's engine options) and the dense-caption prompts of the first N
photos: N requests one at a time, then the same N in one `generate` call, greedy, each reply
exactly --tokens tokens (EOS ignored, so both ways decode the same number of tokens). Tokens/s =
generated tokens / wall time; the ratio is what one batched call gains on this machine.

Prints Markdown tables for docs/benchmarks.md; --json writes the raw numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

from grand.config import load_config  # noqa: E402
from grand.models.registry import build_model  # noqa: E402


def yolox_level2_records(images: Path, work: Path, yolox: Path) -> list[dict]:
    """Level-1 rows of YOLOX-Nano through `grand run`, as level-2 records without captions."""
    import pyarrow.dataset as pads
    import yaml

    cfg = work / "yolox.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "yolox-level1", "input": {"shard_size": 64},
        "level1": {"detectors": [{"name": "yolox", "backend": "onnx-yolox", "checkpoint": str(yolox),
                                  "score_threshold": 0.3, "batch_size": 8, "resources": {"num_cpus": 0.5}}],
                   "voting": {"min_models": 1}},
    }))
    subprocess.run([sys.executable, "-m", "grand.cli.main", "run", str(cfg), "--input", str(images),
                    "--output", str(work / "out")], check=True)
    rows = pads.dataset(str(work / "out" / "level1"), format="parquet").to_table().to_pylist()
    return [{**r, "short_captions": [], "relationships": [], "landmark": None}
            for r in sorted(rows, key=lambda r: r["image_id"]) if r["status"] == "ok"]


def run_levels34(cfg, records: list[dict], batch_size: int | None = None) -> tuple[list[dict], list[str], float]:
    """(dense caption dict, extra context) per record from the pipeline's own steps, batch_size
    images per step call (default: the LLM's batch_size), and the seconds the LLM step took (engine
    start excluded)."""
    from grand.runtime.columns import Batch
    from grand.runtime.level34_stages import LLMStep, SceneGraphStep

    step = LLMStep(cfg.level3.llm, cfg.level3, cfg.level4, base_dir=str(cfg.base_dir))
    size = batch_size or cfg.level3.llm.batch_size
    captions, contexts, seconds = [], [], 0.0
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        batch = {"image_id": [r["image_id"] for r in chunk], "status": ["ok"] * len(chunk), "error": [""] * len(chunk),
                 "shard": ["bench"] * len(chunk), "index": list(range(len(chunk))), "record_l2": chunk}
        batch = SceneGraphStep(cfg.level3.scene_graph)(batch)
        t = time.perf_counter()
        batch = Batch(step(batch))
        seconds += time.perf_counter() - t
        for i in range(len(chunk)):
            if batch["error_l3"][i] or batch["error_l4"][i]:
                raise RuntimeError(f"{chunk[i]['image_id']}: {batch['error_l3'][i] or batch['error_l4'][i]}")
            captions.append(dataclasses.asdict(batch["dense_caption"][i]))
            contexts.append(batch["context"][i])
        print(f"  levels 3-4: {start + len(chunk)}/{len(records)} images, {seconds:.0f}s", flush=True)
    return captions, contexts, seconds


def quality_numbers(captions: list[dict], contexts: list[str], max_attempts: int) -> dict:
    n = len(captions)
    per_attempt = []
    for k in range(max_attempts):
        reached = [c["attempts"][k] for c in captions if len(c["attempts"]) > k]
        parsed = [a for a in reached if a["checklist"] is not None]
        # images regenerated after attempt k: did the next caption have fewer missing objects?
        pairs = [(c["attempts"][k], c["attempts"][k + 1]) for c in captions if len(c["attempts"]) > k + 1]
        pairs = [(len(a["missing"]), len(b["missing"])) for a, b in pairs if a["checklist"] is not None and b["checklist"] is not None]
        per_attempt.append({
            "attempt": k + 1,
            "captions": len(reached),
            "checklist_parsed": len(parsed) / len(reached) if reached else None,
            "mean_checklist_items": _mean([len(a["checklist"]) for a in parsed]),
            "mean_missing": _mean([len(a["missing"]) for a in parsed]),
            "verified_here": sum(bool(a["passed"]) for a in reached) / n,
            "regenerated_pairs": len(pairs),
            "next_fewer_missing": sum(b < a for a, b in pairs),
            "next_same_missing": sum(b == a for a, b in pairs),
            "next_more_missing": sum(b > a for a, b in pairs),
        })
    differ = [ctx.strip() != c["caption"].strip() for c, ctx in zip(captions, contexts)]
    return {
        "images": n,
        "per_attempt": per_attempt,
        "verified": sum(c["verified"] for c in captions) / n,
        "flagged_could_not_verify": sum(any("could not verify" in (a["reasoning"] or "") for a in c["attempts"]) for c in captions) / n,
        "context_differs_from_caption": sum(differ) / n,
        "distinct_contexts": len({ctx.strip() for ctx in contexts}),
        "distinct_captions": len({c["caption"].strip() for c in captions}),
        "mean_caption_words": _mean([len(c["caption"].split()) for c in captions]),
        "mean_caption_chars": _mean([len(c["caption"]) for c in captions]),
        "mean_context_words": _mean([len(ctx.split()) for ctx in contexts]),
    }


def batching_numbers(cfg, records: list[dict], sizes: list[int], tokens: int) -> list[dict]:
    """Tokens/s of N one-at-a-time `generate` calls against one call with the same N requests."""
    from vllm import SamplingParams, TokensPrompt

    from grand.core.llm_prompts import dense_caption_conversation, load_level3_prompt
    from grand.core.scene_graph import build_scene_graph
    from grand.models.chat import prompt_token_ids

    llm = build_model(cfg.level3.llm, cfg.base_dir)  # shares the quality run's engine (same settings)
    template = load_level3_prompt(cfg.level3.prompt_file, cfg.base_dir)
    prompts = [TokensPrompt(prompt_token_ids=prompt_token_ids(llm.tokenizer, llm.format_prompt(
        dense_caption_conversation(build_scene_graph(r, cfg.level3.scene_graph), template)))) for r in records]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, seed=0)
    llm.llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
    out = []
    for n in sizes:
        chosen = (prompts * (n // len(prompts) + 1))[:n]
        t = time.perf_counter()
        one_by_one = sum(len(llm.llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in chosen)
        sequential_s = time.perf_counter() - t
        t = time.perf_counter()
        batched = sum(len(o.outputs[0].token_ids) for o in llm.llm.generate(chosen, params, use_tqdm=False))
        batched_s = time.perf_counter() - t
        row = {"requests": n, "tokens_each": tokens, "sequential_tok_s": one_by_one / sequential_s,
               "batched_tok_s": batched / batched_s, "mean_prompt_tokens": _mean([len(p["prompt_token_ids"]) for p in chosen])}
        row["gain"] = row["batched_tok_s"] / row["sequential_tok_s"]
        out.append(row)
        print(f"  batching: N={n}: {row['sequential_tok_s']:.1f} tok/s one at a time, {row['batched_tok_s']:.1f} batched", flush=True)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f} %" if pct else f"{v:.2f}"


def print_tables(result: dict) -> None:
    q = result.get("quality")
    if q:
        print(f"\n{q['images']} images, {result['llm']}, max_attempts {result['max_attempts']}; levels 3-4 "
              f"{result['levels34_seconds']:.0f} s\n")
        print("| attempt | captions | checklist parsed | checklist objects (mean) | missing (mean) | verified here "
              "| regenerated: fewer / same / more missing |")
        print("|---|---|---|---|---|---|---|")
        for a in q["per_attempt"]:
            regen = (f"{a['next_fewer_missing']} / {a['next_same_missing']} / {a['next_more_missing']}"
                     if a["regenerated_pairs"] else "-")
            print(f"| {a['attempt']} | {a['captions']} | {_fmt(a['checklist_parsed'], True)} | {_fmt(a['mean_checklist_items'])} "
                  f"| {_fmt(a['mean_missing'])} | {_fmt(a['verified_here'], True)} | {regen} |")
        print(f"\nverified in the end: {_fmt(q['verified'], True)}; stopped as 'could not verify': "
              f"{_fmt(q['flagged_could_not_verify'], True)}; distinct captions {q['distinct_captions']}/{q['images']}; "
              f"mean caption {q['mean_caption_words']:.1f} words ({q['mean_caption_chars']:.0f} chars)")
        print(f"extra context differs from the dense caption: {_fmt(q['context_differs_from_caption'], True)}; "
              f"distinct paragraphs {q['distinct_contexts']}/{q['images']}; mean {q['mean_context_words']:.1f} words")
    if result.get("batching"):
        print("\n| requests | tokens each | one at a time (tok/s) | one batched call (tok/s) | gain |")
        print("|---|---|---|---|---|")
        for b in result["batching"]:
            print(f"| {b['requests']} | {b['tokens_each']} | {b['sequential_tok_s']:.1f} | {b['batched_tok_s']:.1f} | {b['gain']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "tiny.yaml"), help="its level3 / level4 sections are used")
    ap.add_argument("--images", default=str(SHARED / "data" / "tinycoco" / "images"))
    ap.add_argument("--yolox", default=str(SHARED / "weights" / "yolox_nano"), help="YOLOX ONNX folder for level 1")
    ap.add_argument("--batch", type=int, default=None,
                    help="images per LLM step call (default: level3.llm.batch_size; the text does not depend on it)")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-batching", action="store_true")
    ap.add_argument("--batch-sizes", default="4,16", help="N of the batching comparison (comma-separated)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per reply in the batching comparison")
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args()

    for flag, path in (("--images", args.images), ("--yolox", args.yolox)):
        if not Path(path).exists():
            ap.error(f"{flag} {path} not found (defaults: ../shared beside the checkout)")
    cfg = load_config(args.config)
    result: dict = {"llm": f"{cfg.level3.llm.checkpoint} on {cfg.level3.llm.backend}",
                    "max_attempts": cfg.level3.verification.max_attempts}
    with tempfile.TemporaryDirectory(prefix="llm-quality-") as work:
        records = yolox_level2_records(Path(args.images), Path(work), Path(args.yolox))
    print(f"level 1 (YOLOX): {len(records)} images, {sum(len(r['objects']) for r in records)} objects", flush=True)
    if not args.no_quality:
        captions, contexts, seconds = run_levels34(cfg, records, args.batch)
        result["levels34_seconds"] = seconds
        result["quality"] = quality_numbers(captions, contexts, cfg.level3.verification.max_attempts)
        result["examples"] = [{"image_id": r["image_id"], "dense_caption": c, "context": ctx}
                              for r, c, ctx in list(zip(records, captions, contexts))[:3]]
    if not args.no_batching:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
        result["batching"] = batching_numbers(cfg, records, sizes, args.tokens)
    print_tables(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    # stop the engine's processes now: left to interpreter exit, the script hung after its output
    close = getattr(build_model(cfg.level3.llm, cfg.base_dir), "close", None)  # the shared engine again
    if close is not None:
        close()


if __name__ == "__main__":
    main()
