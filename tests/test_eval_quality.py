"""`grand eval objects` and `grand eval captions` on hand-built outputs and ground truths whose
metric values are worked out by hand; AP equals pycocotools' COCOeval run directly."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from export_fixtures import H, W, box_mask, build_output, write_level
from grand.cli.main import main
from grand.core.rle import encode_mask
from grand.eval.captions import evaluate_captions
from grand.eval.categories import CategoryVocabulary, load_ground_truth, match_images
from grand.eval.objects import evaluate_objects, greedy_match
from grand.io.output import OutputDir
from grand.schema import CaptionAttempt, DenseCaption, Level2Row, Level3Row, ShortCaption

CATS = [{"id": 1, "name": "dog"}, {"id": 2, "name": "sports ball"}, {"id": 3, "name": "person"},
        {"id": 4, "name": "cat"}, {"id": 5, "name": "car"}, {"id": 6, "name": "frisbee"},
        {"id": 7, "name": "dining table"}, {"id": 8, "name": "hot dog"}]


def _ann(i, image_id, cat, box, mask=None):
    x1, y1, x2, y2 = box
    seg = encode_mask(mask if mask is not None else box_mask(box))
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0, "segmentation": seg}


def gt_file(tmp_path):
    """a.png: dog, ball, car (missed), frisbee (only a floating object finds it);
    b.png (an error row): a dog; c.png: person (GT mask = left half of the box), and a GT dog where
    grand says "cat"."""
    half = box_mask((10, 5, 20, 35))
    anns = [_ann(1, 1, 1, (4, 4, 20, 20)), _ann(2, 1, 2, (24, 20, 32, 28)), _ann(3, 1, 5, (40, 0, 48, 8)),
            _ann(4, 1, 6, (2, 28, 10, 34)), _ann(5, 2, 1, (5, 5, 15, 15)),
            _ann(6, 3, 3, (10, 5, 30, 35), mask=half), _ann(7, 3, 1, (35, 25, 45, 35))]
    images = [{"id": i, "file_name": n, "width": W, "height": H} for i, n in [(1, "a.png"), (2, "b.png"), (3, "c.png")]]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return path


@pytest.fixture()
def output(tmp_path):
    return build_output(tmp_path)


def test_vocabulary_maps_plurals_synonyms_and_longest_phrases():
    vocab = CategoryVocabulary(CATS + [{"id": 9, "name": "traffic_light", "synonyms": ["stoplight"]}])
    assert vocab.category_of("dogs") == 1
    assert vocab.category_of("ball") == 2  # EVAL_SYNONYMS
    assert vocab.category_of("man") == 3 and vocab.category_of("people") == 3  # SYNONYMS, irregular plural
    assert vocab.category_of("wooden table") == 7  # head word, then synonym
    assert vocab.category_of("traffic lights") == 9 and vocab.category_of("stoplight") == 9  # LVIS names
    assert vocab.category_of("tree") is None
    assert vocab.mentions("Two men eat hot dogs at a table; a dog watches.") == [
        ("men", 3), ("hot dogs", 8), ("table", 7), ("dog", 1)]
    mapped = CategoryVocabulary(CATS, label_map={"pup": "dog"})
    assert mapped.category_of("pup") == 1
    with pytest.raises(ValueError, match="not a category"):
        CategoryVocabulary(CATS, label_map={"pup": "wolf"})


def test_images_match_by_file_name_or_unique_base_name(tmp_path):
    truth = load_ground_truth(gt_file(tmp_path))
    assert match_images(truth, ["a.png", "sub/c.png", "x/b.png", "y/b.png", "z.png"]) == {"a.png": 1, "sub/c.png": 3}


def test_greedy_match_takes_highest_score_first():
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], float)
    gts = np.array([[0, 0, 10, 10]], float)
    assert greedy_match(preds, np.array([0.2, 0.9]), gts) == [(1, 0, pytest.approx(0.9))]


def test_eval_objects_values_by_hand(output, tmp_path):
    r = evaluate_objects(str(output), gt_file(tmp_path))
    assert r["images"] == {"gt": 3, "evaluated": 3, "error_rows": 1, "gt_without_output": 0, "output_without_gt": 0}
    assert r["gt_instances"] == 7
    assert r["predictions"] == {"objects": 4, "floating": 2}  # level 2 objects: a: dog, ball + tree, frisbee
    # objects: a dog, a ball, c person, c "cat" (a GT dog) = 4 of 7; the floating frisbee adds one.
    assert r["recall50"] == {"objects": pytest.approx(4 / 7), "objects_and_floating": pytest.approx(5 / 7)}
    # masks: dog 1, ball 1, frisbee 1, person 0.5 (GT mask is half its box); the cat has no mask.
    assert r["mask_iou"]["pairs"] == 4 and r["mask_iou"]["mean"] == pytest.approx(3.5 / 4)
    # labels: the "cat" on a GT dog is the one wrong of five pairs.
    assert r["label_accuracy"] == {"final": pytest.approx(0.8), "any_candidate": pytest.approx(0.8), "pairs": 5}
    assert r["per_model"]["det_a"] == {"voted": 6, "true_positives": 5, "precision": pytest.approx(5 / 6),
                                       "only_model_true_positives": 0}
    assert r["unmapped"]["top_labels"] == {"tree": 1}
    # A perfect class-agnostic detector of boxes here would be AP50 1; ours misses two GT of seven.
    assert r["box"]["class_agnostic"]["AP50"] < 1


def _coco_direct(gt_path, dets, iou_type, cats=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        if cats == "agnostic":
            for a in gt.dataset["annotations"]:
                a["category_id"] = 1
            gt.dataset["categories"] = [{"id": 1, "name": "object"}]
            gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0], ev.stats[1]


def test_eval_objects_ap_equals_cocoeval_run_directly(output, tmp_path):
    gt_path = gt_file(tmp_path)
    r = evaluate_objects(str(output), gt_path)
    # The detections written out by hand: (image, category, xyxy); every score is 0.8.
    boxes = [(1, 1, (4, 4, 20, 20)), (1, 2, (24, 20, 32, 28)), (1, 6, (2, 28, 10, 34)),
             (3, 3, (10, 5, 30, 35)), (3, 4, (35, 25, 45, 35))]  # a tree maps to no category
    dets = [{"image_id": i, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": 0.8}
            for i, c, b in boxes]
    ap, ap50 = _coco_direct(gt_path, dets, "bbox")
    assert (r["box"]["class_aware"]["AP"], r["box"]["class_aware"]["AP50"]) == (pytest.approx(ap), pytest.approx(ap50))
    # Class-agnostic: the tree too, in grand's order (objects, then floating objects): with tied
    # scores, COCOeval's stable sort keeps the order given, and the order decides the matching.
    agn = dets[:2] + [{"image_id": 1, "category_id": 1, "bbox": [34, 2, 12, 28], "score": 0.8}] + dets[2:]
    agn = [{**d, "category_id": 1} for d in agn]
    ap, ap50 = _coco_direct(gt_path, agn, "bbox", cats="agnostic")
    assert r["box"]["class_agnostic"]["AP"] == pytest.approx(ap) and r["box"]["class_agnostic"]["AP50"] == pytest.approx(ap50)
    masks = [{"image_id": d["image_id"], "category_id": d["category_id"], "score": 0.8,
              "segmentation": encode_mask(box_mask(b))} for d, (_, _, b) in zip(dets, boxes) if d["image_id"] != 3
             or d["category_id"] == 3]  # the cat has no mask
    ap, ap50 = _coco_direct(gt_path, masks, "segm")
    assert r["segm"]["class_aware"]["AP"] == pytest.approx(ap) and r["segm"]["class_aware"]["AP50"] == pytest.approx(ap50)


def test_eval_objects_cli_and_clear_errors(output, tmp_path, capsys):
    gt_path = gt_file(tmp_path)
    assert main(["eval", "objects", str(output), "--gt", str(gt_path)]) == 0
    text = capsys.readouterr().out
    assert "recall@0.5: objects 57.1%, objects + floating 71.4%" in text and "box class-aware" in text
    assert main(["eval", "objects", str(output), "--gt", str(gt_path), "--json", "--level", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["predictions"] == {"objects": 4, "floating": 1}  # level 1 has no frisbee
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"id": 1, "file_name": "zzz.jpg", "width": 1, "height": 1}],
                                 "annotations": [], "categories": CATS}))
    assert main(["eval", "objects", str(output), "--gt", str(other)]) == 2
    assert "matches a file_name" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["eval", "objects", str(output), "--gt", str(tmp_path / "bad.json")]) == 2
    assert "lacks images, annotations, categories" in capsys.readouterr().err


def test_lvis_drops_detections_of_unannotated_categories(output, tmp_path):
    data = json.loads(gt_file(tmp_path).read_text())
    for im in data["images"]:
        im["coco_url"] = "http://images.cocodataset.org/val2017/" + im.pop("file_name")
        im["neg_category_ids"] = []
        im["not_exhaustive_category_ids"] = []
    for a in data["annotations"]:
        a.pop("iscrowd")
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    r = evaluate_objects(str(output), path)
    assert r["ground_truth"] == "lvis" and r["images"]["evaluated"] == 3
    # c.png's "cat" is of a category not annotated for c.png: dropped, not a false positive.
    assert r["box"]["class_aware"]["detections"] == 4


# -- captions ----------------------------------------------------------------------------------------
def test_eval_captions_counts_constructed_hallucinations(output, tmp_path):
    """Levels 2-3 rewritten with captions whose mentions are known: GT a.png = dog, ball, car, frisbee;
    c.png = person, dog."""
    out = OutputDir(str(output))
    gt_path = gt_file(tmp_path)
    a1 = "A dog and two cats play with a ball."                     # dog ok, cat halluc., ball ok
    a2 = "Dogs near a car and a table."                             # dog, car ok; table halluc.
    c1 = "A woman with her dog and a cat on a couch."               # person, dog ok; cat; couch not in GT vocab
    c2 = "A man."                                                   # person ok
    write_level(out, 2, "images-00000", [
        Level2Row("a.png", "images-00000", 0, "ok", short_captions=[ShortCaption("blip2", a1), ShortCaption("llava", a2)]),
        Level2Row("b.png", "images-00000", 1, "error", error="decode: x",
                  short_captions=[ShortCaption("blip2", "a hot dog")]),  # error rows never count
    ])
    write_level(out, 2, "images-00001", [
        Level2Row("c.png", "images-00001", 0, "ok", short_captions=[ShortCaption("blip2", c1), ShortCaption("llava", c2)]),
    ])
    first, final = "A dog, a cat and a hot dog by a table.", "A dog with a ball beside a car."
    write_level(out, 3, "images-00000", [
        Level3Row("a.png", "images-00000", 0, "ok", dense_caption=DenseCaption(
            final, True, [], [CaptionAttempt(first, passed=False, missing=["cat", "hot dog", "table"]),
                              CaptionAttempt(final, passed=True)])),
        Level3Row("b.png", "images-00000", 1, "error", error="decode: x"),
    ])
    write_level(out, 3, "images-00001", [
        Level3Row("c.png", "images-00001", 0, "ok", dense_caption=DenseCaption(
            "A person and a car.", False, [], [CaptionAttempt("A person and a car.", passed=False)])),
    ])
    r = evaluate_captions(str(output), gt_path)
    blip, llava = r["short"]["blip2"], r["short"]["llava"]
    assert (blip["captions"], blip["mentions"], blip["hallucinated"], blip["captions_with_hallucination"]) == (2, 6, 2, 2)
    assert blip["CHAIR_i"] == pytest.approx(2 / 6) and blip["CHAIR_s"] == 1.0
    assert blip["top_hallucinated"] == {"cats": 1, "cat": 1}
    assert (llava["mentions"], llava["hallucinated"], llava["CHAIR_s"]) == (4, 1, 0.5)
    # coverage: llava names dog, car of a's 4 GT categories and person of c's 2: 3 / 6.
    assert llava["coverage"] == pytest.approx(0.5)
    d = r["dense"]
    # first attempts: a: dog ok, cat, hot dog, table halluc.; c: person ok, car halluc. -> 4 of 6
    assert (d["first_attempt"]["mentions"], d["first_attempt"]["hallucinated"]) == (6, 4)
    # final: a: dog, ball, car ok; c: person ok, car halluc. -> 1 of 5
    assert (d["final"]["mentions"], d["final"]["hallucinated"], d["final"]["CHAIR_s"]) == (5, 1, 0.5)
    assert (d["verified"]["captions"], d["verified"]["hallucinated"]) == (1, 0)
    assert (d["flagged"]["captions"], d["flagged"]["hallucinated"]) == (1, 1)
    assert (d["regenerated_first"]["hallucinated"], d["regenerated_final"]["hallucinated"]) == (3, 0)


def test_eval_captions_cli(output, tmp_path, capsys):
    assert main(["eval", "captions", str(output), "--gt", str(gt_file(tmp_path))]) == 0
    text = capsys.readouterr().out
    assert "short: blip2" in text and "dense: kept (final)" in text


# -- report ------------------------------------------------------------------------------------------
def test_report_is_one_self_contained_page(output, tmp_path, capsys):
    import re
    from html.parser import HTMLParser

    dest = tmp_path / "site" / "report.html"
    assert main(["report", str(output), "--gt", str(gt_file(tmp_path)), "--dest", str(dest)]) == 0
    page = dest.read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]  # nothing to fetch
    assert page.count("<svg") >= 5  # labels, objects, mask areas, top labels, attempts, error reasons
    for title in ("Distinct labels per image", "Objects per image", "Mask area / image area",
                  "Dense caption verification per attempt", "Error reasons per level",
                  "Objects against ground truth", "Caption hallucination (CHAIR)", "recall@0.5, objects + floating"):
        assert title in page, title
    assert "71.4%" in page  # recall with floating objects, as `grand eval objects` says
    assert page.count("<figure>") == 2  # a.png and c.png rendered, embedded

    class Strict(HTMLParser):  # the page parses, every tag it opens is closed
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br", "line", "rect", "link", "input"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if tag in ("line", "rect"):
                return
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()

    parser = Strict()
    parser.feed(page)
    assert parser.stack == []


def test_chart_bins_by_hand():
    from grand.viz import charts

    assert charts.integer_bins({0: 2, 3: 1}) == (["0", "1", "2", "3"], [2, 0, 0, 1])
    labels, bins = charts.integer_bins({0: 1, 59: 1, 30: 5}, max_bins=30)  # step 2
    assert labels[:2] == ["0-1", "2-3"] and len(bins) == 30 and bins[15] == 5 and bins[29] == 1
    assert [charts.log_bin(v) for v in (1e-6, 1e-4, 0.01, 0.5, 1.0)] == [0, 0, 6, 11, 11]
    svg = charts.bar_chart("t <&>", ["a"], {"x": [3], "y": [1]})
    assert svg.count("<rect") == 4 and "t &lt;&amp;&gt;" in svg  # two bars, two legend swatches; escaped
