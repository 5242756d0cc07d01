"""The authors' original packages as backends: segment-anything / segment-anything-hq, groundingdino,
detectron2, on tiny random-weight checkpoints built by each package's own modeling code.

Each group skips, naming the missing package, where it is not installed (requirements/backends.txt;
detectron2 from ../shared/wheels). The parity tests run the same random weights through our
transformers adapter and through the original package on real photos (tinycoco): this checks our
transformers pre- and post-processing against the authors' code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINYCOCO
from sample_images import odd_images
from grand.config import DetectorSpec, PhraseGroundingSpec, SegmenterSpec
from grand.core.detections import Detections, assign_detector_masks
from grand.core.rle import decode_mask, encode_masks
from grand.models.loading import ModelUnavailableError
from grand.models.registry import build_model
from grand.models.tiny import build_tiny


def _needs(module: str, install: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"package '{module}' is not installed ({install})"
    )


needs_sam = _needs("segment_anything", "pip install -r requirements/backends.txt")
needs_sam_hq = _needs("segment_anything_hq", "pip install -r requirements/backends.txt")
needs_gdino = _needs("groundingdino", "pip install --no-deps groundingdino-py==0.4.0")
needs_d2 = _needs("detectron2", "the detectron2 wheel from ../shared/wheels: make install")
needs_photos = pytest.mark.skipif(not TINYCOCO.is_dir(), reason="../shared (tinycoco photos) is not beside the checkout")

PHOTOS = ["000000397133.jpg", "000000037777.jpg", "000000006818.jpg"]  # 640x427, 352x230, 427x640


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    if not TINYCOCO.is_dir():
        return odd_images()[:3]
    return [Image.open(TINYCOCO / "images" / name).convert("RGB") for name in PHOTOS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-original")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny(arch, root / arch)
        return built[arch]

    return get


def _random_boxes(image: Image.Image, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = image.size
    x1, y1 = rng.uniform(0, w * 0.6, n), rng.uniform(0, h * 0.6, n)
    bw, bh = rng.uniform(0.2, 0.4, n) * w + 1, rng.uniform(0.2, 0.4, n) * h + 1
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)


# -- segment-anything / segment-anything-hq ----------------------------------------------------------
@pytest.mark.parametrize("backend,arch", [
    pytest.param("segment-anything", "sa-sam", marks=needs_sam),
    pytest.param("segment-anything-hq", "sa-sam-hq", marks=needs_sam_hq),
])
def test_sam_backends_mask_every_box_at_image_size(tiny, photos, backend, arch):
    model = build_model(SegmenterSpec(name="sam", backend=backend, checkpoint=str(tiny(arch)),
                                      options={"boxes_per_batch": 3}))
    boxes = [_random_boxes(im, 7, seed=i) for i, im in enumerate(photos)]
    boxes[1] = np.zeros((0, 4), np.float32)  # an image with nothing to mask
    masks = model.segment(photos, boxes)
    for im, b, m in zip(photos, boxes, masks):
        assert m.dtype == bool and m.shape == (len(b), im.height, im.width)
    # chunks of 3 boxes against one embedding give the masks of one chunk of all boxes (up to
    # float rounding at mask borders)
    whole = build_model(SegmenterSpec(name="sam", backend=backend, checkpoint=str(tiny(arch)),
                                      options={"boxes_per_batch": 64}))
    assert _iou(whole.segment(photos[:1], boxes[:1])[0], masks[0]).min() >= 0.999


@needs_sam
def test_sam_checkpoint_errors_name_the_fix(tiny, tmp_path):
    weights = tmp_path / "my_sam.pth"
    weights.write_bytes((tiny("sa-sam") / "sam_tiny.pth").read_bytes())  # no sam_config.json beside it
    with pytest.raises(ModelUnavailableError, match="model_type"):
        build_model(SegmenterSpec(name="sam", backend="segment-anything", checkpoint=str(weights)))
    # an official architecture that does not fit the weights is refused, not half-loaded
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        build_model(SegmenterSpec(name="sam", backend="segment-anything", checkpoint=str(weights),
                                  options={"model_type": "vit_b"}))


class Payload:
    """Any pickled object: weights-only loading must refuse to construct it."""


@needs_sam
def test_checkpoints_that_need_unpickling_are_refused_unless_trusted(tiny, tmp_path):
    import torch

    from grand.models.original_packages import load_weights

    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "extra": Payload()}, path)
    spec = SegmenterSpec(name="sam", backend="segment-anything", checkpoint=str(path))
    with pytest.raises(ModelUnavailableError, match="trust_checkpoint"):
        load_weights(path, spec)
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(ModelUnavailableError, match="pickle"):
        load_weights(pkl, spec)
    assert isinstance(load_weights(path, spec, trust_pickle=True)["extra"], Payload)


@needs_sam
@needs_photos
def test_segment_anything_matches_transformers_sam_on_the_same_weights(tiny, photos, tmp_path):
    """segment-anything's SamPredictor vs our transformers adapter (SamModel + SamProcessor), same
    random weights mapped by transformers' conversion rules: per-mask IoU >= 0.99 on real photos."""
    from grand.models.sam_convert import to_transformers

    original = build_model(SegmenterSpec(name="sam", backend="segment-anything", checkpoint=str(tiny("sa-sam"))))
    arch = json.loads((tiny("sa-sam") / "sam_config.json").read_text())
    hf_dir = to_transformers(original.model, arch, tmp_path / "hf-sam")
    converted = build_model(SegmenterSpec(name="hf_sam", checkpoint=str(hf_dir)))
    for i, image in enumerate(photos):
        boxes = _random_boxes(image, 8, seed=i)
        a, b = original.segment([image], [boxes])[0], converted.segment([image], [boxes])[0]
        assert a.any(axis=(1, 2)).all()  # not trivially equal empty masks
        assert _iou(a, b).min() >= 0.99, _iou(a, b)


