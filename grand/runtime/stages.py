"""Level-1 pipeline steps as batch steps (what each step does to a batch; grand.runtime.steps says
in which order and where they run, grand.runtime.batch is the base they share).

Rows travel between steps as typed Arrow columns, declared once in grand.runtime.columns: ids, the
prepared image bytes, `status`/`error`, and one column per result (`tags`, `det__<model>`,
`objects`, ...). Inside a step, objects are grand.schema.ObjectRecord and detections
grand.core.detections.Detections; each step hands on an Arrow table of the declared types, so every
block has the same schema whatever an image contains (empty lists included).

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
from grand.schema import DepthStats, ObjectRecord
from grand.runtime import columns
from grand.runtime.batch import AssembleStep, BatchStep, StepRuntime, record_step_time  # noqa: F401  (record_step_time: re-export)

log = logging.getLogger("grand.stages")

DETECTION_PREFIX = "det__"


def detection_column(model_name: str) -> str:
    return f"{DETECTION_PREFIX}{model_name}"


# -- reading and preparing ------------------------------------------------------------------------
READ_BLOCK_ROWS = 16  # rows per table a read step yields (Ray merges them into blocks)


def shard_specs(batch) -> list:
    """The planned shards of a read step's input batch (rows {"shard_spec": JSON of a ShardSpec})."""
    from grand.io.sources import ShardSpec

    specs = batch.column("shard_spec").to_pylist() if hasattr(batch, "column") else list(batch["shard_spec"])
    return [ShardSpec.from_dict(json.loads(s)) for s in specs]


def in_tables(rows: Iterator[dict], size: int = READ_BLOCK_ROWS):
    """Typed tables of `size` rows from a stream of row dicts (in-step values)."""
    chunk: list[dict] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == size:
            yield columns.to_table({k: [c[k] for c in chunk] for k in chunk[0]})
            chunk = []
    if chunk:
        yield columns.to_table({k: [c[k] for c in chunk] for k in chunk[0]})


def read_images(batch, input_cfg: InputSpec):
    """Read step of level 1: planned shards -> typed tables of their image rows. A generator, so that
    a multi-GB SA-1B tar streams through in blocks instead of one list."""
    for spec in shard_specs(batch):
        yield from in_tables(read_shard_rows(spec, input_cfg))


def read_shard_rows(spec, input_cfg: InputSpec) -> Iterator[dict]:
    """One planned shard -> its image rows (exactly `num_images`, error rows included)."""
    from grand.io.sources import read_shard

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
            "step_seconds": {},
        }


def prepare_images(batch, max_pixels: int):
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
            batch["tags"][i] = batch["tags"][i] + [(t, float(s), self.spec.name) for t, s in tags]


def best_tag_scores(tags: list[tuple[str, float, str]]) -> dict[str, float]:
    """The union of all taggers' (tag, score, model) of a row: tag -> its best score, best first."""
    best: dict[str, float] = {}
    for tag, score, _model in tags or ():
        best[tag] = max(score, best.get(tag, -1.0))
    return {t: best[t] for t in sorted(best, key=lambda t: (-best[t], t))}


def tag_names(tags: list[tuple[str, float, str]]) -> list[str]:
    """Unique tag texts of a row, best score first."""
    return list(best_tag_scores(tags))


class DetectStep(ModelStep):
    role = "detector"
    reads = ("tags",)
    spec: DetectorSpec

    def init_outputs(self, batch, n):
        batch[detection_column(self.spec.name)] = [Detections.empty(self.spec.name) for _ in range(n)]

    def run(self, batch, rows, images):
        queries = None
        if self.spec.queries == "tags":
            queries = [tag_names(batch["tags"][i]) for i in rows]
        results = self.model.detect([images[i] for i in rows], queries)
        col = detection_column(self.spec.name)
        for i, det in zip(rows, results):
            det.model = self.spec.name
            batch[col][i] = det


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
            per_model = {d.name: batch[detection_column(d.name)][i] for d in self.detectors}
            result = vote_detections(per_model, self.detectors, self.voting)
            records = [_object_record(k, o) for k, o in enumerate(result.objects + result.floating_objects)]
            batch["objects"][i] = records[: len(result.objects)]
            batch["floating_objects"][i] = records[len(result.objects):]


def _object_record(object_id: int, obj) -> ObjectRecord:
    return ObjectRecord(
        id=object_id, bbox=[round(float(v), 2) for v in obj.bbox], label=obj.label, labels=list(obj.labels),
        score=round(float(obj.score), 5), models=list(obj.models), attributes=list(obj.attributes),
    )


