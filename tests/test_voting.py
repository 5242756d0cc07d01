"""Cross-model voting: one fixture per reference rule, plus a brute-force re-implementation of the
whole merge compared on random inputs."""

import numpy as np
import pytest

from grand.config import DetectorSpec, VotingSpec
from grand.core.detections import Detections
from grand.core.voting import (
    VotedObject,
    filter_score,
    nms_detections,
    normalize_label,
    vote_detections,
)


def spec(name, thr=0.0, person=None, lone=None, attrs=False):
    return DetectorSpec(
        name=name,
        checkpoint=f"tiny:{name}",
        score_threshold=thr,
        person_threshold=person,
        lone_person_threshold=lone,
        gives_attributes=attrs,
    )


def det(boxes, scores, labels, attributes=None):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels, attributes=attributes)


BOX = [0, 0, 100, 100]
NEAR = [0, 0, 100, 80]  # IoU 0.8 with BOX
FAR = [300, 300, 400, 400]
V = VotingSpec()


def summary(objs):
    return [(o.models, o.label, o.labels, o.attributes, round(o.score, 4)) for o in objs]


# -- step A ---------------------------------------------------------------------------------
def test_step_a_drops_scores_below_0_1_even_with_zero_model_threshold():
    r = vote_detections({"a": det([BOX, FAR], [0.0999, 0.1], ["cat", "dog"])}, [spec("a")], V)
    assert r.objects == []
    assert summary(r.floating_objects) == [(["a"], "dog", ["dog"], [], 0.1)]


def test_step_a_nms_suppresses_only_above_0_9_and_is_class_agnostic():
    very_near = [0, 0, 100, 95]  # IoU 0.95 with BOX
    r = vote_detections({"a": det([BOX, very_near], [0.5, 0.9], ["cat", "dog"])}, [spec("a")], V)
    assert [o.label for o in r.floating_objects] == ["dog"]  # the higher score survives
    r = vote_detections({"a": det([BOX, NEAR], [0.5, 0.9], ["cat", "cat"])}, [spec("a")], V)
    assert len(r.floating_objects) == 2  # IoU 0.8 <= 0.9: both kept


def test_step_a_nms_runs_before_step_b():
    # the 0.9 box suppresses its duplicate, then fails step B itself: nothing survives
    very_near = [0, 0, 100, 95]
    r = vote_detections({"a": det([BOX, very_near], [0.9, 0.6], ["cat", "cat"])}, [spec("a", thr=0.95)], V)
    assert r.objects == [] and r.floating_objects == []


# -- step B thresholds ------------------------------------------------------------------------
def test_per_model_score_threshold():
    detectors = [spec("a", thr=0.6), spec("b", thr=0.2)]
    per_model = {"a": det([BOX], [0.59], ["cat"]), "b": det([BOX], [0.2], ["cat"])}
    r = vote_detections(per_model, detectors, V)
    assert r.objects == []
    assert summary(r.floating_objects) == [(["b"], "cat", ["cat"], [], 0.2)]


def test_person_threshold_applies_to_person_and_aliases_only():
    detectors = [spec("a", thr=0.6, person=0.2)]
    boxes = [[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10], [300, 0, 310, 10]]
    r = vote_detections({"a": det(boxes, [0.3, 0.3, 0.3, 0.15], ["person", "Woman", "dog", "man"])}, detectors, V)
    assert [o.label for o in r.floating_objects] == ["person", "person"]
    # without a person threshold "person" uses the model threshold
    r = vote_detections({"a": det(boxes, [0.3, 0.3, 0.3, 0.15], ["person", "Woman", "dog", "man"])}, [spec("a", thr=0.6)], V)
    assert r.floating_objects == []


# -- grouping ---------------------------------------------------------------------------------
def test_group_keeps_first_models_box_and_score():
    detectors = [spec("eva"), spec("codetr"), spec("owl")]
    per_model = {
        "eva": det([NEAR], [0.5], ["Cat"]),
        "codetr": det([BOX], [0.99], ["kitten"]),
        "owl": det([[0, 0, 100, 90]], [0.7], ["cat"]),
    }
    r = vote_detections(per_model, detectors, V)
    assert r.floating_objects == []
    (o,) = r.objects
    assert o.models == ["eva", "codetr", "owl"]
    assert np.array_equal(o.bbox, np.asarray(NEAR, np.float32)) and o.bbox.dtype == np.float32
    assert o.score == pytest.approx(0.5)
    assert o.label == "cat" and o.labels == ["cat", "kitten"]  # distinct, priority order