@needs_sam_hq
@needs_photos
def test_segment_anything_hq_matches_transformers_sam_hq_on_the_same_weights(tiny, photos, tmp_path):
    """The same for HQ-SAM. It failed (IoU 0.65-0.79) until grand/compat/transformers_sam_hq.py fixed
    transformers' SamHQMaskDecoder, which upscaled the image embeddings from before its transformer."""
    from grand.models.sam_convert import to_transformers

    original = build_model(SegmenterSpec(name="sam", backend="segment-anything-hq", checkpoint=str(tiny("sa-sam-hq"))))
    arch = json.loads((tiny("sa-sam-hq") / "sam_config.json").read_text())
    hf_dir = to_transformers(original.model, arch, tmp_path / "hf-sam-hq", hq=True)
    converted = build_model(SegmenterSpec(name="hf_sam_hq", checkpoint=str(hf_dir)))
    for i, image in enumerate(photos):
        boxes = _random_boxes(image, 8, seed=i)
        a, b = original.segment([image], [boxes])[0], converted.segment([image], [boxes])[0]
        assert a.any(axis=(1, 2)).all()
        assert _iou(a, b).min() >= 0.99, _iou(a, b)


# -- groundingdino ----------------------------------------------------------------------------------
_GD_OPTS = {"image_size": 224, "max_size": 320}


@pytest.fixture(scope="module")
def gdino(tiny):
    if importlib.util.find_spec("groundingdino") is None:
        pytest.skip("package 'groundingdino' is not installed (pip install --no-deps groundingdino-py==0.4.0)")
    return build_model(DetectorSpec(name="gdino", backend="groundingdino", queries="tags",
                                    checkpoint=str(tiny("sa-groundingdino")), options=_GD_OPTS))


def test_groundingdino_detector_labels_are_queries_and_boxes_lie_in_the_image(gdino, photos):
    queries = [["person", "dog", "red car"], [], ["Cat.", "cat", "traffic light"]]
    found = gdino.detect(photos, queries)
    assert len(found[0]) > 0 and len(found[1]) == 0  # no queries: nothing to look for
    allowed = [{"person", "dog", "red car"}, set(), {"cat", "traffic light"}]
    for im, dets, ok in zip(photos, found, allowed):
        assert isinstance(dets, Detections) and dets.model == "gdino"
        assert set(dets.labels) <= ok
        assert (dets.xyxy[:, [0, 1]] >= 0).all() and (dets.xyxy[:, 2] <= im.width).all()
        assert (dets.xyxy[:, 3] <= im.height).all() and (np.diff(dets.scores) <= 0).all()


