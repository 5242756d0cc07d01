"""Level-3 and level-4 pipeline steps: scene graph (CPU task), the LLM step (dense caption with
chain-of-thought verification, extra context), caption grounding (spaCy actor), then assembly of the
level-3 and level-4 records.

These levels need no pixels: they read the level-2 record, either computed in the same pipeline
(column `record_l2`, typed as the level-2 shard stores it) or read back from a committed level-2
shard (read_level2). Columns added (grand.runtime.columns): `scene_graph` (grand.schema.SceneGraph),
`dense_caption` (the verified grand.schema.DenseCaption and its attempts), `details` (its grounded
phrases), `context` (the level-4 paragraph), and
`error_l3` / `error_l4`: an LLM failure is recorded per image and level, and never touches the
`status` of the level-2 row it came from, so levels 1-2 are never lost because of an LLM.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from grand.config import Level3Spec, Level4Spec, LLMSpec, SceneGraphSpec
from grand.runtime import columns
from grand.runtime.batch import AssembleStep, BatchStep, StepRuntime, ok_rows
from grand.runtime.stages import load_actor_model, shard_specs
from grand.schema import LEVEL2_SCHEMA

log = logging.getLogger("grand.stages")


# -- reading level 2 back ---------------------------------------------------------------------------
def read_level2(batch, output_uri: str):
    """Read step of a run that starts at level 3 or 4: the committed level-2 rows of each planned
    shard, with the shard's rows as column `record_l2` (the same column a level-2 step hands on,
    taken as Arrow, unparsed). No images are read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from grand.io.output import OutputDir

    out = OutputDir(output_uri)
    for spec in shard_specs(batch):
        with out.fs.open(out.shard_path(2, spec.name), "rb") as f:
            table = pq.read_table(f).cast(LEVEL2_SCHEMA)
        yield columns.Batch(pa.table({
            "image_id": table.column("image_id"), "shard": table.column("shard"), "index": table.column("index"),
            "status": table.column("status"), "error": pc.fill_null(table.column("error"), ""),
            "record_l2": table.to_struct_array(),
            "step_seconds": pa.array([{}] * table.num_rows, type=columns.column("step_seconds").arrow_type),
        })).to_arrow()


class KeepColumns:
    """CPU step: only the columns levels 3-4 read (nothing after level 2 needs pixels). A projection
    of whole columns, with no per-row work that could fail: no BatchStep isolation needed."""

    name = role = "drop_images"
    level = 3
    KEEP = ("image_id", "shard", "index", "status", "error", "step_seconds", "record_l2", "record_l1")

    def __init__(self, runtime: StepRuntime | None = None):
        pass  # the step signature every plan entry is built with; a projection needs no runtime

    def __call__(self, batch):
        table = columns.to_table(batch)
        return table.select([k for k in table.column_names if k in self.KEEP])


# -- scene graph ------------------------------------------------------------------------------------
class SceneGraphStep(BatchStep):
    """CPU step: the scene graph of every ok row (pure logic)."""

    name = role = "scene_graph"
    level = 3
    error_columns = ("error_l3",)

    def __init__(self, spec: SceneGraphSpec, runtime: StepRuntime | None = None):
        super().__init__(runtime)
        self.spec = spec

    def init_outputs(self, batch, n):
        columns.fill(batch, "scene_graph")

    def run_rows(self, batch, rows):
        from grand.core.scene_graph import build_scene_graph

        for i in rows:
            batch["scene_graph"][i] = build_scene_graph(batch["record_l2"][i], self.spec)


