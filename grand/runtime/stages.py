"""Level-1 pipeline steps (and the shared step machinery) as Ray Data batch functions (what to do; grand.runtime.pipeline says where).

Rows travel between steps with plain columns: ids, the prepared image bytes, `status`/`error`, and
one JSON string column per result (`tags`, `det__<model>`, `objects`, ...). JSON keeps every block's
Arrow schema identical whatever an image contains (empty lists included); the sink turns it into
the typed output schema (grand.schema) once, at the end.

Every model step is a callable class run by an actor pool: the model loads once per actor. A step
never lets one image stop a batch: when a batch fails, its images are retried one by one and those
that still fail become error rows naming the step.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
import os
import random
import time
import traceback
from pathlib import Path
from typing import Iterator

import numpy as np

from grand.config import (
    AttributeSpec,
    DepthSpec,
    DetectorSpec,
    InputSpec,
    LabelChoiceSpec,
    ModelSpec,
    Sa1bGtSpec,
    SegmenterSpec,
    TaggerSpec,
    VotingSpec,
)
from grand.core.detections import Detections

log = logging.getLogger("grand.stages")

DETECTION_PREFIX = "det__"


def detection_column(model_name: str) -> str:
    return f"{DETECTION_PREFIX}{model_name}"


# -- reading and preparing ------------------------------------------------------------------------
def read_shard_rows(row: dict, input_cfg: InputSpec) -> Iterator[dict]:
    """flat_map step: one planned shard -> its image rows (exactly `num_images`, error rows included).
    A generator, so that a multi-GB SA-1B tar streams through in blocks instead of one list."""
    from grand.io.sources import ShardSpec, read_shard

    spec = ShardSpec.from_dict(json.loads(row["shard_spec"]))
    for img in read_shard(spec, input_cfg):
        yield {
            "image_id": img.image_id,
            "source": img.source,
            "shard": spec.name,
            "index": img.index,
            "image": img.data if img.error is None else b"",
            "sidecar": img.sidecar or "",
            "status": "ok" if img.error is None else "error",
            "error": img.error or "",
            "width": 0,
            "height": 0,
        }


def prepare_images(batch: dict, max_pixels: int) -> dict:
    """Decode and validate every image once; bad ones become error rows with the reason."""
    from grand.io.images import ImageDecodeError, prepare_image

    images, widths, heights = list(batch["image"]), list(batch["width"]), list(batch["height"])
    status, error = list(batch["status"]), list(batch["error"])
    for i in range(len(images)):
        if status[i] != "ok":
            continue
        try:
            images[i], widths[i], heights[i] = prepare_image(bytes(images[i]), max_pixels)
        except ImageDecodeError as err:
            status[i], error[i], images[i] = "error", f"decode: {err}", b""
        except Exception as err:  # an unexpected decoder failure is still one image's problem
            status[i], error[i], images[i] = "error", f"decode: {type(err).__name__}: {err}", b""
    return {**batch, "image": images, "width": widths, "height": heights, "status": status, "error": error}


def record_step_time(batch: dict, step: str, seconds: float, rows: list[int]) -> None:
    """Share a batch's busy time among its rows (column `step_seconds`, JSON {step: seconds}), so
    the driver can report each step's images/s while the run goes on."""
    n = len(batch["image_id"])
    col = batch.setdefault("step_seconds", ["{}"] * n)
    for i in rows:
        times = json.loads(col[i])
        times[step] = times.get(step, 0.0) + seconds / len(rows)
        col[i] = json.dumps(times)


# -- model steps ----------------------------------------------------------------------------------
def load_actor_model(spec: ModelSpec, base_dir: str | None):
    """The adapter for `spec`, built in an actor's __init__ (grand.models.registry.build_model)."""
    from transformers.utils import logging as hf_logging

    from grand.models.registry import build_model

    # one "Loading weights" bar per actor and batch warnings drown the run's own progress line
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return build_model(spec, Path(base_dir) if base_dir else None)


def maybe_die(fault_rate: float, step: str) -> None:
    """Opt-in fault injection (RunOptions.fault_rate): the actor process dies as a crashed model
    worker would, so that tests can check Ray's restart + retry gives the fault-free output."""
    if fault_rate > 0 and random.random() < fault_rate:
        log.warning("%s: fault injection: killing this actor process", step)
        os._exit(1)