def test_priority_is_detector_order_not_dict_order():
    per_model = {"b": det([BOX], [0.9], ["dog"]), "a": det([NEAR], [0.4], ["cat"])}
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert summary(r.objects) == [(["a", "b"], "cat", ["cat", "dog"], [], 0.4)]


def test_match_needs_iou_at_least_0_65():
    just = [0, 0, 100, 65]  # IoU exactly 0.65
    below = [0, 0, 100, 64]
    r = vote_detections({"a": det([BOX], [0.5], ["x"]), "b": det([just], [0.5], ["y"])}, [spec("a"), spec("b")], V)
    assert len(r.objects) == 1
    r = vote_detections({"a": det([BOX], [0.5], ["x"]), "b": det([below], [0.5], ["y"])}, [spec("a"), spec("b")], V)
    assert r.objects == [] and len(r.floating_objects) == 2


def test_one_box_per_model_per_group_highest_iou_wins():
    # b has two candidates; the higher-IoU one (lower score) joins, the other floats
    per_model = {"a": det([BOX], [0.5], ["cat"]), "b": det([[0, 0, 100, 70], [0, 0, 100, 95]], [0.9, 0.3], ["c1", "c2"])}
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert summary(r.objects) == [(["a", "b"], "cat", ["cat", "c2"], [], 0.5)]
    assert r.objects[0].indices == [0, 1]
    assert summary(r.floating_objects) == [(["b"], "c1", ["c1"], [], 0.9)]


def test_same_model_boxes_are_never_grouped():
    r = vote_detections({"a": det([BOX, NEAR], [0.9, 0.8], ["cat", "cat"])}, [spec("a")], V)
    assert r.objects == [] and [o.models for o in r.floating_objects] == [["a"], ["a"]]
    # even when a later model's box overlaps both, only one of them joins it
    per_model = {"a": det([BOX, NEAR], [0.9, 0.8], ["cat", "cat"]), "b": det([[0, 0, 100, 90]], [0.5], ["cat"])}
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert [o.models for o in r.objects] == [["a", "b"]]
    assert [o.models for o in r.floating_objects] == [["a"]]


def test_later_models_are_matched_against_the_anchor_not_the_chain():
    # c overlaps b enough but not a: it is not pulled into a's group, and forms its own
    a_box, b_box, c_box = [0, 0, 100, 100], [0, 0, 100, 75], [0, 0, 100, 50]  # a-b 0.75, b-c 0.667, a-c 0.5
    per_model = {"a": det([a_box], [0.5], ["x"]), "b": det([b_box], [0.5], ["y"]), "c": det([c_box], [0.5], ["z"])}
    r = vote_detections(per_model, [spec("a"), spec("b"), spec("c")], V)
    assert [o.models for o in r.objects] == [["a", "b"]]
    assert [o.models for o in r.floating_objects] == [["c"]]


def test_unused_box_of_a_later_model_anchors_its_own_group():
    per_model = {"a": det([FAR], [0.5], ["x"]), "b": det([BOX], [0.5], ["y"]), "c": det([NEAR], [0.5], ["z"])}
    r = vote_detections(per_model, [spec("a"), spec("b"), spec("c")], V)
    assert [o.models for o in r.objects] == [["b", "c"]]
    assert [o.models for o in r.floating_objects] == [["a"]]


def test_output_order_follows_anchor_priority_then_score():
    per_model = {
        "a": det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.3, 0.8], ["p", "q"]),
        "b": det([[0, 0, 10, 10], [50, 50, 60, 60], [90, 90, 99, 99]], [0.9, 0.9, 0.9], ["p", "q", "r"]),
        "c": det([[90, 90, 99, 99]], [0.2], ["r"]),
    }
    r = vote_detections(per_model, [spec("a"), spec("b"), spec("c")], V)
    assert [o.label for o in r.objects] == ["q", "p", "r"]


def test_min_models_split():
    per_model = {"a": det([BOX], [0.5], ["x"]), "b": det([NEAR], [0.5], ["x"])}
    r = vote_detections(per_model, [spec("a"), spec("b")], VotingSpec(min_models=3))
    assert r.objects == [] and [o.models for o in r.floating_objects] == [["a", "b"]]
    r = vote_detections({"a": det([BOX], [0.5], ["x"])}, [spec("a"), spec("b")], VotingSpec(min_models=1))
    assert len(r.objects) == 1


