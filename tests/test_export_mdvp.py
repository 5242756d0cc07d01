"""`grand export mdvp` on the hand-built output of export_fixtures (no models, no Ray)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import DENSE_A, build_output, obj, phrase, read_json_or_jsonl, write_level
from mdvp_checks import answer_marks, check_mdvp_sample

from grand.core.rle import decode_mask, encode_mask
from grand.export.mdvp import TASKS, chunks, export_mdvp, noisy_box, points_inside, refer_in_text, rng_for
from grand.io.output import OutputDir
from grand.schema import DenseCaption, Level1Row, Level2Row, Level3Row, Relationship, SceneGraph, SceneLayer


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("mdvp"))


def objects_by_image(out: Path) -> dict[str, dict[int, dict]]:
    import pyarrow.dataset as pads

    found = {}
    for row in pads.dataset(str(out / "level2")).to_table().to_pylist():
        if row["status"] == "ok":
            found[row["image_id"]] = {o["id"]: o for o in row["objects"] + row["floating_objects"]}
    return found


def test_every_task_is_written_and_every_sample_is_consistent(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mdvp.jsonl"
    summary = export_mdvp(str(out), str(dest), points_per_object=3, box_noise=0.15)
    samples = read_json_or_jsonl(dest)
    assert summary["samples"] == len(samples)
    assert {s["task"] for s in samples} == set(TASKS)
    objects = objects_by_image(out)
    for s in samples:
        check_mdvp_sample(s, objects[s["image_id"]])
    by_task = {}
    for s in samples:
        by_task.setdefault((s["image_id"], s["task"]), []).append(s)
    # a.png: four masked objects, three points each, each point its own mark with the object's label;
    # at most 10 marks a sample, an object's points kept together.
    points = by_task[("a.png", "point-label")]
    assert [[p["object_id"] for p in s["prompts"]] for s in points] == [[1, 1, 1, 2, 2, 2, 3, 3, 3], [4, 4, 4]]
    assert points[0]["conversations"][1]["value"].splitlines()[0] == "<Mark 1>: dog"
    # c.png's cat has no mask: a box prompt, never a point.
    (c_points,) = by_task[("c.png", "point-label")]
    assert {p["object_id"] for p in c_points["prompts"]} == {1}
    (c_boxes,) = by_task[("c.png", "box-label")]
    assert [p["object_id"] for p in c_boxes["prompts"]] == [1, 2]
    assert c_boxes["conversations"][1]["value"] == "<Mark 1>: person\n<Mark 2>: cat"
    # Descriptions come from attributes; relationships from phrases naming several objects.
    (desc,) = by_task[("a.png", "brief-description")]
    assert [p["object_id"] for p in desc["prompts"]] == [1, 2]
    assert desc["conversations"][1]["value"].splitlines()[1] == "<Mark 2>: red ball"
    (rel,) = by_task[("a.png", "relationship")]
    assert [p["object_id"] for p in rel["prompts"]] == [1, 3]
    assert rel["conversations"][1]["value"] == "dog <Mark 1> and tree <Mark 2>"
    # Inverse grounding: the dense caption's grounded phrases in span order ("them" names nothing).
    (inv,) = by_task[("a.png", "inverse-grounding")]
    assert inv["conversations"][1]["value"] == "<Mark 1>: A brown dog\n<Mark 2>: a red ball\n<Mark 3>: a tree"
    assert [p["object_id"] for p in inv["prompts"]] == [1, 2, 3]
    assert ("c.png", "inverse-grounding") not in by_task  # its shard has no level 3


def test_two_runs_are_identical_and_the_seed_matters(out: Path, tmp_path: Path) -> None:
    args = dict(points_per_object=2, box_noise=0.2)
    export_mdvp(str(out), str(tmp_path / "a.jsonl"), **args)
    export_mdvp(str(out), str(tmp_path / "b.jsonl"), **args)
    export_mdvp(str(out), str(tmp_path / "c.jsonl"), seed=7, **args)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a != (tmp_path / "c.jsonl").read_bytes()
    assert not list(tmp_path.glob("*.partial"))


def test_mask_prompts_and_a_json_list(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mdvp.json"
    export_mdvp(str(out), str(dest), tasks=["brief-description", "box-label"], region_prompt_type="mask")
    samples = json.loads(dest.read_text())
    objects = objects_by_image(out)
    assert {s["task"] for s in samples} == {"brief-description", "box-label"}
    for s in samples:
        check_mdvp_sample(s, objects[s["image_id"]])
        if s["task"] == "brief-description":
            assert {p["type"] for p in s["prompts"]} == {"mask"} and "bbox" not in s
        else:
            assert {p["type"] for p in s["prompts"]} == {"box"} and len(s["bbox"]) == len(s["prompts"])


def test_groups_empty_masks_and_the_prompt_limit(tmp_path: Path) -> None:
    """Scene-graph groups become relationship samples; an empty mask counts as no mask; samples
    hold at most max_prompts marks, an object's points never split across samples."""
    o = OutputDir(str(tmp_path / "out"))
    w = h = 40
    empty = dataclasses.replace(obj(2, "cup", (20, 20, 30, 30), h=h, w=w),
                                segmentation=dict(encode_mask(np.zeros((h, w), bool))))
    objects = [obj(1, "plate", (2, 2, 18, 18), h=h, w=w), empty, obj(3, "fork", (2, 22, 18, 38), h=h, w=w)]
    write_level(o, 1, "s0", [Level1Row("x.jpg", "x.jpg", "s0", 0, "ok", width=w, height=h, objects=objects)])
    write_level(o, 2, "s0", [Level2Row("x.jpg", "s0", 0, "ok", objects=objects,
                                       relationships=[Relationship("a plate beside a fork", [1, 3])])])
    caption = "A plate and a fork."
    write_level(o, 3, "s0", [Level3Row("x.jpg", "s0", 0, "ok",
                                       scene_graph=SceneGraph([SceneLayer("foreground", [[1, 2, 3]])]),
                                       dense_caption=DenseCaption(caption, True, [phrase(caption, "A plate", [1]),
                                                                                  phrase(caption, "a fork", [3])]))])
    dest = tmp_path / "m.jsonl"
    export_mdvp(o.uri, str(dest), points_per_object=2, max_prompts=3)
    samples = read_json_or_jsonl(dest)
    objects_by_id = {x.id: dataclasses.asdict(x) for x in objects}
    for s in samples:
        check_mdvp_sample(s, objects_by_id)
        assert len(s["prompts"]) <= 3
    points = [s for s in samples if s["task"] == "point-label"]
    assert [[p["object_id"] for p in s["prompts"]] for s in points] == [[1, 1], [3, 3]]  # never the cup
    rels = {s["conversations"][1]["value"] for s in samples if s["task"] == "relationship"}
    assert rels == {"a plate <Mark 1> beside a fork <Mark 2>",
                    "<Mark 1> (plate), <Mark 2> (cup), <Mark 3> (fork) are close together in the foreground."}