class ModelStep(ABC):
    """Base of the actor-pool steps: loads the model once, runs ok rows, isolates failures."""

    role = "model"

    def __init__(self, spec: ModelSpec, base_dir: str | None = None, fault_rate: float = 0.0):
        self.spec = spec
        self.fault_rate = fault_rate
        self.model = load_actor_model(spec, base_dir)

    def __call__(self, batch: dict) -> dict:
        from grand.io.images import open_rgb

        maybe_die(self.fault_rate, self.spec.name)
        batch = {k: list(v) for k, v in batch.items()}
        n = len(batch["image_id"])
        todo = [i for i in range(n) if batch["status"][i] == "ok"]
        self.init_outputs(batch, n)
        if not todo:
            record_step_time(batch, self.spec.name, 0.0, [])  # every block keeps the same columns
            return batch
        started = time.perf_counter()
        images = {i: open_rgb(bytes(batch["image"][i])) for i in todo}
        try:
            self.run(batch, todo, images)
        except Exception:
            log.warning("%s: batch of %d failed, retrying image by image\n%s", self.spec.name, len(todo), traceback.format_exc())
            for i in todo:
                try:
                    self.run(batch, [i], images)
                except Exception as err:
                    batch["status"][i] = "error"
                    batch["error"][i] = f"{self.role} '{self.spec.name}': {type(err).__name__}: {err}"
        record_step_time(batch, self.spec.name, time.perf_counter() - started, todo)
        return batch

    def init_outputs(self, batch: dict, n: int) -> None:
        """Create this step's output columns so that every row has them, error rows included."""

    @abstractmethod
    def run(self, batch: dict, rows: list[int], images: dict) -> None:
        """Run the model on `rows` (indices of ok rows; `images[i]` is row i's PIL image) and write
        this step's columns for those rows into `batch`."""



class TagStep(ModelStep):
    role = "tagger"
    spec: TaggerSpec

    def init_outputs(self, batch, n):
        batch.setdefault("tags", ["[]"] * n)

    def run(self, batch, rows, images):
        results = self.model.tag([images[i] for i in rows])
        for i, tags in zip(rows, results):
            merged = json.loads(batch["tags"][i]) + [[t, float(s), self.spec.name] for t, s in tags]
            batch["tags"][i] = json.dumps(merged)


def best_tag_scores(tags_json: str) -> dict[str, float]:
    """The union of all taggers' tags of a row: tag -> its best score, best first."""
    best: dict[str, float] = {}
    for tag, score, _model in json.loads(tags_json or "[]"):
        best[tag] = max(score, best.get(tag, -1.0))
    return {t: best[t] for t in sorted(best, key=lambda t: (-best[t], t))}


def tag_names(tags_json: str) -> list[str]:
    """Unique tag texts of a row, best score first."""
    return list(best_tag_scores(tags_json))


class DetectStep(ModelStep):
    role = "detector"
    spec: DetectorSpec

    def init_outputs(self, batch, n):
        col = detection_column(self.spec.name)
        batch[col] = [json.dumps(Detections.empty(self.spec.name).to_dict())] * n

    def run(self, batch, rows, images):
        queries = None
        if self.spec.queries == "tags":
            queries = [tag_names(batch["tags"][i]) if "tags" in batch else [] for i in rows]
        results = self.model.detect([images[i] for i in rows], queries)
        col = detection_column(self.spec.name)
        for i, det in zip(rows, results):
            det.model = self.spec.name
            batch[col][i] = json.dumps(det.to_dict())


def vote(batch: dict, detectors: list[DetectorSpec], voting: VotingSpec) -> dict:
    """CPU step: merge every detector's boxes into objects / floating objects (reference rules)."""
    from grand.core.voting import vote_detections

    n = len(batch["image_id"])
    objects, floating = ["[]"] * n, ["[]"] * n
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        per_model = {
            d.name: Detections.from_dict(json.loads(batch[detection_column(d.name)][i])) for d in detectors
        }
        result = vote_detections(per_model, detectors, voting)
        records = [_object_dict(k, o) for k, o in enumerate(result.objects + result.floating_objects)]
        objects[i] = json.dumps(records[: len(result.objects)])
        floating[i] = json.dumps(records[len(result.objects):])
    return {**batch, "objects": objects, "floating_objects": floating}


