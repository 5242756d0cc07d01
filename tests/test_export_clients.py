"""The exports held to their clients' rules, written here in our own words (no client code copied):
GLaMM's GranD-f loader and GCG evaluator, GLaMM's GranD prepare scripts, a Sa2VA-family GranD loader,
LLaVA's LazySupervisedDataset. Over client_fixtures: an EXIF-rotated, an overlapping-object and a
tiny image."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from client_fixtures import PLAIN_DENSE, build_client_output, build_sa1b_tar_output, decoded
from client_rules import check_glamm_sample, prepare_scripts_read
from PIL import Image

from grand.export.images import SKIP_ROTATED, SKIP_SMALL, input_file_name, with_extension

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_client_output(tmp_path_factory.mktemp("clients"))


def test_gcg_with_images_dir_matches_the_loader(out: Path, tmp_path: Path) -> None:
    from grand.export.gcg import export_gcg

    images = tmp_path / "imgs"
    summary = export_gcg(str(out), str(tmp_path / "gcg.json"), images_dir=str(images))
    samples = json.loads((tmp_path / "gcg.json").read_text())
    assert [s["file_name"] for s in samples] == ["plain.jpg", "rot.png"]  # re-encoded upright as PNG
    assert summary["skipped_images"] == {SKIP_SMALL: 1} and summary["images_written"] == 2
    for s in samples:
        check_glamm_sample(s, images)
        with Image.open(images / s["file_name"]) as im:
            assert im.size == (s["width"], s["height"])
    plain = samples[0]
    assert plain["caption"] == PLAIN_DENSE
    g = plain["groundings"]
    assert list(g) == ["Two dogs", "a dog", "toy", "bed"]  # "a ghost": its only mask is empty
    assert g["Two dogs"]["object_ids"] == [1, 2] and len(g["Two dogs"]["rle_masks"]) == 1
    assert g["a dog"]["all_token_positives"] == [[PLAIN_DENSE.index("a dog"), PLAIN_DENSE.index("a dog") + 5],
                                                 [PLAIN_DENSE.rindex("a dog"), PLAIN_DENSE.rindex("a dog") + 5]]
    assert g["a dog"]["object_ids"] == [1, 2]
    # the upright pixels: the red box is on the left of the written image, where its mask is
    rot = np.asarray(Image.open(images / "rot.png").convert("RGB"))
    assert rot[20, 10, 0] > 180 and rot[20, 50, 0] < 60


def test_gcg_without_images_dir_skips_rotated_inputs(out: Path, tmp_path: Path) -> None:
    from grand.export.gcg import export_gcg

    summary = export_gcg(str(out), str(tmp_path / "gcg.jsonl"), source="short", min_side=0)
    samples = [json.loads(line) for line in (tmp_path / "gcg.jsonl").read_text().splitlines()]
    assert [s["file_name"] for s in samples] == ["plain.jpg", "tiny.png"]
    assert summary["skipped_images"] == {SKIP_ROTATED: 1}
    for s in samples:
        check_glamm_sample(s, out.parent / "images")


def test_file_names_keep_the_real_extension(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from grand.export.coco import export_coco
    from grand.export.gcg import export_gcg

    tar_out = build_sa1b_tar_output(tmp_path)  # images read from an SA-1B-style tar
    export_gcg(str(tar_out), str(tmp_path / "gcg.json"))
    assert [s["file_name"] for s in json.loads((tmp_path / "gcg.json").read_text())] == ["sa_223750.jpg"]
    export_coco(str(tar_out), str(tmp_path / "coco.json"))
    assert [i["file_name"] for i in COCO(str(tmp_path / "coco.json")).dataset["images"]] == ["sa_223750.jpg"]

    assert input_file_name({"image_id": "sa_223750", "source": "s3://b/sa_000000.tar::sa_223750.jpg"}) == "sa_223750.jpg"
    assert input_file_name({"image_id": "a/b.png", "source": "/in/a/b.png"}) == "a/b.png"
    assert with_extension("x.JPEG", ".jpg") == "x.JPEG" and with_extension("x.jpg", ".png") == "x.png"
    assert with_extension("shard/3", ".jpg") == "shard/3.jpg"


def test_no_export_counts_an_empty_mask(out: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from grand.export.coco import export_coco
    from grand.export.refexp import export_refexp
    from grand.export.regions import export_regions
    from grand.export.som import export_som

    export_coco(str(out), str(tmp_path / "coco.json"))
    coco = COCO(str(tmp_path / "coco.json"))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["area"] > 0
        assert ann["has_mask"] == (ann["grand_object_id"] != 5 or ann["image_id"] != 1)
    export_refexp(str(out), str(tmp_path / "refs.json"), min_side=0, check_images=False)
    refs = json.loads((tmp_path / "refs.json").read_text())
    ghost = [r for r in refs if r["category"] == "ghost"]
    assert ghost and ghost[0]["segmentation"] is None and ghost[0]["area"] > 0
    export_regions(str(out), str(tmp_path / "regions.json"), images_dir=str(tmp_path / "ri"))
    for rec in json.loads((tmp_path / "regions.json").read_text()):
        assert rec["file_name"] in ("plain.jpg", "rot.png")
        for r in rec["regions"]:
            assert r["segmentation"] is None or decoded(r["segmentation"]).any()
    summary = export_som(str(out), str(tmp_path / "som"), include_floating=True, radius=3)
    records = json.load(open(tmp_path / "som" / "som.json"))  # LLaVA's training code: json.load, a list
    assert summary["small_images"] == 1 and [r["id"] for r in records] == ["plain.jpg", "rot.jpg"]
    assert 5 in [m["object_id"] for m in records[0]["marks"]]  # the ghost gets a mark on its box
    for r in records:
        assert isinstance(r["image"], str) and r["conversations"][0]["from"] == "human"
        with Image.open(tmp_path / "som" / r["image"]) as im:
            assert im.size == (r["width"], r["height"])
    export_som(str(out), str(tmp_path / "som2"), records_name="som.jsonl")
    assert len((tmp_path / "som2" / "som.jsonl").read_text().splitlines()) == 2


def test_export_grand_is_read_by_the_prepare_scripts(out: Path, tmp_path: Path) -> None:
    from grand.export.released import export_grand

    summary = export_grand(str(out), str(tmp_path / "grand"), images_dir=str(tmp_path / "gi"))
    assert summary["images"] == summary["files"] == 2 and summary["skipped_images"] == {SKIP_SMALL: 1}
    assert sorted(p.name for p in (tmp_path / "grand").iterdir()) == ["plain.json", "rot.json"]
    seen = prepare_scripts_read(tmp_path / "grand")
    assert seen["images"] == 2 and seen["dense details"] == 6 and seen["short details"] == 2
    rot = json.load(open(tmp_path / "grand" / "rot.json"))
    assert list(rot) == ["rot.png"] and rot["rot.png"]["objects"][0]["segmentation_source"] == "SAM"
    plain = json.load(open(tmp_path / "grand" / "plain.json"))["plain.jpg"]
    assert plain["relationships"] == {"object_ids": [1, 2], "floating_object_ids": [5],
                                      "grounding": [{"phrase": "two dogs", "object_ids": [1, 2]},
                                                    {"phrase": "a ghost", "object_ids": [5]}]}
    assert plain["landmark"] == {"category": "", "fine_category": ""}
    assert plain["floating_objects"][0]["segmentation"] is None  # the all-zero mask
    assert plain["additional_context"] == "Context of plain.jpg."
    shards = export_grand(str(out), str(tmp_path / "per_shard"), per_shard=True, min_side=0, check_images=False)
    (f,) = (tmp_path / "per_shard").iterdir()
    assert f.name == "images-00000.json" and shards["files"] == 1
    assert list(json.load(open(f))) == ["plain.jpg", "rot.jpg", "tiny.png"]


# -- GLaMM's evaluation layout ------------------------------------------------------------------------
def glamm_metrics(gt_dir: Path, pred_dir: Path, split: str = "val") -> dict:
    """GLaMM's GCG metric definitions (eval/gcg/evaluate.py), in our own code, over its file layout:
    AP50 by COCOeval segm (category 1, score 1.0), mIoU by greedy one-to-one pairing per image, and
    recall pairing greedily by IoU until the first pair failing IoU >= 0.5 or similarity >= 0.5 (here
    every phrase pair is similar: the masks decide)."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_dir / f"{split}_gcg_coco_mask_gt.json"))
        caps = COCO(str(gt_dir / f"{split}_gcg_coco_caption_gt.json"))
    ids = [img["id"] for img in caps.dataset["images"]]
    dets = []
    for i in ids:
        p = json.load(open(pred_dir / f"{i}.json"))
        dets += [{"image_id": i, "category_id": 1, "segmentation": m, "score": 1.0} for m in p["pred_masks"]]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    def iou_matrix(a, b):
        m = np.zeros((len(a), len(b)))
        for r, x in enumerate(a):
            for c, y in enumerate(b):
                union = np.logical_or(x, y).sum()
                m[r, c] = np.logical_and(x, y).sum() / union if union else np.nan  # as numpy divides 0/0
        return m

    mious, tps, positives = [], 0, 0
    for i in ids:
        g = [mask_utils.decode(a["segmentation"]) for a in gt.loadAnns(gt.getAnnIds(imgIds=[i]))]
        d = [mask_utils.decode(a["segmentation"]) for a in dt.loadAnns(dt.getAnnIds(imgIds=[i]))]
        m, pairs = iou_matrix(d, g), []
        while m.size and np.max(m) > 0:
            r, c = np.unravel_index(np.argmax(m), m.shape)
            pairs.append(m[r, c])
            m = np.delete(np.delete(m, r, axis=0), c, axis=1)
        mious.append(np.mean(pairs) if pairs else 0.0)
        positives += len(caps.loadAnns(caps.getAnnIds(imgIds=[i]))[0]["labels"])
        m = iou_matrix(g, d)
        while m.size:
            r, c = np.unravel_index(np.argmax(m), m.shape)
            if m[r, c] < 0.5:  # NaN < 0.5 is False: why an empty GT mask would count as a hit
                break
            tps += 1
            m[r, :] = 0
            m[:, c] = 0
    return {"AP50": float(ev.stats[1]), "mIoU": float(np.mean(mious)), "recall": tps / positives}