def test_groundingdino_splits_queries_that_overflow_the_text_encoder(gdino, photos):
    many = [f"object number {i}" for i in range(120)]  # ~480 tokens: two captions
    chunks = gdino._chunks(many)
    assert len(chunks) >= 2 and sum(chunks, []) == many
    assert all(sum(gdino._n_tokens(q) + 1 for q in c) + 2 <= gdino.max_text_len for c in chunks)
    assert set(gdino.detect(photos[:1], [many])[0].labels) <= set(many)


def test_groundingdino_phrase_grounder_answers_each_phrase(tiny, photos):
    if importlib.util.find_spec("groundingdino") is None:
        pytest.skip("package 'groundingdino' is not installed")
    grounder = build_model(PhraseGroundingSpec(
        name="gd_phrases", backend="groundingdino", checkpoint=str(tiny("sa-groundingdino")),
        score_threshold=0.05, max_boxes_per_phrase=2, options=_GD_OPTS,
    ))
    phrases = [["a red car", "A red car", "..."], ["the dog"]]
    out = grounder.ground(photos[:2], phrases)
    assert [len(p) for p in out] == [3, 1]
    assert len(out[0][2]) == 0  # nothing left to query
    for per_image, image_phrases in zip(out, phrases):
        for dets, phrase in zip(per_image, image_phrases):
            assert len(dets) <= 2 and all(label == phrase for label in dets.labels)
    assert np.array_equal(out[0][0].xyxy, out[0][1].xyxy)  # same text (case aside): same boxes


@needs_gdino
@needs_photos
def test_groundingdino_inputs_match_what_our_transformers_adapter_feeds(gdino, photos):
    """The authors' pre-processing and caption format vs our transformers adapter's, at the official
    800 / 1333, on real photos and on a 2:1 crop (whose width the 1333 cap sets: transformers rounds
    that side differently, authors_size corrects it): pixel tensors identical once as_the_authors()
    has switched the image processor to its PIL backend (transformers 5 loads the torch-tensor one,
    up to 1 grey level off), and the official caption "a . b ." tokenizes exactly as the adapter's
    "a. b."."""
    import groundingdino.datasets.transforms as T
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    from grand.models.gdino_original import _caption
    from grand.models.hf_open_vocab import _dino_text, as_the_authors, authors_size

    official = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                          T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    processor = GroundingDinoProcessor(  # what from_pretrained gives in transformers 5: the tensor backend
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}),
        tokenizer=gdino.tokenizer,
    )
    as_the_authors(processor)
    wide = photos[0].crop((0, 0, 640, 320))
    for image in [*photos, wide]:
        a = official(image, None)[0]
        b = processor(images=[image], text=["a."], return_tensors="pt", **authors_size(processor, image))["pixel_values"][0]
        assert a.shape == b.shape and float((a - b).abs().max()) == 0.0
    queries = ["person", "red car", "traffic light"]
    hf_text = ". ".join(_dino_text(q) for q in queries) + "."  # HFZeroShotDetector's prompt
    tok = gdino.tokenizer
    assert tok(_caption(queries))["input_ids"] == tok(hf_text)["input_ids"]


