"""Level-2 phrase grounding rules (reference: "A phrase box links to a level-1 object (or floating
object) if IoU > 0.75; the noun is added to its labels; floating objects that gain a second label are
promoted; unmatched phrase boxes become new floating objects"). Expected values are worked by hand."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from grand.core.grounding import GroundingResult, PhraseBoxes, apply_phrase_grounding, caption_details
from grand.schema import GroundedPhrase, ObjectRecord

MODEL = "phrase_grounding:mdetr"


def obj(id_, bbox, labels, models=("codetr", "eva"), score=0.9):
    return ObjectRecord(id=id_, bbox=list(bbox), label=labels[0], labels=list(labels), score=score,
                        models=list(models), depth=0.5)


def pb(phrase, label, boxes, scores=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.full(len(boxes), 0.9) if scores is None else np.asarray(scores, np.float64)
    return PhraseBoxes(phrase=phrase, label=label, boxes=boxes, scores=scores)


def ground(objects, floating, phrases, **kw) -> GroundingResult:
    return apply_phrase_grounding(objects, floating, phrases, source_model="mdetr", **kw)


def ids(objs):
    return [o.id for o in objs]


# -- linking threshold and choice ---------------------------------------------------------------------


def test_iou_exactly_at_threshold_does_not_link():
    objects = [obj(0, [0, 0, 100, 100], ["dog"])]
    r = ground(objects, [], [pb("a dog", "dog", [[0, 0, 100, 75]])])  # IoU 7500 / 10000 = 0.75
    assert r.links == {"a dog": [1]}
    assert ids(r.floating_objects) == [1]


def test_iou_just_above_threshold_links():
    objects = [obj(0, [0, 0, 100, 100], ["dog"])]
    r = ground(objects, [], [pb("a puppy", "puppy", [[0, 0, 100, 76]])])  # IoU 0.76
    assert r.links == {"a puppy": [0]}
    assert r.floating_objects == []
    assert r.objects[0].labels == ["dog", "puppy"]


def test_match_iou_is_configurable():
    objects = [obj(0, [0, 0, 100, 100], ["dog"])]
    r = ground(objects, [], [pb("a dog", "dog", [[0, 0, 100, 60]])], match_iou=0.5)  # IoU 0.6
    assert r.links == {"a dog": [0]}


def test_best_of_two_overlapping_objects_wins_regardless_of_order():
    big = obj(0, [0, 0, 100, 100], ["table"])  # IoU with the box: 9200 / 10000 = 0.92
    close = obj(1, [0, 0, 100, 90], ["desk"])  # IoU with the box: 9000 / 9200 = 0.978
    box = [[0, 0, 100, 92]]
    assert ground([big, close], [], [pb("the desk", "desk", box)]).links == {"the desk": [1]}
    assert ground([close, big], [], [pb("the desk", "desk", box)]).links == {"the desk": [1]}


def test_equal_iou_goes_to_lower_id():
    objects = [obj(5, [0, 0, 100, 100], ["cup"]), obj(2, [0, 0, 100, 100], ["mug"])]
    r = ground(objects, [], [pb("a mug", "mug", [[0, 0, 100, 100]])])
    assert r.links == {"a mug": [2]}


def test_floating_objects_are_match_candidates_too():
    objects = [obj(0, [0, 0, 50, 50], ["car"])]
    floating = [obj(1, [200, 200, 300, 300], ["lamp"], models=["owlvit"])]
    r = ground(objects, floating, [pb("a lamp", "lamp", [[200, 200, 300, 300]])])
    assert r.links == {"a lamp": [1]}
    assert ids(r.floating_objects) == [1]  # same label: not promoted


# -- labels, models and promotion ---------------------------------------------------------------------


def test_label_appended_once_case_insensitive_and_final_label_kept():
    objects = [obj(0, [0, 0, 100, 100], ["dog"])]
    r = ground(
        objects,
        [],
        [
            pb("the Dog", "Dog", [[0, 0, 100, 100]]),
            pb("a puppy", "puppy", [[0, 0, 100, 100]]),
            pb("the small puppy", "puppy", [[0, 0, 100, 99]]),
        ],
    )
    o = r.objects[0]
    assert o.labels == ["dog", "puppy"]
    assert o.label == "dog"
    assert o.models == ["codetr", "eva", MODEL]  # the grounding model recorded once
    assert r.links == {"the Dog": [0], "a puppy": [0], "the small puppy": [0]}


def test_floating_promoted_on_second_label_keeps_id_and_goes_after_level1_objects():
    objects = [obj(4, [0, 0, 10, 10], ["cup"]), obj(0, [20, 20, 30, 30], ["plate"])]
    floating = [obj(3, [100, 100, 200, 200], ["cat"], models=["owlvit"]), obj(9, [300, 0, 400, 100], ["sky"], models=["owlvit"])]
    r = ground(objects, floating, [pb("a kitten", "kitten", [[100, 100, 200, 200]])])
    assert ids(r.objects) == [4, 0, 3]
    assert ids(r.floating_objects) == [9]
    promoted = r.objects[2]
    assert promoted.labels == ["cat", "kitten"]
    assert promoted.label == "cat"
    assert promoted.models == ["owlvit", MODEL]
    assert r.links == {"a kitten": [3]}


def test_floating_not_promoted_when_the_same_label_comes_twice():
    floating = [obj(3, [100, 100, 200, 200], ["cat"], models=["owlvit"])]
    r = ground([], floating, [pb("a cat", "Cat", [[100, 100, 200, 200]]), pb("the cat", "cat", [[100, 100, 200, 199]])])
    assert r.objects == []
    assert ids(r.floating_objects) == [3]
    assert r.floating_objects[0].labels == ["cat"]


def test_promotion_needs_a_gained_label():
    # Already two labels (one model) but the phrase adds nothing new: it gained no label, so it stays.
    floating = [obj(3, [0, 0, 100, 100], ["cat", "kitten"], models=["owlvit"])]
    r = ground([], floating, [pb("a kitten", "kitten", [[0, 0, 100, 100]])])
    assert ids(r.floating_objects) == [3] and r.objects == []


def test_promotion_order_follows_phrase_order():
    floating = [obj(1, [0, 0, 10, 10], ["a"], models=["m"]), obj(2, [50, 50, 60, 60], ["b"], models=["m"])]
    r = ground([], floating, [pb("p1", "x", [[50, 50, 60, 60]]), pb("p2", "y", [[0, 0, 10, 10]])])
    assert ids(r.objects) == [2, 1]
    assert r.floating_objects == []


# -- new floating objects -----------------------------------------------------------------------------


def test_unmatched_box_becomes_floating_object_with_fresh_unique_id():
    objects = [obj(0, [0, 0, 10, 10], ["cup"]), obj(1, [20, 20, 30, 30], ["plate"])]
    floating = [obj(7, [40, 40, 50, 50], ["fork"], models=["owlvit"])]
    r = ground(objects, floating, [pb("a red kite", "kite", [[10.123, 20.456, 50.789, 60.001]], [0.87654321])])
    assert ids(r.floating_objects) == [7, 8]
    new = r.floating_objects[1]
    assert new == ObjectRecord(id=8, bbox=[10.12, 20.46, 50.79, 60.0], label="kite", labels=["kite"], score=0.87654,
                               models=[MODEL], attributes=[], depth=None, segmentation=None, segmentation_source=None)
    assert r.links == {"a red kite": [8]}


def test_first_new_id_is_zero_without_objects():
    r = ground([], [], [pb("a kite", "kite", [[0, 0, 10, 10], [50, 50, 60, 60]])])
    assert ids(r.floating_objects) == [0, 1]
    assert r.links == {"a kite": [0, 1]}


def test_second_phrase_on_same_region_links_to_new_object_and_promotes_it():
    objects = [obj(0, [0, 0, 10, 10], ["cup"])]
    r = ground(
        objects,
        [],
        [
            pb("a kite", "kite", [[100, 100, 200, 200]]),
            pb("the red kite", "kite", [[100, 100, 200, 195]]),  # IoU 0.95 with id 1, same label
            pb("a toy", "toy", [[101, 100, 200, 200]]),  # IoU 0.99 with id 1, second label
        ],
    )
    assert r.links == {"a kite": [1], "the red kite": [1], "a toy": [1]}
    assert ids(r.objects) == [0, 1]
    assert r.floating_objects == []
    assert r.objects[1].labels == ["kite", "toy"]
    assert r.objects[1].models == [MODEL]


def test_duplicate_boxes_of_one_phrase_link_once():
    objects = [obj(0, [0, 0, 100, 100], ["tree"])]
    r = ground(objects, [], [pb("trees", "tree", [[0, 0, 100, 100], [200, 0, 300, 100], [0, 0, 100, 98], [200, 0, 300, 99]])])
    assert r.links == {"trees": [0, 1]}
    assert ids(r.floating_objects) == [1]


# -- outputs ------------------------------------------------------------------------------------------


def test_relationships_list_only_phrases_with_ids_in_phrase_order():
    objects = [obj(0, [0, 0, 100, 100], ["dog"]), obj(1, [200, 0, 300, 100], ["ball"])]
    r = ground(
        objects,
        [],
        [
            pb("a ball", "ball", [[200, 0, 300, 100]]),
            pb("the sky", "sky", np.zeros((0, 4))),
            pb("a dog", "dog", [[0, 0, 100, 100]]),
        ],
    )
    assert r.relationships == [{"phrase": "a ball", "object_ids": [1]}, {"phrase": "a dog", "object_ids": [0]}]
    assert r.links == {"a ball": [1], "the sky": [], "a dog": [0]}
    assert list(r.boxes) == ["a ball", "a dog"]


def test_best_box_per_phrase_ties_keep_the_earlier_box():
    r = ground([], [], [pb("a cat", "cat", [[0, 0, 10, 10], [20.004, 0, 30, 10], [40, 0, 50, 10]], [0.5, 0.8, 0.8])])
    assert r.boxes == {"a cat": [20.0, 0.0, 30.0, 10.0]}


def test_degenerate_boxes_are_ignored_and_malformed_input_raises():
    r = ground([], [], [pb("a line", "line", [[5, 5, 5, 50], [np.nan, 0, 1, 1], [10, 10, 5, 20]])])
    assert r.floating_objects == [] and r.links == {"a line": []} and r.boxes == {}
    with pytest.raises(ValueError):
        ground([], [], [PhraseBoxes("p", "p", np.zeros((2, 4)), np.zeros(3))])
    with pytest.raises(ValueError):
        ground([], [], [PhraseBoxes("p", "p", np.zeros((2, 3)), np.zeros(2))])
    with pytest.raises(ValueError):
        ground([obj(1, [0, 0, 1, 1], ["a"])], [obj(1, [2, 2, 3, 3], ["b"])], [])


def test_inputs_are_not_mutated():
    objects = [obj(0, [0, 0, 100, 100], ["dog"])]
    floating = [obj(1, [200, 200, 300, 300], ["cat"], models=["owlvit"])]
    before = copy.deepcopy((objects, floating))
    r = ground(objects, floating, [pb("a puppy", "puppy", [[0, 0, 100, 100]]), pb("a kitten", "kitten", [[200, 200, 300, 300]]), pb("x", "x", [[500, 500, 600, 600]])])
    assert (objects, floating) == before
    assert ids(r.objects) == [0, 1]
    assert r.objects[0] is not objects[0]


def test_the_same_input_grounds_the_same_in_any_process():
    """Resume re-runs grounding in other processes: the result must not hang on set or dict order
    (string hashing is randomised per process)."""
    import subprocess
    import sys

    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_grounding import obj, pb, ground; "
        "objects = [obj(0, [0, 0, 100, 100], ['dog']), obj(3, [10, 0, 110, 100], ['cat'])]; "
        "phrases = [pb('a dog', 'dog', [[5, 0, 105, 100], [300, 300, 400, 400]]), pb('two cats', 'cat', "
        "[[300, 300, 400, 401], [12, 0, 110, 100]]), pb('a toy', 'toy', [[0, 0, 50, 50]])]; "
        "r = ground(objects, [], phrases); print(json.dumps([r.objects, r.floating_objects, r.links, r.boxes], default=vars))"
    )
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1 and '"dog"' in outputs.pop()


# -- caption details ----------------------------------------------------------------------------------

CAPTION = "a man riding a brown horse"


def test_caption_details_in_span_order_with_ids_and_boxes():
    phrases = [("a brown horse", 13, 26), ("a man", 0, 5)]
    links = {"a man": [2], "a brown horse": []}
    boxes = {"a man": [1.0, 2.0, 3.0, 4.0]}
    details = caption_details(CAPTION, phrases, links, boxes)
    assert details == [
        {"phrase": "a man", "tokens_positive": [0, 5], "ids": [2], "bbox": [1.0, 2.0, 3.0, 4.0]},
        {"phrase": "a brown horse", "tokens_positive": [13, 26], "ids": [], "bbox": None},
    ]
    for d in details:
        s, e = d["tokens_positive"]
        assert CAPTION[s:e] == d["phrase"]
        GroundedPhrase(**d)
    details[0]["ids"].append(99)
    assert links["a man"] == [2]  # the details hold copies


def test_caption_details_phrase_without_links_entry():
    assert caption_details(CAPTION, [("horse", 21, 26)], {}, {}) == [
        {"phrase": "horse", "tokens_positive": [21, 26], "ids": [], "bbox": None}
    ]


@pytest.mark.parametrize("span", [("a man", 1, 6), ("horse", 21, 27), ("a man", -1, 4), ("", 3, 3)])
def test_caption_details_raises_on_a_wrong_span(span):
    with pytest.raises(ValueError):
        caption_details(CAPTION, [span], {}, {})