def test_gcg_eval_layout_gives_glamms_numbers(out: Path, tmp_path: Path) -> None:
    from grand.eval.gcg import evaluate_gcg
    from grand.export.gcg import export_gcg
    from grand.export.gcg_eval import export_gcg_eval

    gt_file = tmp_path / "gt.json"
    export_gcg(str(out), str(gt_file), min_side=0, check_images=False)
    # predictions: one phrase's mask moved, one dropped, an empty mask added
    preds = json.loads(gt_file.read_text())
    plain = preds[0]["groundings"]
    moved = np.zeros(tuple(plain["toy"]["rle_masks"][0]["size"]), dtype=np.uint8, order="F")
    moved[30:40, 44:56] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(moved)
    plain["toy"]["rle_masks"] = [{"size": rle["size"], "counts": rle["counts"].decode("ascii")}]
    del plain["bed"]
    empty = mask_utils.encode(np.zeros_like(moved))
    plain["nothing"] = {"token_positives": [0, 3], "rle_masks": [{"size": empty["size"],
                                                                  "counts": empty["counts"].decode("ascii")}]}
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    oracle = export_gcg_eval(str(out), str(tmp_path / "oracle"), min_side=0, check_images=False)
    assert oracle["images"] == 3 and glamm_metrics(tmp_path / "oracle", tmp_path / "oracle" / "predictions") == {
        "AP50": 1.0, "mIoU": 1.0, "recall": 1.0}
    summary = export_gcg_eval(str(out), str(tmp_path / "ev"), split="test", predictions=str(tmp_path / "pred.json"),
                              min_side=0, check_images=False)
    assert summary["predicted_images"] == 3
    theirs = glamm_metrics(tmp_path / "ev", tmp_path / "ev" / "predictions", split="test")
    ours = evaluate_gcg(tmp_path / "pred.json", gt_file, similarity=lambda a, b: np.ones((len(a), len(b))),
                        captions=False, stop_at_first_miss=True)
    assert theirs["recall"] < 1 and theirs["mIoU"] < 1
    for k in ("AP50", "mIoU", "recall"):
        assert ours[k] == pytest.approx(theirs[k]), k
    with pytest.raises(ValueError, match="--captioner"):
        export_gcg_eval(str(out), str(tmp_path / "x"), source="short")