@needs_gdino
@needs_photos
def test_groundingdino_matches_transformers_grounding_dino_on_the_same_weights(gdino, tiny, photos, tmp_path):
    """The authors' GroundingDINO vs transformers' on the same random weights (grand.models.groundingdino_convert),
    each fed by its own backend's pre-processing, on real photos (one of them capped by max_size):

    1. model outputs: the same pixels and tokens; logits and boxes within float rounding (measured:
       logits <= 3e-6 apart, boxes identical). Before grand.compat.transformers_grounding_dino fixed
       transformers 5.19's text position ids and embeddings, logits differed by up to 3.6 and boxes by 0.9.
    2. each library's own post-processing (the package's `predict` rule: best token > box threshold,
       phrase of the tokens > text threshold; transformers' post_process_grounded_object_detection):
       the same boxes, scores and phrases, with one difference in the rule: transformers never puts
       [CLS] in a phrase, groundingdino-py 0.4.0 does when [CLS] scores above the text threshold (the
       later upstream GroundingDINO drops it as transformers does, and so does this comparison).
    3. our two backends' detectors: backend transformers scores a box by its query's own tokens,
       backend groundingdino (as the official predict) by its best token of the whole caption, '.' and
       [CLS] / [SEP] included. So every transformers detection is a groundingdino detection with the
       same box and label, scored the same or lower (lower only where the caption's best token was not
       one of the query's)."""
    import torch
    from groundingdino.util.utils import get_phrases_from_posmap

    from grand.models.gdino_original import _caption
    from grand.models.hf_open_vocab import authors_size
    from grand.models.preprocess import pad_to_aspect

    from grand.cli.main import main

    hf_dir = tmp_path / "hf-gdino"  # converted as a user does
    assert main(["models", "convert", "groundingdino", str(tiny("sa-groundingdino")), str(hf_dir),
                 "--image-size", str(_GD_OPTS["image_size"]), "--max-size", str(_GD_OPTS["max_size"])]) == 0
    converted = build_model(DetectorSpec(name="gdino", checkpoint=str(hf_dir), queries="tags"))
    queries = ["person", "red car", "traffic light", "dog", "cat"]
    caption = _caption(queries)
    text_threshold = 0.25
    lower = 0
    for image in photos:
        padded = pad_to_aspect(image)
        w, h = padded.size
        # 1. model outputs, each side through its own pre-processing
        pixels, _ = gdino.transform(padded, None)
        inputs = converted.processor(images=[padded], text=[". ".join(queries) + "."], return_tensors="pt",
                                     **authors_size(converted.processor, padded))
        assert torch.equal(inputs["pixel_values"][0], pixels)
        ids = gdino.tokenizer(caption)["input_ids"]
        assert inputs["input_ids"][0].tolist() == ids
        with torch.inference_mode():
            theirs = gdino.model(pixels[None], captions=[caption])
            ours = converted.model(**inputs)
        finite = torch.isfinite(theirs["pred_logits"])
        assert torch.equal(finite, torch.isfinite(ours.logits)) and int(finite[0, 0].sum()) == len(ids)
        assert float((theirs["pred_logits"][finite] - ours.logits[finite]).abs().max()) < 1e-4
        assert float((theirs["pred_boxes"] - ours.pred_boxes).abs().max()) < 1e-5

        # 2. the authors' predict() rule vs transformers' post-processing
        probs = theirs["pred_logits"][0].sigmoid()
        best = probs.max(dim=1).values
        # random weights score most boxes high: a box threshold halfway between the middle two scores
        # keeps half of them, far from any box's score
        middle = best.sort().values[len(best) // 2 - 1 : len(best) // 2 + 1]
        box_threshold = float(middle.mean())
        assert float(middle[1] - middle[0]) > 1e-4
        keep = best > box_threshold
        cx, cy, bw, bh = theirs["pred_boxes"][0][keep].unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * torch.tensor([w, h, w, h])
        posmaps = probs[keep] > text_threshold
        posmaps[:, 0] = False  # [CLS]: see the docstring
        phrases = [get_phrases_from_posmap(p, {"input_ids": ids}, gdino.tokenizer).replace(".", "") for p in posmaps]
        result = converted.processor.post_process_grounded_object_detection(
            ours, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold, target_sizes=[(h, w)]
        )[0]
        assert torch.allclose(result["boxes"], boxes, atol=1e-3)
        assert torch.allclose(result["scores"], best[keep], atol=1e-5)
        assert [label.replace(".", "") for label in result["text_labels"]] == phrases

        # 3. our two detectors on the same photo
        a, b = gdino.detect([image], [queries])[0], converted.detect([image], [queries])[0]
        assert len(b) > 0
        for box, score, label in zip(b.xyxy, b.scores, b.labels):
            match = np.abs(a.xyxy - box).max(axis=1) < 1e-3
            assert match.sum() == 1 and a.labels[match][0] == label, (box, label)
            assert score <= a.scores[match][0] + 1e-5
            lower += bool(score < a.scores[match][0] - 1e-5)
    assert lower < sum(len(gdino.detect([im], [queries])[0]) for im in photos)  # most scores are equal


@needs_gdino
def test_groundingdino_conversion_refuses_what_transformers_cannot_express(tiny, tmp_path, capsys):
    """A config transformers' GroundingDINO has no equivalent for is refused naming the setting (one
    decoder layer), a checkpoint key without a rule is an error rather than a weight left random,
    and the command line says what is missing."""
    import torch

    from grand.cli.main import main
    from grand.models.groundingdino_convert import convert_state_dict, read_config, transformers_config
    from grand.models.tiny.original_models import GDINO_CONFIG

    src = tiny("sa-groundingdino")
    settings = read_config(src / GDINO_CONFIG)
    state = torch.load(src / "groundingdino_tiny.pth", weights_only=True)["model"]
    with pytest.raises(ValueError, match="dec_layers"):
        transformers_config({**settings, "dec_layers": 1}, state, None)
    with pytest.raises(ValueError, match="no rule.*transformer.extra"):
        convert_state_dict({**state, "transformer.extra.weight": torch.zeros(1)})
    assert main(["models", "convert", "groundingdino", str(src / "groundingdino_tiny.pth"), str(tmp_path / "o"),
                 "--config", "nope.py"]) == 2
    assert "no such GroundingDINO config file: nope.py" in capsys.readouterr().err


# -- detectron2 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def d2(tiny):
    if importlib.util.find_spec("detectron2") is None:
        pytest.skip("package 'detectron2' is not installed (the wheel in ../shared/wheels: make install)")
    return build_model(DetectorSpec(name="maskrcnn", backend="detectron2", checkpoint=str(tiny("d2-mask-rcnn"))))


def test_detectron2_gives_coco_names_and_instance_masks(d2, photos):
    from grand.models.tiny.vision_models import COCO_LABELS

    found = d2.detect(photos[:2])
    assert all(len(d) > 0 for d in found)
    for im, dets in zip(photos, found):
        assert set(dets.labels) <= set(COCO_LABELS)
        assert len(dets.masks) == len(dets)
        mask = decode_mask(dets.masks[0])
        assert mask.shape == (im.height, im.width)
        # round trip through the detection column keeps the masks
        again = Detections.from_dict(json.loads(json.dumps(dets.to_dict())))
        assert list(again.masks) == list(dets.masks)


@needs_d2
def test_detectron2_lvis_names_and_pickle_refusal(tiny, tmp_path):
    from grand.models.d2_detector import readable_class_name

    assert readable_class_name("aerosol_can") == "aerosol can"
    assert readable_class_name("bow_(weapon)") == "bow"
    model = build_model(DetectorSpec(name="lvis", backend="detectron2", checkpoint=str(tiny("d2-mask-rcnn")),
                                     options={"class_names": "lvis", "masks": False}))
    assert len(model.class_names) == 1203 and "aerosol can" in model.class_names
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ModelUnavailableError, match="trust_checkpoint"):
        build_model(DetectorSpec(name="zoo", backend="detectron2", checkpoint=str(pkl),
                                 options={"config": str(tiny("d2-mask-rcnn") / "config.yaml")}))