def _object_dict(object_id: int, obj) -> dict:
    return {
        "id": object_id,
        "bbox": [round(float(v), 2) for v in obj.bbox],
        "label": obj.label,
        "labels": list(obj.labels),
        "score": round(float(obj.score), 5),
        "models": list(obj.models),
        "attributes": list(obj.attributes),
    }


REGION_COLUMNS = ("objects", "floating_objects")


def load_regions(batch: dict, rows: list[int]) -> dict[int, dict[str, list[dict]]]:
    """Row -> {"objects": [...], "floating_objects": [...]} decoded from the JSON columns."""
    return {i: {c: json.loads(batch[c][i]) for c in REGION_COLUMNS} for i in rows}


def store_regions(batch: dict, regions: dict[int, dict[str, list[dict]]]) -> None:
    """Write `load_regions`' (edited) lists back into the batch's JSON columns."""
    for i, cols in regions.items():
        for c, objs in cols.items():
            batch[c][i] = json.dumps(objs)


class SegmentStep(ModelStep):
    """Masks for objects: an SA-1B ground-truth mask when one matches the box, else the segmenter.
    Objects that already have a mask keep it, so the same step also masks, in level 2, just the
    objects phrase grounding added."""

    role = "segmenter"
    spec: SegmenterSpec

    def run(self, batch, rows, images):
        from grand.core.rle import best_box_matches, encode_masks
        from grand.io.sa1b import parse_sa1b_sidecar

        todo_rows, todo_boxes, todo_targets = [], [], []
        parsed = load_regions(batch, rows)
        for i in rows:
            objs, floats = parsed[i]["objects"], parsed[i]["floating_objects"]
            targets = [o for o in objs + (floats if self.spec.segment_floating else []) if not o.get("segmentation")]
            gt = parse_sa1b_sidecar(batch["sidecar"][i]) if batch["sidecar"][i] else []
            if gt and targets:
                boxes = np.array([o["bbox"] for o in targets], np.float32)
                match = best_box_matches(boxes, np.array([g["bbox_xyxy"] for g in gt], np.float32), self.spec.gt_match_iou)
                for o, m in zip(targets, match):
                    if m >= 0:
                        o["segmentation"], o["segmentation_source"] = gt[m]["segmentation"], "sa1b_gt"
            if self.spec.detector_masks and targets:  # masks detectors predicted (detectron2), before SAM
                from grand.core.detections import assign_detector_masks

                per_model = {c[len(DETECTION_PREFIX):]: Detections.from_dict(json.loads(batch[c][i]))
                             for c in batch if c.startswith(DETECTION_PREFIX)}
                assign_detector_masks(targets, per_model, self.spec.gt_match_iou)
            rest = [o for o in targets if not o.get("segmentation")]
            if rest:  # an image with nothing to mask never costs an image embedding
                todo_rows.append(i)
                todo_boxes.append(np.array([o["bbox"] for o in rest], np.float32).reshape(-1, 4))
                todo_targets.append(rest)
        masks = self.model.segment([images[i] for i in todo_rows], todo_boxes) if todo_rows else []
        for rest, m in zip(todo_targets, masks):
            for o, rle in zip(rest, encode_masks(np.asarray(m, dtype=bool))):
                o["segmentation"], o["segmentation_source"] = rle, self.spec.name
        store_regions(batch, parsed)


class DepthStep(ModelStep):
    role = "depth"
    spec: DepthSpec

    def init_outputs(self, batch, n):
        batch.setdefault("depth_stats", ["null"] * n)

    def run(self, batch, rows, images):
        from grand.core.depth import depth_stats, object_depths

        maps = self.model.estimate([images[i] for i in rows])
        for i, depth in zip(rows, maps):
            for col in ("objects", "floating_objects"):
                objs = json.loads(batch[col][i])
                if objs:
                    values = object_depths(depth, np.array([o["bbox"] for o in objs], np.float32))
                    for o, v in zip(objs, values):
                        o["depth"] = float(v) if np.isfinite(v) else None
                    batch[col][i] = json.dumps(objs)
            stats = depth_stats(depth)
            if self.spec.store_map:
                from grand.core.depth import encode_depth_map

                stats["map_png"] = encode_depth_map(depth, stats["min"], stats["max"], self.spec.map_max_side)
            batch["depth_stats"][i] = json.dumps(stats)