def test_eval_gcg_counts_no_empty_gt_mask(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    from grand.eval.gcg import evaluate_gcg

    full, none = np.ones((8, 8), np.uint8, order="F"), np.zeros((8, 8), np.uint8, order="F")
    rle = lambda m: {"size": [8, 8], "counts": mask_utils.encode(m)["counts"].decode("ascii")}  # noqa: E731
    gt = [{"file_name": "a.jpg", "caption": "a cat and a void", "groundings": {
        "a cat": {"token_positives": [0, 5], "rle_masks": [rle(full)]},
        "a void": {"token_positives": [10, 16], "rle_masks": [rle(none)]}}}]
    pred = [{"image_id": "a.jpg", "caption": "a cat and a void", "phrases": ["a cat", "a void"],
             "pred_masks": [rle(full), rle(none)]}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    r = evaluate_gcg(tmp_path / "pred.json", tmp_path / "gt.json", similarity=lambda a, b: np.ones((len(a), len(b))),
                     captions=False)
    assert (r["gt_phrases"], r["true_positives"], r["recall"]) == (1, 1, 1.0)


def test_the_commands_as_a_user_types_them(out: Path, tmp_path: Path, capsys) -> None:
    from grand.cli.main import main

    def run(*argv: str) -> dict:
        assert main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    gcg = run("export", "gcg", str(out), str(tmp_path / "g.json"), "--images", str(tmp_path / "i"), "--min-side", "0")
    assert gcg["images_written"] == 3 and gcg["skipped_images"] == {}
    assert run("export", "grand", str(out), str(tmp_path / "gr"), "--per-shard", "--no-image-check")["files"] == 1
    ev = run("export", "gcg-eval", str(out), str(tmp_path / "ev"), "--split", "test", "--images", str(tmp_path / "i2"))
    assert ev["images"] == 2 and (tmp_path / "ev" / "test_gcg_coco_caption_gt.json").is_file()
    assert sorted(p.name for p in (tmp_path / "ev" / "predictions").iterdir()) == ["plain.json", "rot.json"]
    assert run("export", "som", str(out), str(tmp_path / "som"), "--jsonl", "--mark-radius", "3")["images"] == 2
    assert (tmp_path / "som" / "som.jsonl").is_file()
