"""Build the adapter a spec asks for. Imports are lazy so that a CPU task never pays for torch."""

from __future__ import annotations

from pathlib import Path

from grand.config import (
    AttributeSpec,
    CaptionerSpec,
    DepthSpec,
    DetectorSpec,
    LabelChoiceSpec,
    LLMSpec,
    ModelSpec,
    PhraseGroundingSpec,
    SegmenterSpec,
    TaggerSpec,
)


# backend -> {spec type: "module:class"}: the authors' original packages (grand.models.original_packages)
ORIGINAL_BACKENDS: dict[str, dict[type, str]] = {
    "segment-anything": {SegmenterSpec: "grand.models.sam_original:OriginalSamSegmenter"},
    "segment-anything-hq": {SegmenterSpec: "grand.models.sam_original:OriginalSamSegmenter"},
    "groundingdino": {
        DetectorSpec: "grand.models.gdino_original:OriginalGroundingDinoDetector",
        PhraseGroundingSpec: "grand.models.gdino_original:OriginalGroundingDinoGrounder",
    },
    "detectron2": {DetectorSpec: "grand.models.d2_detector:Detectron2Detector"},
}


def _build_original(spec: ModelSpec, base_dir: Path | None):
    import importlib

    roles = ORIGINAL_BACKENDS[spec.backend]
    target = roles.get(type(spec))
    if target is None:
        kinds = ", ".join(t.__name__ for t in roles)
        raise ValueError(f"model '{spec.name}': backend '{spec.backend}' runs only {kinds}, not a {type(spec).__name__}")
    if isinstance(spec, DetectorSpec) and (spec.queries == "tags") != (spec.backend == "groundingdino"):
        hint = "queries: tags" if spec.backend == "groundingdino" else "queries: none (closed-set)"
        raise ValueError(f"model '{spec.name}': backend '{spec.backend}' detectors need {hint}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(spec, base_dir)


def build_model(spec: ModelSpec, base_dir: Path | None = None):
    """Return a loaded adapter (grand.models.base protocols) for `spec`.

    Detectors: backend `onnx-yolox` -> YOLOX on ONNX Runtime; backend `transformers` with
    `queries: tags` -> zero-shot (GroundingDINO, OWLv2, OWL-ViT), otherwise closed-set
    (RT-DETR, DETR, Deformable DETR, ...). Captioners and attributes: backend `vllm` -> vLLM's
    engine, otherwise transformers `generate`. Text LLMs (levels 3/4, grand.models.base.TextLLM):
    backend `vllm` -> vLLM's offline engine, `http` -> an OpenAI-compatible server, `transformers`
    -> transformers `generate`.
    """
    if spec.backend in ORIGINAL_BACKENDS:
        return _build_original(spec, base_dir)
    if isinstance(spec, LLMSpec):
        if spec.backend == "vllm":
            from grand.models.vllm_llm import VllmTextLLM

            return VllmTextLLM(spec, base_dir)
        if spec.backend == "http":
            from grand.models.http_llm import HttpTextLLM

            return HttpTextLLM(spec, base_dir)
        from grand.models.hf_llm import HFTextLLM

        return HFTextLLM(spec, base_dir)
    if spec.backend == "vllm":
        if isinstance(spec, (CaptionerSpec, AttributeSpec)):
            from grand.models.vllm_vlm import VllmVisionLanguageModel

            return VllmVisionLanguageModel(spec, base_dir)
        raise ValueError(
            f"model '{spec.name}': backend 'vllm' runs only vision-language models (level-2 captioners, "
            f"level-1 attributes) and the level-3/4 LLM, not a {type(spec).__name__}; use backend: transformers"
        )
    if isinstance(spec, TaggerSpec):
        from grand.models.hf_tagger import HFZeroShotTagger

        return HFZeroShotTagger(spec, base_dir)
    if isinstance(spec, DetectorSpec):
        if spec.backend == "onnx-yolox":
            from grand.models.onnx_yolox import YoloxOnnxDetector

            return YoloxOnnxDetector(spec, base_dir)
        if spec.queries == "tags":
            from grand.models.hf_open_vocab import HFZeroShotDetector

            return HFZeroShotDetector(spec, base_dir)
        from grand.models.hf_closed_set import HFClosedSetDetector

        return HFClosedSetDetector(spec, base_dir)
    if isinstance(spec, SegmenterSpec):
        from grand.models.hf_segmenter import HFSamSegmenter

        return HFSamSegmenter(spec, base_dir)
    if isinstance(spec, DepthSpec):
        from grand.models.hf_depth import HFDepthEstimator

        return HFDepthEstimator(spec, base_dir)
    if isinstance(spec, (CaptionerSpec, AttributeSpec)):
        from grand.models.hf_vlm import HFVisionLanguageModel

        return HFVisionLanguageModel(spec, base_dir)
    if isinstance(spec, PhraseGroundingSpec):
        from grand.models.hf_phrase_grounding import HFPhraseGrounder

        return HFPhraseGrounder(spec, base_dir)
    if isinstance(spec, LabelChoiceSpec):
        from grand.models.hf_label_choice import HFLabelScorer

        return HFLabelScorer(spec, base_dir)
    raise TypeError(f"no adapter for {type(spec).__name__} (model '{spec.name}', backend '{spec.backend}')")
