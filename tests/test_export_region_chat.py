"""`grand export regions --format gpt4roi|osprey` and `grand export refexp --negatives` on the
hand-built output of export_fixtures (no models, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_fixtures import build_output, read_json_or_jsonl
from mdvp_checks import check_gpt4roi, check_osprey

from grand.export.negatives import modifier, norm
from grand.export.refexp import export_refexp
from grand.export.regions import export_regions


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("chat"))


def test_gpt4roi_layout(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "g.json"
    summary = export_regions(str(out), str(dest), format="gpt4roi", all_regions=True)
    recs = json.loads(dest.read_text())
    assert summary["records"] == len(recs) == 2
    for rec in recs:
        check_gpt4roi(rec)
    a = recs[0]
    assert a["object_ids"] == [1, 2, 3, 4] and a["labels"] == ["dog", "ball", "tree", "frisbee"]
    # The level-2 relationship naming the dog and the tree refers back to regions 1 and 3 (no new <bbox>).
    assert "region1 and region3" in a["conversations"][-2]["value"]
    assert a["conversations"][-1]["value"] == "dog and tree"
    assert a["conversations"][3]["value"] == "red ball"


def test_osprey_layout(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "o.jsonl"
    export_regions(str(out), str(dest), format="osprey", all_regions=True)
    recs = read_json_or_jsonl(dest)
    for rec in recs:
        check_osprey(rec)
    c = next(r for r in recs if r["image_id"] == "c.png")
    assert [a["has_mask"] for a in c["annotation"]] == [True, False]  # the cat has only its box
    assert c["description"] == ["<region1>: person in a blue shirt", "<region2>: cat"]
    # Without --all-regions only described regions are listed.
    export_regions(str(out), str(tmp_path / "d.jsonl"), format="osprey")
    assert [len(r["annotation"]) for r in read_json_or_jsonl(tmp_path / "d.jsonl")] == [2, 1]


def test_region_chat_is_seeded(out: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        export_regions(str(out), str(tmp_path / f"{name}.jsonl"), format="osprey", all_regions=True)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    with pytest.raises(ValueError, match="--format must be one of"):
        export_regions(str(out), str(tmp_path / "x.jsonl"), format="ferret")
    with pytest.raises(ValueError, match="--per-region"):
        export_regions(str(out), str(tmp_path / "x.jsonl"), format="osprey", per_region=True)


def present(rec_image: dict) -> set[str]:
    labels = set()
    for o in rec_image["objects"] + rec_image["floating_objects"]:
        labels |= {norm(lab) for lab in [o["label"], *o["labels"]]}
    return labels | {norm(t) for t in rec_image.get("tags") or []}


def test_refexp_negatives(out: Path, tmp_path: Path) -> None:
    import pyarrow.dataset as pads

    dest = tmp_path / "refs.jsonl"
    summary = export_refexp(str(out), str(dest), negatives=4)
    recs = read_json_or_jsonl(dest)
    negs = [r for r in recs if r["negative"]]
    assert summary["negatives"] == len(negs) > 0 and all(r["negative"] is False for r in recs if r not in negs)
    assert len({r["ref_id"] for r in recs}) == len(recs)
    l1 = {r["image_id"]: r for r in pads.dataset(str(out / "level1")).to_table().to_pylist()}
    l2 = {r["image_id"]: r for r in pads.dataset(str(out / "level2")).to_table().to_pylist()}
    kinds = set()
    for r in negs:
        image = {**l2[r["image_id"]], "tags": l1[r["image_id"]]["tags"]}
        kinds.add(r["negative_kind"])
        assert r["object_id"] is None and r["segmentation"] is None
        assert r["answer"].startswith("No,") and r["sentences"][0]["raw"] in r["question"]
        if r["negative_kind"] == "absent_label":
            # Never a label any model found in the image (plural forms included).
            assert norm(r["category"]) not in present(image)
            assert norm(r["category"]) + "s" not in present(image)
        else:
            # A present label, with a modifier none of that label's objects has.
            owners = [o for o in image["objects"] + image["floating_objects"] if norm(o["label"]) == r["category"]]
            mod = r["sentences"][0]["raw"].rsplit(" ", 1)[0]
            assert owners and all(o["attributes"] for o in owners)
            assert all(mod not in norm(a).split() for o in owners for a in o["attributes"])
    assert kinds == {"absent_label", "swapped_attribute"}
    per_image = {}
    for r in negs:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 4
    # Seeded: a second run writes the same file.
    export_refexp(str(out), str(tmp_path / "again.jsonl"), negatives=4)
    assert (tmp_path / "again.jsonl").read_bytes() == dest.read_bytes()
    # Without --negatives the records are as before (no `negative` field).
    export_refexp(str(out), str(tmp_path / "plain.jsonl"))
    assert all("negative" not in r for r in read_json_or_jsonl(tmp_path / "plain.jsonl"))


def test_modifier() -> None:
    assert modifier("a red ball", ["ball"]) == "red"
    assert modifier("two small dogs", ["dog"]) == "small"
    assert modifier("a dog sitting on grass", ["dog"]) is None
    assert modifier("red car", ["ball"]) is None


def test_cli(out: Path, tmp_path: Path, capsys) -> None:
    from grand.cli.main import main

    assert main(["export", "regions", str(out), str(tmp_path / "g.jsonl"), "--format", "gpt4roi"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "gpt4roi"
    assert main(["export", "refexp", str(out), str(tmp_path / "r.jsonl"), "--negatives", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["negatives"] > 0