# -- lone person exception --------------------------------------------------------------------
def test_lone_confident_person_is_an_object():
    detectors = [spec("eva", thr=0.6, person=0.2, lone=0.75), spec("codetr", thr=0.2, lone=0.5), spec("owl")]
    boxes = [[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]]
    per_model = {
        "eva": det(boxes, [0.76, 0.75, 0.9], ["person", "man", "dog"]),  # strictly greater is needed
        "codetr": det([[0, 200, 10, 210]], [0.51], ["women"]),
        "owl": det([[100, 200, 110, 210]], [0.99], ["person"]),  # no lone threshold configured
    }
    r = vote_detections(per_model, detectors, V)
    assert [(o.models, o.label, o.score) for o in r.objects] == [
        (["eva"], "person", pytest.approx(0.76)),
        (["codetr"], "person", pytest.approx(0.51)),
    ]
    # floating in anchor order: eva by descending score (dog 0.9, man 0.75), then owl
    assert [(o.models, o.label) for o in r.floating_objects] == [(["eva"], "dog"), (["eva"], "person"), (["owl"], "person")]


# -- labels and attributes --------------------------------------------------------------------
def test_label_aliases_and_normalisation():
    assert normalize_label("  Man ", V.label_aliases) == "person"
    assert normalize_label("MEN", V.label_aliases) == "person"
    assert normalize_label("Traffic   Light", V.label_aliases) == "traffic light"
    custom = VotingSpec(label_aliases={"Puppy": "Dog"})
    assert normalize_label("puppy", custom.label_aliases) == "dog"
    assert normalize_label("man", custom.label_aliases) == "man"  # the default table was replaced
    per_model = {"a": det([BOX], [0.5], ["Woman"]), "b": det([NEAR], [0.5], ["person"])}
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert r.objects[0].labels == ["person"]


def test_attribute_models_give_attributes_not_labels():
    detectors = [spec("eva"), spec("grit", attrs=True)]
    per_model = {"eva": det([BOX], [0.5], ["dog"]), "grit": det([NEAR, FAR], [0.5, 0.6], ["a brown dog", "a red car"])}
    r = vote_detections(per_model, detectors, V)
    assert summary(r.objects) == [(["eva", "grit"], "dog", ["dog"], ["a brown dog"], 0.5)]
    # a lone description box floats and is named by its description
    assert summary(r.floating_objects) == [(["grit"], "a red car", [], ["a red car"], 0.6)]


def test_detection_attributes_are_collected():
    per_model = {
        "a": det([BOX], [0.5], ["dog"], attributes=["sleeping dog"]),
        "b": det([NEAR], [0.5], ["dog"], attributes=[""]),
    }
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert r.objects[0].attributes == ["sleeping dog"]


# -- inputs -----------------------------------------------------------------------------------
def test_missing_model_counts_as_no_boxes_and_unknown_model_is_refused():
    r = vote_detections({"b": det([BOX], [0.5], ["x"])}, [spec("a"), spec("b")], V)
    assert [o.models for o in r.floating_objects] == [["b"]]
    assert vote_detections({}, [spec("a")], V).objects == []
    with pytest.raises(ValueError, match="zzz"):
        vote_detections({"zzz": det([BOX], [0.5], ["x"])}, [spec("a")], V)


def test_indices_point_into_the_input_detections():
    per_model = {
        "a": det([FAR, BOX, [0, 0, 100, 99]], [0.05, 0.4, 0.9], ["x", "y", "z"]),  # 0 dropped, 1 NMS-ed by 2
        "b": det([[500, 500, 510, 510], NEAR], [0.9, 0.3], ["u", "v"]),
    }
    r = vote_detections(per_model, [spec("a"), spec("b")], V)
    assert [(o.models, o.indices) for o in r.objects] == [(["a", "b"], [2, 1])]
    assert [(o.models, o.indices) for o in r.floating_objects] == [(["b"], [0])]


def test_helpers_and_round_trip():
    d = det([BOX, NEAR, FAR], [0.2, 0.9, 0.05], ["a", "b", "c"])
    assert filter_score(d, 0.1).labels.tolist() == ["a", "b"]
    assert nms_detections(d, 0.5).labels.tolist() == ["b", "c"]
    o = vote_detections({"a": d}, [spec("a")], V).floating_objects[0]
    assert VotedObject.from_dict(o.to_dict()).to_dict() == o.to_dict()


