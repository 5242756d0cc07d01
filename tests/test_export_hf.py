"""export_hf on the hand-built output of export_fixtures: datasets.load_dataset restores the nested
features and the Image feature, masks and spans come back identical, pieces respect the size cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from export_fixtures import DENSE_A, SHARD0, SHARD1, box_mask, build_output, pixels

datasets = pytest.importorskip("datasets")

from grand.core.rle import decode_mask  # noqa: E402
from grand.export.hf import export_hf  # noqa: E402


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("hf"))


def load(dest: Path, tmp_path: Path, **kwargs):
    return datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "hf-cache"), **kwargs)


def stored_rows(out: Path, level: int) -> dict[str, dict]:
    rows = {}
    for f in sorted((out / f"level{level}").glob("*.parquet")):
        rows.update({r["image_id"]: r for r in pq.read_table(f).to_pylist()})
    return rows


def test_round_trip_with_images(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    summary = export_hf(str(out), str(dest), embed_images=True)
    assert summary["rows"] == 3 and summary["ok"] == 2 and summary["levels"] == [1, 2, 3, 4]
    assert summary["files"] == ["train-00000-of-00001.parquet"] and summary["unreadable_images"] == 0

    ds = load(dest, tmp_path)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["objects"], datasets.List)
    assert ds.features["dense_caption"]["details"].feature["tokens_positive"] == datasets.List(datasets.Value("int32"))
    assert [r["image_id"] for r in ds] == ["a.png", "b.png", "c.png"]  # plan order
    a, b, c = ds[0], ds[1], ds[2]

    # The image as the pipeline saw it.
    assert np.array_equal(np.asarray(a["image"].convert("RGB")), pixels(0))
    assert np.array_equal(np.asarray(c["image"].convert("RGB")), pixels(2))
    assert b["image"] is None and b["status"] == "error" and b["error"].startswith("level 1: decode")

    # Objects are level 2's (phrase grounding added the frisbee, the dog gained "puppy"); masks identical.
    level2 = stored_rows(out, 2)
    for row in (a, c):
        stored = level2[row["image_id"]]
        assert row["objects"] == stored["objects"] and row["floating_objects"] == stored["floating_objects"]
        for o in row["objects"] + row["floating_objects"]:
            if o["segmentation"] is not None:
                assert np.array_equal(decode_mask(o["segmentation"]), box_mask(o["bbox"]))
    assert a["objects"][0]["labels"] == ["dog", "puppy"] and a["floating_objects"][-1]["label"] == "frisbee"

    # Spans identical, and each names its phrase.
    assert a["dense_caption"]["caption"] == DENSE_A
    for d in a["dense_caption"]["details"] + a["short_captions"][0]["details"]:
        s, e = d["tokens_positive"]
        caption = a["dense_caption"]["caption"] if d in a["dense_caption"]["details"] else a["short_captions"][0]["caption"]
        assert caption[s:e] == d["phrase"]
    assert a["dense_caption"] == stored_rows(out, 3)["a.png"]["dense_caption"]
    assert a["additional_context"].startswith("Dogs love")
    assert [lv["level"] for lv in a["levels"]] == [1, 2, 3, 4]

    # c's shard has no level 3/4: those columns are empty, the image is still ok.
    assert c["dense_caption"] is None and c["additional_context"] is None and c["status"] == "ok"
    assert [lv["level"] for lv in c["levels"]] == [1, 2]


def test_parquet_builder_reads_the_same(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    export_hf(str(out), str(dest))
    by_folder = load(dest, tmp_path)
    by_parquet = datasets.load_dataset("parquet", data_dir=str(dest), split="train", cache_dir=str(tmp_path / "c2"))
    assert by_parquet.features == by_folder.features
    assert "image" not in by_folder.column_names  # not embedded: `source` says where the image is
    assert by_parquet.to_list() == by_folder.to_list()


def test_pieces_respect_the_size_cap(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    cap = 50_000  # the footer alone (schema + features metadata) is ~26 KB here
    summary = export_hf(str(out), str(dest), embed_images=True, max_shard_bytes=cap, rows_per_group=1)
    files = sorted((dest / "data").glob("*.parquet"))
    n = len(files)
    assert n >= 2 and [f.name for f in files] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert summary["files"] == [f.name for f in files]
    assert all(f.stat().st_size <= cap for f in files)
    assert not list((dest / "data").glob("*.partial"))
    ds = load(dest, tmp_path)
    assert [r["image_id"] for r in ds] == ["a.png", "b.png", "c.png"]


def test_levels_option_and_card(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    export_hf(str(out), str(dest), levels=[1])
    ds = load(dest, tmp_path)
    assert "short_captions" not in ds.column_names and "dense_caption" not in ds.column_names
    assert ds[0]["objects"][0]["labels"] == ["dog"]  # level 1's objects

    card = (dest / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert header["dataset_info"]["splits"][0]["num_examples"] == 3
    assert "| images | 2 |" in card and "| regions | 5 |" in card and "| unique concepts | 5 |" in card
    assert "det_a (`tiny:owlv2`" in card and "level 2:" not in card.split("## How it was made")[1]


def test_overwrite_and_errors(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    export_hf(str(out), str(dest), levels=[1, 2])
    with pytest.raises(ValueError, match="--overwrite"):
        export_hf(str(out), str(dest))
    export_hf(str(out), str(dest), overwrite=True)
    assert len(list((dest / "data").glob("*.parquet"))) == 1

    with pytest.raises(ValueError, match="does not exist"):
        export_hf(str(tmp_path / "nowhere"), str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no level-1 shards .*grand run CONFIG --output .* --levels 1\b"):
        export_hf(str(tmp_path / "empty"), str(tmp_path / "x"))
    # A level the folder lacks: say how to make it.
    only12 = tmp_path / "only12"
    for lv in (1, 2):
        (only12 / f"level{lv}").mkdir(parents=True)
        for f in (out / f"level{lv}").glob("*.parquet"):
            (only12 / f"level{lv}" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match=r"no level-3 shards .* --levels 3"):
        export_hf(str(only12), str(tmp_path / "y"), levels=[1, 3])


def test_shard_names_cover_every_level(out: Path) -> None:
    # The fixture's plan: both shards exist at levels 1-2, only the first at 3-4.
    assert {f.stem for f in (out / "level3").glob("*.parquet")} == {SHARD0}
    assert {f.stem for f in (out / "level2").glob("*.parquet")} == {SHARD0, SHARD1}