def test_backend_roles_are_checked():
    with pytest.raises(ValueError, match="SegmenterSpec"):
        build_model(DetectorSpec(name="x", backend="segment-anything", checkpoint="x.pth"))
    with pytest.raises(ValueError, match="queries: tags"):
        build_model(DetectorSpec(name="x", backend="groundingdino", checkpoint="x.pth"))
    with pytest.raises(ValueError, match="closed-set"):
        build_model(DetectorSpec(name="x", backend="detectron2", queries="tags", checkpoint="x.pth"))


# -- detector masks before the segmenter (grand.core) ------------------------------------------------
def test_objects_take_the_mask_of_their_groups_detector():
    full = np.zeros((2, 40, 60), bool)
    full[0, 5:20, 5:30], full[1, 25:35, 40:55] = True, True
    rles = encode_masks(full)
    per_model = {
        "maskrcnn": Detections([[5, 5, 30, 20], [40, 25, 55, 35]], [0.9, 0.8], ["cat", "dog"], "maskrcnn", masks=rles),
        "owl": Detections([[0, 0, 10, 10]], [0.5], ["cat"], "owl"),  # no masks: never a source
    }
    from grand.schema import RLE, ObjectRecord

    def o(bbox, models, segmentation=None):
        return ObjectRecord(0, bbox, "cat", ["cat"], 0.9, models, segmentation=segmentation)

    objects = [
        o([6, 5, 30, 21], ["owl", "maskrcnn"]),  # maskrcnn voted with a close box
        o([0, 0, 10, 10], ["owl"]),  # no mask model in its group
        o([40, 25, 55, 35], ["maskrcnn"], RLE([40, 60], "x")),
    ]
    assert assign_detector_masks(objects, per_model, 0.65) == 1
    assert objects[0].segmentation == RLE(**rles[0]) and objects[0].segmentation_source == "maskrcnn"
    assert objects[1].segmentation is None
    assert objects[2].segmentation.counts == "x"  # an SA-1B mask already there is kept


