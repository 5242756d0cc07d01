"""Level-1 pipeline steps as batch steps (what each step does to a batch; grand.runtime.steps says
in which order and where they run, grand.runtime.batch is the base they share).

Rows travel between steps with plain columns: ids, the prepared image bytes, `status`/`error`, and
one JSON string column per result (`tags`, `det__<model>`, `objects`, ...). JSON keeps every block's
Arrow schema identical whatever an image contains (empty lists included); the sink turns it into
the typed output schema (grand.schema) once, at the end.

Every model step is a callable class run by an actor pool: the model loads once per actor. No step
lets one image stop a batch (grand.runtime.batch.BatchStep): when a batch fails, its images are
retried one by one and those that still fail become error rows naming the step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import abstractmethod
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
from grand.runtime import columns
from grand.runtime.batch import AssembleStep, BatchStep, StepRuntime, record_step_time  # noqa: F401  (record_step_time: re-export)

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
            "step_seconds": "{}",
        }


def prepare_images(batch: dict, max_pixels: int) -> dict:
    """Decode and validate every image once; bad ones become error rows with the reason."""
    return DecodeStep(max_pixels)(batch)


class DecodeStep(BatchStep):
    """CPU step: decode and validate every image once; bad ones become error rows with the reason."""

    name = role = "decode"

    def __init__(self, max_pixels: int, runtime: StepRuntime | None = None):
        super().__init__(runtime)
        self.max_pixels = max_pixels

    def run_rows(self, batch, rows):
        from grand.io.images import ImageDecodeError, prepare_image

        images, widths, heights, status, error = (batch[c] for c in ("image", "width", "height", "status", "error"))
        for i in rows:
            try:
                images[i], widths[i], heights[i] = prepare_image(bytes(images[i]), self.max_pixels)
            except ImageDecodeError as err:
                status[i], error[i], images[i] = "error", f"decode: {err}", b""
            except Exception as err:  # an unexpected decoder failure is still one image's problem
                status[i], error[i], images[i] = "error", f"decode: {type(err).__name__}: {err}", b""


# -- model steps ----------------------------------------------------------------------------------
def load_actor_model(spec: ModelSpec, base_dir: str | None):
    """The adapter for `spec`, built in an actor's __init__ (grand.models.registry.build_model)."""
    from transformers.utils import logging as hf_logging

    from grand.models.registry import build_model

    # one "Loading weights" bar per actor and batch warnings drown the run's own progress line
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return build_model(spec, Path(base_dir) if base_dir else None)


class ModelStep(BatchStep):
    """Base of the model steps: loads the model once per actor, runs ok rows on their decoded
    images (the isolation and poison-image handling are BatchStep's)."""

    role = "model"
    timed = True

    def __init__(self, spec: ModelSpec, base_dir: str | None = None, runtime: StepRuntime | None = None,
                 level: int | None = None):
        self.spec, self.name = spec, spec.name
        self.level = level or self.level
        super().__init__(runtime)
        self.model = load_actor_model(spec, base_dir)

    def before(self, batch, rows):
        from grand.io.images import open_rgb

        self._images = {i: open_rgb(bytes(batch["image"][i])) for i in rows}

    def run_rows(self, batch, rows):
        self.run(batch, rows, self._images)

    @abstractmethod
    def run(self, batch: dict, rows: list[int], images: dict) -> None:
        """Run the model on `rows` (indices of ok rows; `images[i]` is row i's PIL image) and write
        this step's columns for those rows into `batch`."""


class TagStep(ModelStep):
    role = "tagger"
    spec: TaggerSpec

    def init_outputs(self, batch, n):
        columns.ensure(batch, ["tags"])  # several taggers add to the same column

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
    reads = ("tags",)
    spec: DetectorSpec

    def init_outputs(self, batch, n):
        col = detection_column(self.spec.name)
        batch[col] = [json.dumps(Detections.empty(self.spec.name).to_dict())] * n

    def run(self, batch, rows, images):
        queries = None
        if self.spec.queries == "tags":
            queries = [tag_names(batch["tags"][i]) for i in rows]
        results = self.model.detect([images[i] for i in rows], queries)
        col = detection_column(self.spec.name)
        for i, det in zip(rows, results):
            det.model = self.spec.name
            batch[col][i] = json.dumps(det.to_dict())


class VoteStep(BatchStep):
    """CPU step: merge every detector's boxes into objects / floating objects (reference rules)."""

    name = role = "vote"

    def __init__(self, detectors: list[DetectorSpec], voting: VotingSpec, runtime: StepRuntime | None = None):
        super().__init__(runtime)
        self.detectors, self.voting = detectors, voting

    def init_outputs(self, batch, n):
        columns.fill(batch, "objects")
        columns.fill(batch, "floating_objects")

    def run_rows(self, batch, rows):
        from grand.core.voting import vote_detections

        for i in rows:
            per_model = {
                d.name: Detections.from_dict(json.loads(batch[detection_column(d.name)][i])) for d in self.detectors
            }
            result = vote_detections(per_model, self.detectors, self.voting)
            records = [_object_dict(k, o) for k, o in enumerate(result.objects + result.floating_objects)]
            batch["objects"][i] = json.dumps(records[: len(result.objects)])
            batch["floating_objects"][i] = json.dumps(records[len(result.objects):])


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
        columns.fill(batch, "depth_stats")

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

    def __init__(self, spec: AttributeSpec, base_dir: str | None = None, runtime: StepRuntime | None = None,
                 level: int | None = None):
        from grand.prompts import load_prompt

        super().__init__(spec, base_dir, runtime, level)
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

    def __init__(self, spec, base_dir=None, runtime: StepRuntime | None = None, level: int | None = None):
        from grand.models.hf_tagger import read_vocabulary

        super().__init__(spec, base_dir, runtime, level)
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


class AssembleLevel1(AssembleStep):
    """CPU step: one complete level-1 record per row (JSON, typed by the sink), in column `record_l1`."""

    name = role = "assemble_level1"
    reads = ("tags", "depth_stats")

    def run_rows(self, batch, rows):
        from grand.schema import DepthStats, Level1Row, ModelProvenance, ObjectRecord

        for i in rows:
            ok = batch["status"][i] == "ok"
            best = best_tag_scores(batch["tags"][i]) if ok else {}
            objects = json.loads(batch["objects"][i]) if ok else []
            floating = json.loads(batch["floating_objects"][i]) if ok else []
            depth = json.loads(batch["depth_stats"][i]) if ok else None
            row = Level1Row(
                image_id=str(batch["image_id"][i]),
                source=str(batch["source"][i]),
                shard=str(batch["shard"][i]),
                index=int(batch["index"][i]),
                status=str(batch["status"][i]),
                error=str(batch["error"][i]) or None,
                width=int(batch["width"][i]) or None,
                height=int(batch["height"][i]) or None,
                tags=list(best),
                tag_scores=[round(float(s), 5) for s in best.values()],
                objects=[ObjectRecord(**o) for o in objects],
                floating_objects=[ObjectRecord(**o) for o in floating],
                depth_stats=DepthStats(**depth) if depth else None,
                provenance=[ModelProvenance(**p) for p in self.provenance_rows],
            )
            batch["record_l1"][i] = json.dumps(dataclasses.asdict(row))
