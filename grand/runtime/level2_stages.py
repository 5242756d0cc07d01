"""Level-2 pipeline steps: short captions + landmark (VLM actors), phrases (spaCy actor), phrase
grounding (detector actor), then assembly of the level-2 record.

They extend the level-1 row format (grand.runtime.stages): the same ids, image bytes and
`status`/`error`, `objects` / `floating_objects` (ObjectRecords), plus one typed column per result
(grand.runtime.columns): `cap__<captioner>`, `landmark`, `phrases`, `grounding`. Level 2 runs either right after level 1 in
the same pipeline or over a committed level-1 shard (read_level1_rows joins it with the images).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from grand.config import CaptionerSpec, InputSpec, PhraseGroundingSpec, PhraseSpec
from grand.runtime import columns
from grand.runtime.batch import AssembleStep, BatchStep, StepRuntime
from grand.runtime.stages import ModelStep, in_tables, read_shard_rows, shard_specs
from grand.schema import Landmark

CAPTION_PREFIX = "cap__"


def caption_column(captioner: str) -> str:
    return f"{CAPTION_PREFIX}{captioner}"


# -- reading level 1 back ---------------------------------------------------------------------------
def read_level1(batch, input_cfg: InputSpec, output_uri: str):
    """Read step of a level-2-only run: each planned shard's image rows joined, by index, with its
    committed level-1 rows, as typed tables. A level-1 error row stays an error row (level 2 has
    nothing to add)."""
    for spec in shard_specs(batch):
        yield from in_tables(read_level1_rows(spec, input_cfg, output_uri))


def read_level1_rows(spec, input_cfg: InputSpec, output_uri: str) -> Iterator[dict]:
    """One shard's image rows joined with its committed level-1 rows (in-step values)."""
    from grand.io.output import OutputDir
    import pyarrow.parquet as pq

    out = OutputDir(output_uri)
    with out.fs.open(out.shard_path(1, spec.name), "rb") as f:
        level1 = {r["index"]: r for r in pq.read_table(f, columns=["index", "status", "error", "objects", "floating_objects"]).to_pylist()}
    for img in read_shard_rows(spec, input_cfg):
        l1 = level1.get(img["index"])
        if l1 is None:
            img.update(status="error", error=f"level 1: no row {img['index']} in shard {spec.name}", image=b"")
        elif l1["status"] != "ok":
            img.update(status="error", error=l1["error"] or "level 1 failed", image=b"")
        img["objects"] = [columns.object_record(o) for o in l1["objects"]] if l1 else []
        img["floating_objects"] = [columns.object_record(o) for o in l1["floating_objects"]] if l1 else []
        yield img


# -- captions and landmark --------------------------------------------------------------------------
class CaptionStep(ModelStep):
    """One short caption per image; the captioner marked `landmark: true` also answers the two
    landmark multiple-choice questions (the second only when the first answer parsed)."""

    role = "captioner"
    spec: CaptionerSpec

    level = 2

    def __init__(self, spec: CaptionerSpec, base_dir: str | None = None, runtime: StepRuntime | None = None,
                 level: int | None = None):
        from grand.core.landmark import LandmarkQuestions
        from grand.prompts import load_prompt

        super().__init__(spec, base_dir, runtime, level)
        base = Path(base_dir) if base_dir else None
        self.prompt = load_prompt(spec.prompt_file, base) if spec.prompt_file else ""
        self.landmark = LandmarkQuestions(base) if spec.landmark else None

    def init_outputs(self, batch, n):
        columns.fill(batch, caption_column(self.spec.name))
        if self.landmark is not None:
            columns.fill(batch, "landmark")

    def run(self, batch, rows, images):
        imgs = [images[i] for i in rows]
        captions = self.model.generate(imgs, [self.prompt] * len(rows))
        for i, caption in zip(rows, captions):
            batch[caption_column(self.spec.name)][i] = caption
        if self.landmark is not None:
            for i, result in zip(rows, self._landmarks(imgs)):
                batch["landmark"][i] = Landmark(**result)

    def _landmarks(self, imgs) -> list[dict]:
        from grand.core.landmark import landmark_result

        q = self.landmark
        first = self.model.generate(imgs, [q.first_question()] * len(imgs))
        category = [q.parse_category(a) for a in first]
        ask = [k for k, c in enumerate(category) if c is not None]
        second: list[str | None] = [None] * len(imgs)
        if ask:
            answers = self.model.generate([imgs[k] for k in ask], [q.second_question(category[k]) for k in ask])
            for k, a in zip(ask, answers):
                second[k] = a
        return [landmark_result(a1, a2) for a1, a2 in zip(first, second)]


