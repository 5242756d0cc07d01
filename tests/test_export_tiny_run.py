"""Every export of a real `--levels 1,2,3,4` run of pipelines/tiny.yaml (conftest's `combined`),
read back by the target's own loader: datasets for hf, json + pycocotools for the rest.
Random-weight models write odd captions; what is checked is that whatever they wrote survives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from mdvp_checks import check_gpt4roi, check_mdvp_sample, check_osprey
from client_rules import check_glamm_sample, prepare_scripts_read
from pycocotools import mask as mask_utils

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def check_exports(out: Path, tmp: Path, n_images: int) -> None:
    from grand.eval.gcg import evaluate_gcg
    from grand.export import export_gcg, export_hf, export_refexp, export_regions, export_som
    from grand.export.released import export_grand

    datasets = pytest.importorskip("datasets")
    export_hf(str(out), str(tmp / "hf"), embed_images=True)
    ds = datasets.load_dataset(str(tmp / "hf"), split="train", cache_dir=str(tmp / "cache"))
    assert len(ds) == n_images and isinstance(ds.features["image"], datasets.Image)
    level2 = {r["image_id"]: r for r in pads.dataset(str(out / "level2")).to_table().to_pylist()}
    level3 = {r["image_id"]: r for r in pads.dataset(str(out / "level3")).to_table().to_pylist()}
    for row in ds:
        if row["status"] != "ok":
            continue
        assert row["image"].size == (row["width"], row["height"])
        assert row["objects"] == level2[row["image_id"]]["objects"]
        assert row["dense_caption"] == level3[row["image_id"]]["dense_caption"]

    n_samples = 0
    for source, captioner in (("dense", None), ("short", "blip2"), ("short", None)):
        dest = tmp / f"gcg_{source}_{captioner}.json"
        export_gcg(str(out), str(dest), source=source, captioner=captioner, images_dir=str(tmp / "img"))
        samples = json.loads(dest.read_text())
        assert "img4.jpg" not in {s["image_id"] for s in samples}  # 40 x 30: under the minimum side
        n_samples += len(samples)
        for s in samples:
            check_glamm_sample(s, tmp / "img")  # raw image size = mask size, 0/1 targets, clean spans
            if s["image_id"] == "img1.jpg":
                assert s["file_name"] == "img1.png"  # EXIF-rotated input: its upright pixels, re-encoded
        if samples and (source == "dense" or captioner):  # one sample per image: a GT for grand eval gcg
            r = evaluate_gcg(dest, dest, similarity=lambda a, b: np.ones((len(a), len(b))), captions=False)
            assert r["AP50"] == 1.0 and r["mIoU"] == 1.0 and r["recall"] == 1.0
    assert n_samples > 0  # the random models' short captions ground some phrases

    grand = export_grand(str(out), str(tmp / "grand"), images_dir=str(tmp / "img"))
    assert prepare_scripts_read(tmp / "grand")["images"] == grand["images"] > 0
    export_refexp(str(out), str(tmp / "refs.jsonl"))
    for line in (tmp / "refs.jsonl").read_text().splitlines():
        ref = json.loads(line)
        assert ref["sentences"] and (ref["segmentation"] is None or mask_utils.area(ref["segmentation"]) > 0)
    export_regions(str(out), str(tmp / "regions.json"), all_regions=True)
    assert isinstance(json.loads((tmp / "regions.json").read_text()), list)
    summary = export_som(str(out), str(tmp / "som"), fill_masks=True)
    records = json.loads((tmp / "som" / "som.json").read_text())
    assert len(records) == summary["images"]
    for rec in records:
        assert (tmp / "som" / rec["image"]).is_file()
        assert len(rec["text"].splitlines()) == len(rec["marks"])

    from grand.export.mdvp import export_mdvp

    summary = export_mdvp(str(out), str(tmp / "mdvp.jsonl"), points_per_object=2, box_noise=0.15)
    samples = [json.loads(x) for x in (tmp / "mdvp.jsonl").read_text().splitlines()]
    assert len(samples) == summary["samples"] and summary["per_task"]["box-label"] > 0
    for s in samples:
        row = level2[s["image_id"]]
        check_mdvp_sample(s, {o["id"]: o for o in row["objects"] + row["floating_objects"]})

    for fmt, check in (("gpt4roi", check_gpt4roi), ("osprey", check_osprey)):
        export_regions(str(out), str(tmp / f"{fmt}.json"), format=fmt, all_regions=True)
        for rec in json.loads((tmp / f"{fmt}.json").read_text()):
            check(rec)
    export_refexp(str(out), str(tmp / "negatives.jsonl"), negatives=3)
    for line in (tmp / "negatives.jsonl").read_text().splitlines():
        ref = json.loads(line)
        if ref["negative"] and ref["negative_kind"] == "absent_label":
            objs = level2[ref["image_id"]]["objects"] + level2[ref["image_id"]]["floating_objects"]
            assert ref["category"] not in {lab for o in objs for lab in [o["label"], *o["labels"]]}


def test_exports_of_a_tiny_run(combined, tmp_path: Path) -> None:
    _, out, expected = combined
    check_exports(out, tmp_path, len(expected))