# -- brute-force reference on random inputs ---------------------------------------------------
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_vote(per_model, detectors, voting):
    aliases = {k.lower(): v.lower() for k, v in voting.label_aliases.items()}
    boxes_per_model = []  # per model: list of dicts in priority order
    for s in detectors:
        d = per_model.get(s.name)
        items = []
        if d is not None:
            for i in range(len(d)):
                lab = " ".join(str(d.labels[i]).lower().split())
                lab = aliases.get(lab, lab)
                attr = None if d.attributes is None else " ".join(str(d.attributes[i]).split())
                box = [float(v) for v in d.xyxy[i]]
                items.append(dict(i=i, box=box, score=float(d.scores[i]), label=lab, attr=attr))
        items = [x for x in items if x["score"] >= voting.pre_score_threshold]
        items.sort(key=lambda x: (-x["score"], x["i"]))
        kept = []
        for x in items:
            if all(_iou(x["box"], k["box"]) <= voting.pre_nms_iou for k in kept):
                kept.append(x)
        final = []
        for x in kept:
            thr = s.person_threshold if (x["label"] == "person" and s.person_threshold is not None) else s.score_threshold
            if x["score"] >= thr:
                final.append(x)
        boxes_per_model.append(final)

    used = set()
    objects, floating = [], []
    for p, items in enumerate(boxes_per_model):
        for a, anchor in enumerate(items):
            if (p, a) in used:
                continue
            used.add((p, a))
            group = [(p, a)]
            for q in range(p + 1, len(boxes_per_model)):
                best, best_iou = None, -1.0
                for b, cand in enumerate(boxes_per_model[q]):
                    if (q, b) in used:
                        continue
                    v = _iou(anchor["box"], cand["box"])
                    if v > best_iou:
                        best, best_iou = b, v
                if best is not None and best_iou >= voting.match_iou:
                    used.add((q, best))
                    group.append((q, best))
            labels, attrs = [], []
            for q, b in group:
                x = boxes_per_model[q][b]
                target = attrs if detectors[q].gives_attributes else labels
                if x["label"] and x["label"] not in target:
                    target.append(x["label"])
                if x["attr"] and x["attr"] not in attrs:
                    attrs.append(x["attr"])
            label = labels[0] if labels else (attrs[0] if attrs else "")
            row = (
                [detectors[q].name for q, _ in group],
                [boxes_per_model[q][b]["i"] for q, b in group],
                label,
                labels,
                attrs,
                round(anchor["score"], 5),
                [round(v, 3) for v in anchor["box"]],
            )
            s = detectors[p]
            lone_person = (
                len(group) == 1 and s.lone_person_threshold is not None and label == "person"
                and anchor["score"] > s.lone_person_threshold
            )
            (objects if len(group) >= voting.min_models or lone_person else floating).append(row)
    return objects, floating


def _rows(objs):
    return [
        (o.models, o.indices, o.label, o.labels, o.attributes, round(o.score, 5), [round(float(v), 3) for v in o.bbox])
        for o in objs
    ]


def test_vote_matches_brute_force_reference_on_random_inputs():
    rng = np.random.default_rng(7)
    vocab = ["person", "Man", "women", "dog", "cat ", "car", "a dog on grass"]
    n_checked = 0
    for trial in range(150):
        n_models = int(rng.integers(1, 6))
        detectors = [
            spec(
                f"m{k}",
                thr=float(rng.choice([0.0, 0.2, 0.3, 0.6])),
                person=float(rng.choice([0.2, 0.5])) if rng.random() < 0.5 else None,
                lone=float(rng.choice([0.5, 0.75])) if rng.random() < 0.5 else None,
                attrs=bool(k == n_models - 1 and rng.random() < 0.4),
            )
            for k in range(n_models)
        ]
        voting = VotingSpec(
            match_iou=float(rng.choice([0.5, 0.65, 0.8])),
            pre_nms_iou=float(rng.choice([0.7, 0.9])),
            min_models=int(rng.integers(1, 4)),
        )
        # a few true objects seen by several models with jitter, plus clutter
        centres = rng.uniform(0, 200, size=(int(rng.integers(1, 6)), 2))
        sizes = rng.uniform(10, 60, size=(len(centres), 2))
        per_model = {}
        for s in detectors:
            if rng.random() < 0.15:
                continue  # this model returned nothing for the image
            boxes = []
            for c, wh in zip(centres, sizes):
                for _ in range(int(rng.integers(0, 3))):
                    j = rng.normal(0, 4, size=4)
                    lo, hi = c - wh / 2, c + wh / 2
                    boxes.append([lo[0] + j[0], lo[1] + j[1], hi[0] + j[2], hi[1] + j[3]])
            for _ in range(int(rng.integers(0, 3))):
                xy = rng.uniform(0, 200, 2)
                boxes.append([*xy, *(xy + rng.uniform(0, 50, 2))])
            boxes = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 1)
            scores = np.round(rng.random(len(boxes)), 1)  # coarse scores: ties happen
            labels = rng.choice(vocab, size=len(boxes))
            attributes = rng.choice(["", "red", "old"], size=len(boxes)) if rng.random() < 0.3 else None
            per_model[s.name] = Detections(boxes.astype(np.float32), scores, labels, attributes=attributes)
        # the reference sees exactly the float32 values the engine sees
        per_model_ref = {k: Detections(v.xyxy, v.scores, v.labels, attributes=v.attributes) for k, v in per_model.items()}
        got = vote_detections(per_model, detectors, voting)
        want_obj, want_float = _reference_vote(per_model_ref, detectors, voting)
        assert _rows(got.objects) == want_obj, trial
        assert _rows(got.floating_objects) == want_float, trial
        n_checked += len(want_obj) + len(want_float)
    assert n_checked > 300  # the random inputs really exercise grouping