# -- phrases ----------------------------------------------------------------------------------------
class PhraseStep(BatchStep):
    """spaCy noun phrases of every short caption (an actor: the spaCy model loads once)."""

    name = role = "phrases"
    level = 2
    timed = True

    def __init__(self, phrases: PhraseSpec, captioners: list[str], runtime: StepRuntime | None = None):
        from grand.core.phrases import PhraseExtractor

        super().__init__(runtime)
        self.extractor = PhraseExtractor(phrases.spacy_model, phrases.method)
        self.captioners = captioners

    def init_outputs(self, batch, n):
        columns.fill(batch, "phrases")

    def run_rows(self, batch, rows):
        found: dict[int, dict] = {i: {} for i in rows}
        for name in self.captioners:
            texts = [str(batch[caption_column(name)][i]) for i in rows]
            for i, phrases in zip(rows, self.extractor.extract_many(texts)):
                found[i][name] = list(phrases)
        for i in rows:
            batch["phrases"][i] = found[i]


def unique_phrases(phrases: dict) -> list[tuple[str, str]]:
    """(phrase text, head-noun lemma) of a row ({captioner: [Phrase]}), every caption's phrases,
    first occurrence kept."""
    seen: dict[str, str] = {}
    for found in (phrases or {}).values():
        for p in found:
            seen.setdefault(p.text, p.head_lemma)
    return list(seen.items())


# -- phrase grounding -------------------------------------------------------------------------------
class PhraseGroundStep(ModelStep):
    """Boxes for every phrase (one query each), linked to level-1 objects by the reference rules."""

    role = "phrase_grounder"
    level = 2
    spec: PhraseGroundingSpec

    def init_outputs(self, batch, n):
        columns.fill(batch, "grounding")

    def run(self, batch, rows, images):
        from grand.core.grounding import PhraseBoxes, apply_phrase_grounding

        phrases = {i: unique_phrases(batch["phrases"][i]) for i in rows}
        results = self.model.ground([images[i] for i in rows], [[t for t, _ in phrases[i]] for i in rows])
        for i, per_phrase in zip(rows, results):
            boxes = [
                PhraseBoxes(phrase=text, label=lemma, boxes=np.asarray(det.xyxy, np.float32).reshape(-1, 4),
                            scores=np.asarray(det.scores, np.float32).reshape(-1))
                for (text, lemma), det in zip(phrases[i], per_phrase)
            ]
            res = apply_phrase_grounding(
                batch["objects"][i], batch["floating_objects"][i], boxes,
                match_iou=self.spec.match_iou, source_model=self.spec.name,
            )
            batch["objects"][i] = res.objects
            batch["floating_objects"][i] = res.floating_objects
            batch["grounding"][i] = {"links": res.links, "boxes": res.boxes, "relationships": res.relationships}


class AssembleLevel2(AssembleStep):
    """CPU step: one complete level-2 record per row (grand.schema.Level2Row), in column `record_l2`."""

    name = role = "assemble_level2"
    level = 2
    reads = ("grounding", "landmark")

    def __init__(self, captioners: list[str], provenance_rows: list[dict], runtime: StepRuntime | None = None):
        super().__init__(provenance_rows, runtime)
        self.captioners = captioners

    def run_rows(self, batch, rows):
        from grand.core.grounding import caption_details
        from grand.schema import GroundedPhrase, Level2Row, ModelProvenance, Relationship, ShortCaption

        for i in rows:
            row = Level2Row(
                image_id=str(batch["image_id"][i]), shard=str(batch["shard"][i]), index=int(batch["index"][i]),
                status=str(batch["status"][i]), error=str(batch["error"][i]) or None,
                provenance=[ModelProvenance(**p) for p in self.provenance_rows],
            )
            if batch["status"][i] == "ok":
                grounding = batch["grounding"][i] or {"links": {}, "boxes": {}, "relationships": []}
                phrases = batch["phrases"][i]
                for name in self.captioners:
                    caption = str(batch[caption_column(name)][i])
                    spans = [(p.text, p.start, p.end) for p in phrases.get(name, [])]
                    details = caption_details(caption, spans, grounding["links"], grounding["boxes"])
                    row.short_captions.append(ShortCaption(name, caption, [GroundedPhrase(**d) for d in details]))
                row.landmark = batch["landmark"][i]
                row.relationships = [Relationship(**r) for r in grounding["relationships"]]
                row.objects = batch["objects"][i]
                row.floating_objects = batch["floating_objects"][i]
            batch["record_l2"][i] = dataclasses.asdict(row)