def test_detections_masks_must_match_the_boxes():
    with pytest.raises(ValueError, match="masks"):
        Detections([[0, 0, 1, 1]], [0.5], ["a"], masks=[])


def test_models_list_shows_which_backends_are_installed(capsys):
    # the command itself, not main(): main() would import grand.runtime.pipeline under capsys, and its
    # Progress binds sys.stderr at import (a closed stream for the in-process run of the test below)
    from grand.cli.main import cmd_models_list

    assert cmd_models_list(None) == 0
    out = capsys.readouterr().out
    for backend, module in [("segment-anything", "segment_anything"), ("groundingdino", "groundingdino"),
                            ("detectron2", "detectron2")]:
        line = next(line for line in out.splitlines() if line.strip().startswith(backend + " "))
        assert ("not installed" not in line) == (importlib.util.find_spec(module) is not None), line


# -- pipelines/tiny-reference.yaml end to end ---------------------------------------------------------
@pytest.mark.slow
@needs_sam
@needs_gdino
@needs_d2
def test_tiny_reference_pipeline_masks_from_segment_anything_and_detectron2(ray_session, tmp_path):
    """`grand run pipelines/tiny-reference.yaml`: level-1 rows whose boxes come from detectron2 and
    groundingdino and whose masks come from detectron2's predicted masks or segment-anything."""
    import pyarrow.dataset as pads

    from conftest import ROOT
    from grand.config import load_config
    from grand.runtime.pipeline import RunOptions, run_pipeline

    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    sources = sorted((TINYCOCO / "images").glob("*.jpg"))[:3] if TINYCOCO.is_dir() else []
    for i, image in enumerate([Image.open(p) for p in sources] or odd_images()[:3]):
        image.convert("RGB").save(photos_dir / f"photo{i}.jpg")
    cfg = load_config(ROOT / "pipelines" / "tiny-reference.yaml")
    summary = run_pipeline(cfg, RunOptions(input=str(photos_dir), output=str(tmp_path / "out")))
    assert summary.images == 3 and summary.errors == 0, summary.text()
    rows = pads.dataset(str(tmp_path / "out" / "level1")).to_table().to_pylist()
    regions = [o for r in rows for o in r["objects"] + r["floating_objects"]]
    models = {m for o in regions for m in o["models"]}
    assert {"maskrcnn", "grounding_dino"} <= models
    sources_seen = {o["segmentation_source"] for o in regions}
    assert sources_seen <= {"maskrcnn", "sam"} and "sam" in sources_seen
    for row in rows:
        for o in row["objects"] + row["floating_objects"]:
            assert decode_mask(o["segmentation"]).shape == (row["height"], row["width"])
            # detectron2's own box carries its own mask; a group led by another model is masked by SAM
            expected = "maskrcnn" if "maskrcnn" in o["models"] else "sam"
            assert o["segmentation_source"] == expected
    provenance = {(p["name"], p["backend"]) for r in rows for p in r["provenance"]}
    assert {("maskrcnn", "detectron2"), ("grounding_dino", "groundingdino"), ("sam", "segment-anything")} <= provenance
