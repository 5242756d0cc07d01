"""Text-conditioned adapters: open-vocabulary detectors (GroundingDINO, OWLv2) and zero-shot taggers
(CLIP, SigLIP), run on tiny random-weight checkpoints built offline.

Random weights give random boxes, so the checks are about plumbing: one result per image, boxes in
the ORIGINAL image's pixels (a 2x image gives 2x boxes), labels that are queries, thresholds,
top-k, chunking of long GroundingDINO prompts, and the errors users see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sample_images import shapes_image
from grand.config import DetectorSpec, TaggerSpec
from grand.core.detections import Detections
from grand.models.base import Detector, Tagger
from grand.models.loading import ModelUnavailableError
from grand.models.registry import build_model
from grand.models.tiny import build_tiny
from grand.models.tiny.text_models import build_siglip

ROOT = Path(__file__).resolve().parents[1]
TINYCOCO_IMAGES = ROOT.parent / "shared" / "data" / "tinycoco" / "images"
VOCAB = ROOT / "pipelines" / "vocab" / "concepts.txt"
# w x h: 640x427 landscape, 427x640 portrait, 352x230 small
REAL_IMAGES = ["000000397133.jpg", "000000006818.jpg", "000000037777.jpg"]
DETECTORS = ["grounding-dino", "owlv2"]
QUERIES = ["person", "dog", "traffic light", "red box", "teddy bear"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    out = [shapes_image()]
    if TINYCOCO_IMAGES.is_dir():
        out += [Image.open(TINYCOCO_IMAGES / name).convert("RGB") for name in REAL_IMAGES]
    else:  # the same sizes without ../shared
        out += [shapes_image(640, 427), shapes_image(427, 640), shapes_image(352, 230)]
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-text")
    for arch in ("grounding-dino", "owlv2", "clip"):
        build_tiny(arch, root / arch)
    build_siglip(root / "siglip")
    return root


def _detector(tiny_dir: Path, arch: str, **options) -> Detector:
    spec = DetectorSpec(name=arch, checkpoint=str(tiny_dir / arch), queries="tags", batch_size=2, options=options)
    return build_model(spec)


def _all_boxes(tiny_dir: Path, arch: str) -> Detector:
    """Keeps every box the model makes, so comparisons do not depend on thresholds."""
    return _detector(tiny_dir, arch, box_threshold=0.0, text_threshold=0.0, max_detections=10_000)


# -- tiny checkpoints ----------------------------------------------------------------------------


def test_tiny_tokenizers_keep_the_ids_the_models_rely_on(tiny_dir):
    from transformers import AutoProcessor

    bert = AutoProcessor.from_pretrained(tiny_dir / "grounding-dino").tokenizer
    # GroundingDINO's modeling code hard-codes these bert-base-uncased ids as phrase delimiters
    assert bert.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?", "[PAD]"]) == [101, 102, 1012, 1029, 0]
    assert bert.unk_token_id not in bert("traffic light. teddy bear.")["input_ids"]
    for arch in ("owlv2", "clip"):
        tok = AutoProcessor.from_pretrained(tiny_dir / arch).tokenizer
        ids = tok(["person", "a photo of a dog."])["input_ids"]
        # OWL drops queries whose first id is 0; special tokens live at the end of the vocabulary
        assert all(row[0] == tok.bos_token_id > 0 for row in ids)
        assert tok.eos_token_id == len(tok) - 1 and tok.unk_token_id not in ids[0][1:-1]


# -- detectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", DETECTORS)
def test_detector_outputs(tiny_dir, images, arch):
    det = _detector(tiny_dir, arch, box_threshold=0.0, text_threshold=0.0)
    assert isinstance(det, Detector) and det.open_vocabulary
    batch = images + [images[0]]
    queries = [QUERIES] * len(batch)
    queries[1] = []  # an image without tags, between others in the same model batch
    queries[-1] = ["Dog ", "dog", "  RED   box"]  # normalised: lower-case, single spaces, distinct
    out = det.detect(batch, queries)
    assert len(out) == len(batch)
    for dets, image, q in zip(out, batch, queries):
        assert isinstance(dets, Detections) and dets.model == arch
        assert dets.xyxy.dtype == np.float32 and dets.xyxy.shape == (len(dets), 4)
        assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
        assert (dets.xyxy[:, :2] >= 0).all() and (dets.xyxy[:, 2] <= image.width).all()
        assert (dets.xyxy[:, 3] <= image.height).all()
        assert (dets.xyxy[:, 2:] > dets.xyxy[:, :2]).all()
        assert (np.diff(dets.scores) <= 0).all()  # best first
        assert len(dets) <= 100  # the default max_detections
        if q:
            assert len(dets) > 0
            assert set(dets.labels) <= {" ".join(x.lower().split()) for x in q}
    assert len(out[1]) == 0
    assert set(out[-1].labels) <= {"dog", "red box"}
    no_queries = det.detect([images[0], images[0]], None)
    assert len(no_queries) == 2 and all(len(d) == 0 and d.model == arch for d in no_queries)


@pytest.mark.parametrize("arch", DETECTORS)
def test_detector_boxes_are_in_original_pixels(tiny_dir, images, arch):
    """The same picture at 2x gives the same boxes at 2x coordinates (deterministic model).

    Labels are not compared: resampling changes the pixels a little, and random weights are
    sensitive enough to swap the best query of a box."""
    det = _all_boxes(tiny_dir, arch)
    for image in (images[0], images[-1]):
        big = image.resize((image.width * 2, image.height * 2), Image.BICUBIC)
        small_dets, big_dets = det.detect([image, big], [QUERIES, QUERIES])
        assert len(small_dets) > 0
        for k in range(min(10, len(small_dets))):
            err = np.abs(big_dets.xyxy - 2 * small_dets.xyxy[k]).max(axis=1).min()
            assert err < 0.02 * max(big.size), (k, small_dets.xyxy[k], err)


def test_owlv2_padding_to_square_is_undone(tiny_dir):
    """OWLv2 pads images to a square (grey) before predicting; boxes of a wide image must match those
    of the same image padded by hand, so the padding does not leak into the coordinates."""
    det = _all_boxes(tiny_dir, "owlv2")
    wide = shapes_image(320, 200)
    square = Image.new("RGB", (320, 320), (128, 128, 128))
    square.paste(wide, (0, 0))
    a, b = det.detect([wide, square], [QUERIES, QUERIES])
    b = b[(b.xyxy[:, 1] < 200)]
    b.xyxy[:, 3] = np.minimum(b.xyxy[:, 3], 200)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(np.sort(a.xyxy, axis=0), np.sort(b.xyxy, axis=0), atol=1.0)


@pytest.mark.parametrize("arch", DETECTORS)
def test_detector_thresholds_and_max_detections(tiny_dir, images, arch):
    every = _all_boxes(tiny_dir, arch).detect(images[:1], [QUERIES])[0]
    assert len(every) > 5
    cut = float(np.median(every.scores))
    kept = _detector(tiny_dir, arch, box_threshold=cut, text_threshold=0.0).detect(images[:1], [QUERIES])[0]
    assert len(kept) == int((every.scores > cut).sum()) and (kept.scores > cut).all()
    top3 = _detector(tiny_dir, arch, box_threshold=0.0, text_threshold=0.0, max_detections=3)
    top3 = top3.detect(images[:1], [QUERIES])[0]
    np.testing.assert_allclose(top3.scores, every.scores[:3])
    again = _all_boxes(tiny_dir, arch).detect(images[:1], [QUERIES])[0]
    np.testing.assert_array_equal(again.xyxy, every.xyxy)


def test_grounding_dino_splits_long_prompts(tiny_dir, images):
    import torch

    det = _detector(tiny_dir, "grounding-dino", box_threshold=0.0, text_threshold=0.0, max_detections=10_000)
    concepts = [c for c in VOCAB.read_text().splitlines() if c and not c.startswith("#")][:200]
    chunks = det._chunks(concepts)
    assert len(chunks) > 1 and [c for chunk in chunks for c in chunk] == concepts
    tok = det.processor.tokenizer
    limit = det.model.config.max_text_len
    for chunk in chunks:
        ids = tok(". ".join(chunk) + ".")["input_ids"]
        assert len(ids) <= limit
        # every query maps back to exactly its own tokens
        spans = det._query_spans(torch.tensor(ids), torch.ones(len(ids)), len(chunk))
        assert [tok.decode([ids[i] for i in s.tolist()]) for s in spans] == chunk
    out = det.detect(images[:1], [concepts])[0]
    assert set(out.labels) <= set(concepts)
    # boxes of every chunk are merged: the image gets labels beyond the first prompt's queries
    assert set(out.labels) - set(chunks[0])


def test_detector_rejects_unknown_option(tiny_dir):
    with pytest.raises(ValueError, match="box_treshold"):
        _detector(tiny_dir, "owlv2", box_treshold=0.2)


@pytest.mark.parametrize("kind", ["detector", "tagger"])
def test_missing_checkpoint_names_the_model(tmp_path, kind):
    missing = str(tmp_path / "no-such-checkpoint")
    if kind == "detector":
        spec = DetectorSpec(name="my_owl", checkpoint=missing, queries="tags")
    else:
        spec = TaggerSpec(name="my_owl", checkpoint=missing, vocabulary=str(VOCAB))
    with pytest.raises(ModelUnavailableError, match="my_owl") as err:
        build_model(spec)
    assert "no-such-checkpoint" in str(err.value)


# -- taggers -------------------------------------------------------------------------------------


def _tagger(tiny_dir: Path, arch: str, **fields) -> Tagger:
    spec = TaggerSpec(name=arch, checkpoint=str(tiny_dir / arch), batch_size=2, **fields)
    return build_model(spec, ROOT / "pipelines")  # vocabulary "vocab/concepts.txt" resolves here


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_tagger_outputs(tiny_dir, images, arch):
    tagger = _tagger(tiny_dir, arch, top_k=7)
    assert isinstance(tagger, Tagger)
    vocabulary = set(tagger.concepts)
    assert len(vocabulary) > 500 and "person" in vocabulary and "teddy bear" in vocabulary
    out = tagger.tag(images)
    assert len(out) == len(images)
    for tags in out:
        assert len(tags) == 7
        assert all(isinstance(t, str) and t in vocabulary and 0.0 <= s <= 1.0 for t, s in tags)
        scores = [s for _, s in tags]
        assert scores == sorted(scores, reverse=True) and len({t for t, _ in tags}) == 7
    alone = tagger.tag(images[:1])[0]  # batch composition does not change the result
    assert [t for t, _ in alone] == [t for t, _ in out[0]]
    np.testing.assert_allclose([s for _, s in alone], [s for _, s in out[0]], rtol=1e-5)


def test_clip_scores_are_a_softmax_and_siglip_scores_are_not(tiny_dir, images):
    clip = _tagger(tiny_dir, "clip", top_k=2000)
    assert sum(s for _, s in clip.tag(images[:1])[0]) == pytest.approx(1.0, abs=1e-4)
    siglip = _tagger(tiny_dir, "siglip", top_k=2000)
    assert sum(s for _, s in siglip.tag(images[:1])[0]) > 10  # independent sigmoids


def test_tagger_min_score(tiny_dir, images):
    scores = [s for _, s in _tagger(tiny_dir, "siglip", top_k=50).tag(images[:1])[0]]
    cut = scores[10]
    tags = _tagger(tiny_dir, "siglip", top_k=50, min_score=cut).tag(images[:1])[0]
    assert len(tags) == sum(s >= cut for s in scores) and all(s >= cut for _, s in tags)


def test_tagger_vocabulary_file(tiny_dir, tmp_path, images):
    (tmp_path / "v.txt").write_text("# animals\nDog\n\ncat\ndog\n  hot   dog \n")
    tagger = _tagger(tiny_dir, "clip", vocabulary=str(tmp_path / "v.txt"), top_k=10)
    assert tagger.concepts == ["dog", "cat", "hot dog"]
    assert {t for t, _ in tagger.tag(images[:1])[0]} == {"dog", "cat", "hot dog"}  # top_k > vocabulary
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*vocabulary"):
        _tagger(tiny_dir, "clip", vocabulary="vocab/missing.txt")


def test_tagger_prompt_template_option(tiny_dir):
    plain = _tagger(tiny_dir, "clip", vocabulary=str(VOCAB))
    bare = _tagger(tiny_dir, "clip", vocabulary=str(VOCAB), options={"prompt_template": "{concept}"})
    assert not np.allclose(plain.text_embeds.numpy(), bare.text_embeds.numpy())
    with pytest.raises(ValueError, match="prompt_template"):
        _tagger(tiny_dir, "clip", options={"prompt_template": "a photo"})


def test_grounding_dino_boxes_match_the_processor_post_processing(tiny_dir, images):
    """Our per-query scoring must not move boxes: they are the ones transformers' own grounded
    post-processing gives for the same outputs and the original (h, w) (non-square images)."""
    import torch

    det = _all_boxes(tiny_dir, "grounding-dino")
    for image in (images[0], images[-2]):  # 320x200 landscape, 427x640 portrait (when present)
        ours = det.detect([image], [QUERIES])[0]
        inputs = det.processor(images=[image], text=[". ".join(QUERIES) + "."], return_tensors="pt")
        with torch.inference_mode():
            outputs = det.model(**inputs)
        ref = det.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(image.height, image.width)]
        )[0]["boxes"].numpy()
        ref = np.clip(ref, 0, [image.width, image.height, image.width, image.height])
        assert len(ours) > 0
        for box in ours.xyxy:
            assert np.abs(ref - box).max(axis=1).min() < 1e-3


@pytest.mark.parametrize("arch", ["grounding-dino", "owlv2"])
def test_an_images_boxes_do_not_depend_on_its_batch_mates(tiny_dir, arch):
    """Ray batches differ between runs (a resumed run regroups images): results must not change.
    GroundingDINO pads a batch to its largest image, so it batches only images of one size."""
    detector = _all_boxes(tiny_dir, arch)
    target, other = shapes_image(320, 200), shapes_image(500, 260)
    queries = ["cat", "dog", "person"]
    alone = detector.detect([target], [queries])[0]
    mixed = detector.detect([other, target, other], [["car"], queries, queries])[1]
    assert len(alone) == len(mixed) > 0
    assert list(alone.labels) == list(mixed.labels)
    np.testing.assert_allclose(alone.xyxy, mixed.xyxy, atol=1e-2)
    np.testing.assert_allclose(alone.scores, mixed.scores, atol=1e-5)


def test_grounding_dino_handles_extreme_aspect_ratios(tiny_dir):
    """A 256x4 strip gave fewer feature tokens than queries ('selected index k out of range')."""
    detector = _all_boxes(tiny_dir, "grounding-dino")
    strips = [Image.new("RGB", (256, 4), (90, 120, 30)), Image.new("RGB", (3, 300), (10, 20, 30))]
    results = detector.detect(strips, [["cat", "dog"]] * 2)
    assert len(results) == 2
    for strip, dets in zip(strips, results):  # random weights: boxes may all fall in the padding
        assert (dets.xyxy[:, [0, 2]] <= strip.width).all() and (dets.xyxy[:, [1, 3]] <= strip.height).all()