def test_points_lie_strictly_inside() -> None:
    mask = np.zeros((20, 20), bool)
    mask[3:9, 4:15] = True
    mask[15, 2:18] = True  # a one-pixel line: no interior, its own pixels are used
    rng = rng_for(0, "x", "point-label")
    for x, y in points_inside(mask, 50, rng):
        assert mask[y, x] and mask[y - 1, x] and mask[y + 1, x] and mask[y, x - 1] and mask[y, x + 1]
    line = np.zeros((20, 20), bool)
    line[15, 2:18] = True
    pts = points_inside(line, 5, rng)
    assert len(pts) == 5 and all(line[y, x] for x, y in pts)
    assert len(points_inside(line, 100, rng)) == 16  # never more points than pixels, no repeats


def test_box_noise_is_bounded_and_clipped() -> None:
    rng = rng_for(0, "x", "box-label")
    for _ in range(200):
        x1, y1, x2, y2 = noisy_box([10, 10, 30, 50], 0.15, rng, 40, 60)
        assert 0 <= x1 < x2 <= 40 and 0 <= y1 < y2 <= 60
        assert abs(x1 - 10) <= 0.15 * 20 + 1e-6 and abs(y1 - 10) <= 0.15 * 40 + 1e-6
        assert 0.85 * 20 - 1e-6 <= x2 - x1 <= 1.15 * 20 + 1e-6
    assert noisy_box([10, 10, 30, 50], 0.0, rng, 40, 60) == [10.0, 10.0, 30.0, 50.0]


def test_helpers() -> None:
    assert chunks([[1], [2, 3], [4], [5, 6, 7, 8]], 3) == [[1, 2, 3], [4]]
    assert refer_in_text("two dogs chase a ball", ["dog", "ball"]) == "two dogs <Mark 1> chase a ball <Mark 2>"
    assert refer_in_text("a ball near a dog", ["dog", "ball"]) is None  # not in order
    assert answer_marks("<Mark 1>, <Mark 2>: x") == [1, 2]
    assert decode_mask(encode_mask(np.ones((2, 2), bool))).all()


def test_bad_options_say_what_is_allowed(out: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tasks must be among"):
        export_mdvp(str(out), str(tmp_path / "x.jsonl"), tasks=["caption"])
    with pytest.raises(ValueError, match="points-per-object"):
        export_mdvp(str(out), str(tmp_path / "x.jsonl"), points_per_object=0)
    with pytest.raises(ValueError, match="box-noise"):
        export_mdvp(str(out), str(tmp_path / "x.jsonl"), box_noise=1.5)
    with pytest.raises(ValueError, match="grand run"):
        export_mdvp(str(tmp_path / "nothing"), str(tmp_path / "x.jsonl"))


def test_cli(out: Path, tmp_path: Path, capsys) -> None:
    from grand.cli.main import main

    dest = tmp_path / "cli.jsonl"
    assert main(["export", "mdvp", str(out), str(dest), "--tasks", "box-label,point-label",
                 "--points-per-object", "2", "--box-noise", "0.1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["per_task"]["box-label"] == 2 and summary["samples"] == len(read_json_or_jsonl(dest))
