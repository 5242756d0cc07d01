"""CPU post-processing a GPU actor does per image: SAM's masks to COCO RLEs, and the cross-model vote.
Times the current code against the code before issue 18 (benchmarks/legacy_postprocess.py) in the
same run, checks that both give identical results, and prints the ratios for docs/benchmarks.md.

    .venv/bin/python benchmarks/postprocess.py            # SA-1B size: 75 masks of 1500 x 2250, 3 x 100 boxes
    .venv/bin/python benchmarks/postprocess.py --repeat 3

Masks follow the segment step's path from the model's output to the RLEs in the record: SAM-like
low-resolution logits (one 256 x 256 map per box, elliptic blobs of SA-1B-like sizes) in chunks of
`boxes_per_batch` (64, grand.yaml's), upsampled and thresholded by SamImageProcessor.post_process_masks
exactly as grand/models/hf_segmenter.py calls it (device work: on a GPU node it runs on the GPU, so
it is reported apart), then copied to the host (hf_segmenter.gather_masks) and encoded
(grand.core.rle.encode_masks, what SegmentStep calls). The vote runs grand.core.voting.vote_detections
on three detectors' 100 boxes each (about 60 objects seen by several detectors, plus clutter).
The last line reads `postprocess: <ms> ms/image RLE (75 masks, 1500x2250), <ms> ms vote (3x100 boxes)`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import legacy_postprocess as legacy  # noqa: E402

from grand.config import DetectorSpec, VotingSpec  # noqa: E402
from grand.core.detections import Detections  # noqa: E402
from grand.core.rle import encode_masks  # noqa: E402
from grand.core.voting import vote_detections  # noqa: E402
from grand.models.hf_segmenter import gather_masks  # noqa: E402

HEIGHT, WIDTH, N_MASKS, BOXES_PER_BATCH = 1500, 2250, 75, 64


def sam_like_chunks(rng: np.random.Generator, n: int = N_MASKS, height: int = HEIGHT, width: int = WIDTH):
    """The decoder's output for n box prompts, upsampled as the adapter does: (n_chunk, H, W) bool
    tensors, one per chunk of BOXES_PER_BATCH boxes. Also returns the seconds the upsampling took."""
    import torch
    from transformers import SamImageProcessor

    processor = SamImageProcessor()
    scale = 1024 / max(height, width)
    resized = [int(height * scale + 0.5), int(width * scale + 0.5)]
    yy, xx = np.mgrid[:256, :256].astype(np.float32) * 4  # low-res maps cover the padded 1024 frame
    logits = np.empty((n, 1, 256, 256), np.float32)
    for k in range(n):
        # object sides log-uniform between 2% and 60% of the short side, anywhere in the image
        side = np.exp(rng.uniform(np.log(0.02), np.log(0.6))) * min(resized)
        ry, rx = side * rng.uniform(0.5, 1.0), side * rng.uniform(0.5, 1.0)
        cy, cx = rng.uniform(0, resized[0]), rng.uniform(0, resized[1])
        logits[k, 0] = 1 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2 + rng.normal(0, 0.05, (256, 256))
    chunks, start = [], time.process_time()
    with torch.inference_mode():
        for s in range(0, n, BOXES_PER_BATCH):
            masks = processor.post_process_masks(
                [torch.from_numpy(logits[s : s + BOXES_PER_BATCH])], [[height, width]], [resized], binarize=True
            )[0]
            chunks.append(masks[:, 0])
    return chunks, time.process_time() - start


def detector_boxes(rng: np.random.Generator, n_models: int = 3, n_boxes: int = 100):
    """n_models detectors' Detections on one SA-1B-sized image: ~60 shared objects with jitter."""
    vocab = ["person", "man", "woman", "dog", "car", "chair", "cup", "tree", "window", "sign"]
    centres = rng.uniform([0, 0], [WIDTH, HEIGHT], (60, 2))
    sizes = np.exp(rng.uniform(np.log(30), np.log(900), (60, 2)))
    per_model, specs = {}, []
    for m in range(n_models):
        name = f"detector{m}"
        specs.append(DetectorSpec(name=name, checkpoint=f"tiny:{name}", score_threshold=0.2, person_threshold=0.2))
        seen = rng.random(60) < 0.8
        boxes = [np.r_[c - s / 2, c + s / 2] + rng.normal(0, 0.04, 4) * np.r_[s, s] for c, s in zip(centres[seen], sizes[seen])]
        while len(boxes) < n_boxes:  # clutter
            xy = rng.uniform([0, 0], [WIDTH, HEIGHT])
            boxes.append(np.r_[xy, xy + rng.uniform(10, 400, 2)])
        boxes = np.asarray(boxes[:n_boxes], np.float32)
        per_model[name] = Detections(boxes, rng.uniform(0.05, 1.0, n_boxes), rng.choice(vocab, n_boxes), name)
    return per_model, specs


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), out