def test_thresholds_compare_at_float32_precision():
    # 0.7 and 0.35 are not exact in float32 (0.69999999, 0.34999999): a score printed as the
    # threshold must still pass it
    detectors = [spec("a", thr=0.7, person=0.35, lone=0.69)]
    boxes = [[0, 0, 10, 10], [100, 0, 110, 10]]
    r = vote_detections({"a": det(boxes, [0.7, 0.35], ["cat", "person"])}, detectors, V)
    assert [o.label for o in r.floating_objects] == ["cat", "person"]
    r = vote_detections({"a": det(boxes[:1], [0.69], ["person"])}, [spec("a", lone=0.69)], V)
    assert r.objects == []  # lone person needs strictly greater


# -- the vectorised vote returns exactly what the pre-issue-18 loop did -----------------------
def _previous_implementation():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import legacy_postprocess

    return legacy_postprocess


def _as_rows(result):
    return [o.to_dict() for o in result.objects], [o.to_dict() for o in result.floating_objects]


def test_vote_matches_the_previous_implementation_on_random_inputs():
    legacy = _previous_implementation()
    rng = np.random.default_rng(18)
    vocab = ["person", "Man", "women", "dog", "cat ", "car", "a dog on grass", ""]
    for trial in range(100):
        n_models = int(rng.integers(1, 6))
        detectors = [
            spec(
                f"m{k}",
                thr=float(rng.choice([0.0, 0.2, 0.5])),
                person=float(rng.choice([0.2, 0.4])) if rng.random() < 0.5 else None,
                lone=float(rng.choice([0.5, 0.75])) if rng.random() < 0.5 else None,
                attrs=bool(rng.random() < 0.2),
            )
            for k in range(n_models)
        ]
        voting = VotingSpec(
            match_iou=float(rng.choice([0.3, 0.65, 0.9, 1.0])),
            pre_nms_iou=float(rng.choice([0.5, 0.9])),
            min_models=int(rng.integers(1, 4)),
        )
        centres = rng.uniform(0, 300, size=(int(rng.integers(1, 30)), 2))
        per_model = {}
        for s in detectors:
            if rng.random() < 0.1:
                continue
            n = int(rng.integers(0, 50))
            c = centres[rng.integers(0, len(centres), n)]
            half = rng.uniform(2, 60, (n, 2))
            # coarse coordinates and scores: equal IoUs and equal scores (ties) happen often
            boxes = np.round(np.c_[c - half, c + half] + rng.normal(0, 3, (n, 4)))
            if trial % 20 == 0 and n:
                boxes[0] = [0, 0, np.inf, np.inf]  # a NaN IoU: both must treat it alike
            scores = np.round(rng.random(n), 1)
            attributes = rng.choice(["", "red", " old  wooden "], n) if rng.random() < 0.3 else None
            per_model[s.name] = det(boxes, scores, rng.choice(vocab, n), attributes=attributes)
        with np.errstate(invalid="ignore"):
            got = vote_detections(per_model, detectors, voting)
            want = legacy.vote_detections(per_model, detectors, voting)
        assert _as_rows(got) == _as_rows(want), trial
        for g, w in zip(got.objects + got.floating_objects, want.objects + want.floating_objects):
            assert g.bbox.dtype == w.bbox.dtype == np.float32 and type(g.score) is type(w.score) is float