class LabelChoiceStep(ModelStep):
    """Final label of objects with several candidate labels: the candidate whose text best matches
    the object's crop (CLIP/SigLIP), as the reference does."""

    role = "label_choice"
    spec: LabelChoiceSpec

    def run(self, batch, rows, images):
        from grand.core.attributes import choose_label, crop_box, label_candidates

        crops, candidates, owners = [], [], []
        parsed = load_regions(batch, rows)
        for i in rows:
            img = images[i]
            for objs in parsed[i].values():
                for o in objs:
                    cands = label_candidates(o)
                    if len(cands) > 1:
                        crops.append(img.crop(crop_box(o["bbox"], img.width, img.height, margin=0.0)))
                        candidates.append(cands)
                        owners.append(o)
        if crops:
            for o, cands, scores in zip(owners, candidates, self.model.score_labels(crops, candidates)):
                o["label"] = choose_label(cands, scores)
        store_regions(batch, parsed)


class AttributeStep(ModelStep):
    """Short descriptions of large objects: a vision-language model answers a question about each
    object's crop (the reference's GRiT / GPT4RoI region descriptions)."""

    role = "attributes"
    spec: AttributeSpec

    def __init__(self, spec: AttributeSpec, base_dir: str | None = None, fault_rate: float = 0.0):
        from grand.prompts import load_prompt

        super().__init__(spec, base_dir, fault_rate)
        self.prompt = load_prompt(spec.prompt_file, Path(base_dir) if base_dir else None)

    def run(self, batch, rows, images):
        from grand.core.attributes import clean_description, crop_box, objects_to_describe

        s = self.spec
        crops, owners = [], []
        parsed = load_regions(batch, rows)
        for i in rows:
            img = images[i]
            objs = parsed[i]["objects"] + (parsed[i]["floating_objects"] if s.include_floating else [])
            for k in objects_to_describe(objs, img.width, img.height, s.min_area_fraction, s.max_objects):
                crops.append(img.crop(crop_box(objs[k]["bbox"], img.width, img.height, s.context_margin)))
                owners.append(objs[k])
        if crops:
            for o, text in zip(owners, self.model.generate(crops, [self.prompt] * len(crops))):
                desc = clean_description(text)
                if desc and desc not in o["attributes"]:
                    o["attributes"] = [*o["attributes"], desc]
        store_regions(batch, parsed)


class Sa1bGtStep(ModelStep):
    """SA-1B inputs: ground-truth boxes no detector found, classified over the vocabulary, as the
    detection column of model `sa1b_gt` (OV-SAM's role; grand.core.sa1b_votes)."""

    role = "sa1b_gt"
    spec: Sa1bGtSpec

    def __init__(self, spec, base_dir=None, fault_rate=0.0):
        from grand.models.hf_tagger import read_vocabulary

        super().__init__(spec, base_dir, fault_rate)
        self.vocabulary = read_vocabulary(spec, Path(base_dir) if base_dir else None)

    def init_outputs(self, batch, n):
        batch[detection_column(self.spec.name)] = [json.dumps(Detections.empty(self.spec.name).to_dict())] * n

    def run(self, batch, rows, images):
        from grand.core.attributes import crop_box
        from grand.core.sa1b_votes import classified_detections, unclaimed_gt_boxes
        from grand.io.sa1b import parse_sa1b_sidecar

        own = detection_column(self.spec.name)
        for i in rows:
            gt = parse_sa1b_sidecar(batch["sidecar"][i]) if batch["sidecar"][i] else []
            if not gt:
                continue
            img = images[i]
            found = [Detections.from_dict(json.loads(batch[c][i])) for c in batch if c.startswith(DETECTION_PREFIX) and c != own]
            picked = unclaimed_gt_boxes(gt, img.width, img.height, found, self.spec)
            boxes = np.array([gt[k]["bbox_xyxy"] for k in picked], np.float32).reshape(-1, 4)
            crops = [img.crop(crop_box(b, img.width, img.height, self.spec.context_margin)) for b in boxes]
            scores = self.model.score_labels(crops, [self.vocabulary] * len(crops)) if crops else []
            batch[own][i] = json.dumps(classified_detections(boxes, scores, self.vocabulary, self.spec.name).to_dict())


STEP_FOR_ROLE = {
    "tagger": TagStep, "detector": DetectStep, "segmenter": SegmentStep, "depth": DepthStep,
    "label_choice": LabelChoiceStep, "attributes": AttributeStep, "sa1b_gt": Sa1bGtStep,
}
