"""Level-2 pipeline steps: short captions + landmark (VLM actors), phrases (spaCy actor), phrase
grounding (detector actor), then assembly of the level-2 record.

They extend the level-1 row format (grand.runtime.stages): the same ids, image bytes and
`status`/`error`, `objects` / `floating_objects` as JSON, plus one JSON/text column per result:
`cap__<captioner>`, `landmark`, `phrases`, `grounding`. Level 2 runs either right after level 1 in
the same pipeline or over a committed level-1 shard (read_level1_rows joins it with the images).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from grand.config import CaptionerSpec, InputSpec, PhraseGroundingSpec, PhraseSpec
from grand.runtime import columns
from grand.runtime.batch import AssembleStep, BatchStep, StepRuntime
from grand.runtime.stages import ModelStep, read_shard_rows

CAPTION_PREFIX = "cap__"


def caption_column(captioner: str) -> str:
    return f"{CAPTION_PREFIX}{captioner}"


# -- reading level 1 back ---------------------------------------------------------------------------
def read_level1_rows(row: dict, input_cfg: InputSpec, output_uri: str) -> Iterator[dict]:
    """flat_map step of a level-2-only run: one shard's image rows joined, by index, with its
    committed level-1 rows. A level-1 error row stays an error row (level 2 has nothing to add)."""
    from grand.io.output import OutputDir
    import pyarrow.parquet as pq

    out = OutputDir(output_uri)
    shard = json.loads(row["shard_spec"])["name"]
    with out.fs.open(out.shard_path(1, shard), "rb") as f:
        level1 = {r["index"]: r for r in pq.read_table(f, columns=["index", "status", "error", "objects", "floating_objects"]).to_pylist()}
    for img in read_shard_rows(row, input_cfg):
        l1 = level1.get(img["index"])
        if l1 is None:
            img.update(status="error", error=f"level 1: no row {img['index']} in shard {shard}", image=b"")
        elif l1["status"] != "ok":
            img.update(status="error", error=l1["error"] or "level 1 failed", image=b"")
        img["objects"] = json.dumps(l1["objects"] if l1 else [])
        img["floating_objects"] = json.dumps(l1["floating_objects"] if l1 else [])
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
                batch["landmark"][i] = json.dumps(result)

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
                found[i][name] = [dataclasses.asdict(p) for p in phrases]
        for i in rows:
            batch["phrases"][i] = json.dumps(found[i])


def unique_phrases(phrases_json: str) -> list[tuple[str, str]]:
    """(phrase text, head-noun lemma) of a row, every caption's phrases, first occurrence kept."""
    seen: dict[str, str] = {}
    for phrases in json.loads(phrases_json or "{}").values():
        for p in phrases:
            seen.setdefault(p["text"], p["head_lemma"])
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
                json.loads(batch["objects"][i]), json.loads(batch["floating_objects"][i]), boxes,
                match_iou=self.spec.match_iou, source_model=self.spec.name,
            )
            batch["objects"][i] = json.dumps(res.objects)
            batch["floating_objects"][i] = json.dumps(res.floating_objects)
            batch["grounding"][i] = json.dumps(
                {"links": res.links, "boxes": res.boxes, "relationships": res.relationships}
            )


class AssembleLevel2(AssembleStep):
    """CPU step: one complete level-2 record per row (JSON, typed by the sink), in column `record_l2`."""

    name = role = "assemble_level2"
    level = 2
    reads = ("grounding", "landmark")

    def __init__(self, captioners: list[str], provenance_rows: list[dict], runtime: StepRuntime | None = None):
        super().__init__(provenance_rows, runtime)
        self.captioners = captioners

    def run_rows(self, batch, rows):
        from grand.core.grounding import caption_details
        from grand.schema import GroundedPhrase, Landmark, Level2Row, ModelProvenance, ObjectRecord, Relationship, ShortCaption

        for i in rows:
            row = Level2Row(
                image_id=str(batch["image_id"][i]), shard=str(batch["shard"][i]), index=int(batch["index"][i]),
                status=str(batch["status"][i]), error=str(batch["error"][i]) or None,
                provenance=[ModelProvenance(**p) for p in self.provenance_rows],
            )
            if batch["status"][i] == "ok":
                grounding = json.loads(batch["grounding"][i]) or {"links": {}, "boxes": {}, "relationships": []}
                phrases = json.loads(batch["phrases"][i])
                for name in self.captioners:
                    caption = str(batch[caption_column(name)][i])
                    spans = [(p["text"], p["start"], p["end"]) for p in phrases.get(name, [])]
                    details = caption_details(caption, spans, grounding["links"], grounding["boxes"])
                    row.short_captions.append(ShortCaption(name, caption, [GroundedPhrase(**d) for d in details]))
                landmark = json.loads(batch["landmark"][i])
                row.landmark = Landmark(**landmark) if landmark else None
                row.relationships = [Relationship(**r) for r in grounding["relationships"]]
                row.objects = [ObjectRecord(**o) for o in json.loads(batch["objects"][i])]
                row.floating_objects = [ObjectRecord(**o) for o in json.loads(batch["floating_objects"][i])]
            batch["record_l2"][i] = json.dumps(dataclasses.asdict(row))