def vote_rows(result) -> list:
    return [o.to_dict() for o in result.objects], [o.to_dict() for o in result.floating_objects]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of each part (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    chunks, upsample_s = sam_like_chunks(rng)
    old_repeat = max(1, min(args.repeat, 3))  # the old encode takes seconds
    new_s, new_rles = timed(lambda: encode_masks(gather_masks(chunks, HEIGHT, WIDTH)), args.repeat)
    old_s, old_rles = timed(lambda: legacy.encode_masks(legacy.gather_masks(chunks)), old_repeat)
    if new_rles != old_rles:
        raise SystemExit("RLEs differ from the old code's: encode_masks is broken")
    # the two parts apart: the host copy (on a GPU node, the device-to-host transfer) and the encoding
    masks = gather_masks(chunks, HEIGHT, WIDTH)
    copy_new, _ = timed(lambda: gather_masks(chunks, HEIGHT, WIDTH), args.repeat)
    copy_old, _ = timed(lambda: legacy.gather_masks(chunks), args.repeat)
    encode_new, _ = timed(lambda: encode_masks(masks), args.repeat)
    encode_old, _ = timed(lambda: legacy.encode_masks(masks), old_repeat)
    coverage = float(np.mean([c.float().mean().item() for c in chunks]))

    per_model, specs = detector_boxes(rng)
    voting = VotingSpec()
    vote_detections(per_model, specs, voting)  # warm-up (first-call imports)
    new_v, new_result = timed(lambda: vote_detections(per_model, specs, voting), args.repeat * 10)
    old_v, old_result = timed(lambda: legacy.vote_detections(per_model, specs, voting), args.repeat * 10)
    if vote_rows(new_result) != vote_rows(old_result):
        raise SystemExit("vote results differ from the old code's: vote_detections is broken")

    print("CPU milliseconds of this process (time.process_time), median of the repetitions")
    print(f"masks: {N_MASKS} of {HEIGHT}x{WIDTH}, mean foreground {coverage:.1%}; upsampling on this CPU "
          f"(device work, on the GPU in a cluster) {upsample_s * 1e3:.0f} ms, not counted below")
    print(f"  host copy: old {copy_old * 1e3:.0f} ms, new {copy_new * 1e3:.0f} ms; "
          f"encode_masks: old {encode_old * 1e3:.0f} ms, new {encode_new * 1e3:.0f} ms, {encode_old / encode_new:.1f}x faster")
    print(f"RLE (host copy + encode): old {old_s * 1e3:.0f} ms, new {new_s * 1e3:.0f} ms, {old_s / new_s:.1f}x faster")
    print(f"vote ({len(new_result.objects)} objects, {len(new_result.floating_objects)} floating): "
          f"old {old_v * 1e3:.1f} ms, new {new_v * 1e3:.1f} ms, {old_v / new_v:.1f}x faster")
    print(f"postprocess: {new_s * 1e3:.0f} ms/image RLE (75 masks, 1500x2250), {new_v * 1e3:.1f} ms vote (3x100 boxes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