# -- the LLM step -----------------------------------------------------------------------------------
class LLMStep(BatchStep):
    """One LLM actor doing the LLM work of levels 3 and 4 for a batch: the verified dense caption
    (`level3` given) and the extra-context paragraph (`level4` given). When both levels use the same
    LLM, one actor pool (one engine, one set of weights on the GPU) serves both.

    Requests of the whole batch go to the backend together (vLLM schedules them; the HTTP backend
    keeps `max_concurrency` in flight). A request that still fails after the backend's retries
    becomes that image's error at that level only (error_l3 / error_l4, never `status`)."""

    role = "llm"
    timed = True

    def __init__(self, spec: LLMSpec, level3: Level3Spec | None = None, level4: Level4Spec | None = None,
                 base_dir: str | None = None, runtime: StepRuntime | None = None):
        base = Path(base_dir) if base_dir else None
        self.spec, self.name, self.level3, self.level4 = spec, spec.name, level3, level4
        self.level = 3 if level3 is not None else 4
        # a failure is an error at the levels this LLM serves only
        self.error_columns = (("error_l3",) if level3 is not None else ()) + (("error_l4",) if level4 is not None else ())
        super().__init__(runtime)
        if level3 is not None:
            from grand.core.dense_caption import CaptionChecker
            from grand.core.llm_prompts import load_level3_prompt

            self.caption_template = load_level3_prompt(level3.prompt_file, base)
            self.checker = CaptionChecker.from_spec(level3.verification, base)
        if level4 is not None:
            from grand.core.llm_prompts import load_level4_prompt

            self.context_template = load_level4_prompt(level4.prompt_file, base)
        self.llm = load_actor_model(spec, base_dir)

    def init_outputs(self, batch, n):
        columns.ensure(batch, (["dense_caption"] if self.level3 is not None else [])
                       + (["context"] if self.level4 is not None else []))

    def run_rows(self, batch: dict, rows: list[int]) -> None:
        from grand.models.base import LLMError

        records = {i: batch["record_l2"][i] for i in rows}
        if self.level3 is not None:  # rows whose scene graph failed have their level-3 error already
            l3_rows = [i for i in rows if not batch["error_l3"][i]]
            if l3_rows:
                self._dense_captions(batch, l3_rows, records, LLMError)
        if self.level4 is not None:
            from grand.core.llm_prompts import extra_context_conversation

            conversations = [extra_context_conversation(records[i], self.context_template, self.level4.max_objects) for i in rows]
            seed = self.spec.generation.seed
            for i, reply in zip(rows, self.llm.chat(conversations, seeds=[seed] * len(rows))):
                if isinstance(reply, Exception):
                    batch["error_l4"][i] = f"llm '{self.spec.name}': {reply}"
                else:
                    batch["context"][i] = reply

    def _dense_captions(self, batch: dict, rows: list[int], records: dict, LLMError) -> None:
        from grand.core.dense_caption import write_verified_captions
        from grand.core.llm_prompts import dense_caption_conversation
        from grand.core.verification import scene_terms

        conversations, terms = [], []
        for i in rows:
            conversations.append(dense_caption_conversation(batch["scene_graph"][i], self.caption_template))
            terms.append(scene_terms(records[i], self.level3.scene_graph.include_floating))
        outcomes = write_verified_captions(
            self.llm, conversations, terms, self.checker,
            max_attempts=self.level3.verification.max_attempts if self.level3.verification.enabled else 1,
            base_seed=self.spec.generation.seed,
        )
        for i, outcome in zip(rows, outcomes):
            if isinstance(outcome, Exception):
                batch["error_l3"][i] = f"llm '{self.spec.name}': {outcome}"
            else:
                batch["dense_caption"][i] = outcome.to_dense_caption()


# -- grounding the dense caption --------------------------------------------------------------------
class CaptionGroundStep(BatchStep):
    """The dense caption's phrases linked to objects (reference three passes; a spaCy actor)."""

    name = role = "caption_grounding"
    level = 3
    timed = True
    reads = ("dense_caption",)
    error_columns = ("error_l3",)

    def __init__(self, level3: Level3Spec, spacy_model: str, runtime: StepRuntime | None = None):
        from grand.core.caption_grounding import CaptionGrounder

        super().__init__(runtime)
        self.grounder = CaptionGrounder(spacy_model, level3.grounding)

    def init_outputs(self, batch, n):
        columns.fill(batch, "details")

    def rows(self, batch):
        return [i for i in ok_rows(batch) if not batch["error_l3"][i] and batch["dense_caption"][i] is not None]

    def run_rows(self, batch, rows):
        from grand.schema import GroundedPhrase

        captions = [batch["dense_caption"][i].caption for i in rows]
        records = [batch["record_l2"][i] for i in rows]
        for i, found in zip(rows, self.grounder.ground(captions, records)):
            batch["details"][i] = [GroundedPhrase(**d) for d in found]


# -- assembly ---------------------------------------------------------------------------------------
def _level_status(batch: dict, i: int, error_col: str) -> tuple[str, str | None]:
    """A row is ok at level 3/4 when its level-2 row was ok and the level's LLM work succeeded."""
    if batch["status"][i] != "ok":
        return "error", str(batch["error"][i]) or "level 2 failed"
    err = str(batch[error_col][i])
    return ("error", err) if err else ("ok", None)


class AssembleLevel3(AssembleStep):
    """CPU step: one complete level-3 record per row (grand.schema.Level3Row), in column `record_l3`."""

    name = role = "assemble_level3"
    level = 3
    error_columns = ("error_l3",)

    def run_rows(self, batch, rows):
        from grand.schema import DenseCaption, Level3Row, ModelProvenance

        for i in rows:
            status, error = _level_status(batch, i, "error_l3")
            row = Level3Row(image_id=str(batch["image_id"][i]), shard=str(batch["shard"][i]), index=int(batch["index"][i]),
                            status=status, error=error, provenance=[ModelProvenance(**p) for p in self.provenance_rows])
            if batch["status"][i] == "ok":
                row.scene_graph = batch["scene_graph"][i]
            if status == "ok":
                dc = batch["dense_caption"][i]
                row.dense_caption = DenseCaption(caption=dc.caption, verified=bool(dc.verified),
                                                 details=batch["details"][i], attempts=dc.attempts)
            batch["record_l3"][i] = dataclasses.asdict(row)


class AssembleLevel4(AssembleStep):
    """CPU step: one complete level-4 record per row (grand.schema.Level4Row), in column `record_l4`."""

    name = role = "assemble_level4"
    level = 4
    error_columns = ("error_l4",)

    def run_rows(self, batch, rows):
        from grand.schema import Level4Row, ModelProvenance

        for i in rows:
            status, error = _level_status(batch, i, "error_l4")
            row = Level4Row(image_id=str(batch["image_id"][i]), shard=str(batch["shard"][i]), index=int(batch["index"][i]),
                            status=status, error=error, provenance=[ModelProvenance(**p) for p in self.provenance_rows],
                            additional_context=str(batch["context"][i]) if status == "ok" else None)
            batch["record_l4"][i] = dataclasses.asdict(row)