def detections_of_row(batch, i: int, skip: str | None = None) -> dict[str, Detections]:
    """Model name -> Detections of every detection column of row i (but `skip`'s)."""
    return {c[len(DETECTION_PREFIX):]: batch[c][i] for c in batch
            if c.startswith(DETECTION_PREFIX) and c != skip and batch[c][i] is not None}


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
        for i in rows:
            objs, floats = batch["objects"][i], batch["floating_objects"][i]
            targets = [o for o in objs + (floats if self.spec.segment_floating else []) if not o.segmentation]
            gt = parse_sa1b_sidecar(batch["sidecar"][i]) if batch["sidecar"][i] else []
            if gt and targets:
                boxes = np.array([o.bbox for o in targets], np.float32)
                match = best_box_matches(boxes, np.array([g["bbox_xyxy"] for g in gt], np.float32), self.spec.gt_match_iou)
                for o, m in zip(targets, match):
                    if m >= 0:
                        o.segmentation, o.segmentation_source = columns.rle(gt[m]["segmentation"]), "sa1b_gt"
            if self.spec.detector_masks and targets:  # masks detectors predicted (detectron2), before SAM
                from grand.core.detections import assign_detector_masks

                assign_detector_masks(targets, detections_of_row(batch, i), self.spec.gt_match_iou)
            rest = [o for o in targets if not o.segmentation]
            if rest:  # an image with nothing to mask never costs an image embedding
                todo_rows.append(i)
                todo_boxes.append(np.array([o.bbox for o in rest], np.float32).reshape(-1, 4))
                todo_targets.append(rest)
        masks = self.model.segment([images[i] for i in todo_rows], todo_boxes) if todo_rows else []
        for rest, m in zip(todo_targets, masks):
            for o, rle in zip(rest, encode_masks(np.asarray(m, dtype=bool))):
                o.segmentation, o.segmentation_source = columns.rle(rle), self.spec.name


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
                objs = batch[col][i]
                if objs:
                    values = object_depths(depth, np.array([o.bbox for o in objs], np.float32))
                    for o, v in zip(objs, values):
                        o.depth = float(v) if np.isfinite(v) else None
            stats = DepthStats(**depth_stats(depth))
            if self.spec.store_map:
                from grand.core.depth import encode_depth_map

                stats.map_png = encode_depth_map(depth, stats.min, stats.max, self.spec.map_max_side)
            batch["depth_stats"][i] = stats


class LabelChoiceStep(ModelStep):
    """Final label of objects with several candidate labels: the candidate whose text best matches
    the object's crop (CLIP/SigLIP), as the reference does."""

    role = "label_choice"
    spec: LabelChoiceSpec

    def run(self, batch, rows, images):
        from grand.core.attributes import choose_label, crop_box, label_candidates

        crops, candidates, owners = [], [], []
        for i in rows:
            img = images[i]
            for o in batch["objects"][i] + batch["floating_objects"][i]:
                cands = label_candidates(o)
                if len(cands) > 1:
                    crops.append(img.crop(crop_box(o.bbox, img.width, img.height, margin=0.0)))
                    candidates.append(cands)
                    owners.append(o)
        if crops:
            for o, cands, scores in zip(owners, candidates, self.model.score_labels(crops, candidates)):
                o.label = choose_label(cands, scores)


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
        for i in rows:
            img = images[i]
            objs = batch["objects"][i] + (batch["floating_objects"][i] if s.include_floating else [])
            for k in objects_to_describe(objs, img.width, img.height, s.min_area_fraction, s.max_objects):
                crops.append(img.crop(crop_box(objs[k].bbox, img.width, img.height, s.context_margin)))
                owners.append(objs[k])
        if crops:
            for o, text in zip(owners, self.model.generate(crops, [self.prompt] * len(crops))):
                desc = clean_description(text)
                if desc and desc not in o.attributes:
                    o.attributes = [*o.attributes, desc]


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
        batch[detection_column(self.spec.name)] = [Detections.empty(self.spec.name) for _ in range(n)]

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
            found = list(detections_of_row(batch, i, skip=own).values())
            picked = unclaimed_gt_boxes(gt, img.width, img.height, found, self.spec)
            boxes = np.array([gt[k]["bbox_xyxy"] for k in picked], np.float32).reshape(-1, 4)
            crops = [img.crop(crop_box(b, img.width, img.height, self.spec.context_margin)) for b in boxes]
            scores = self.model.score_labels(crops, [self.vocabulary] * len(crops)) if crops else []
            batch[own][i] = classified_detections(boxes, scores, self.vocabulary, self.spec.name)


class AssembleLevel1(AssembleStep):
    """CPU step: one complete level-1 record per row (grand.schema.Level1Row), in column `record_l1`."""

    name = role = "assemble_level1"
    reads = ("tags", "depth_stats")

    def run_rows(self, batch, rows):
        from grand.schema import Level1Row, ModelProvenance

        for i in rows:
            ok = batch["status"][i] == "ok"
            best = best_tag_scores(batch["tags"][i]) if ok else {}
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
                objects=batch["objects"][i] if ok else [],
                floating_objects=batch["floating_objects"][i] if ok else [],
                depth_stats=batch["depth_stats"][i] if ok else None,
                provenance=[ModelProvenance(**p) for p in self.provenance_rows],
            )
            batch["record_l1"][i] = dataclasses.asdict(row)
