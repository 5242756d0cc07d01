"""Level-1 attribute and final-label helpers: object selection by area, crops, cleaning VLM region
descriptions, label candidates and choice. Expected values are worked by hand."""

import math

import numpy as np
import pytest

from grand.schema import ObjectRecord
from grand.core.attributes import choose_label, clean_description, crop_box, label_candidates, objects_to_describe


def o(bbox, labels=("thing",), label=None, attributes=()):
    return ObjectRecord(id=0, bbox=list(bbox), label=label if label is not None else labels[0], labels=list(labels),
                        score=1.0, models=["m"], attributes=list(attributes))


# -- objects_to_describe (100 x 100 image: 2 % = 200 px^2) --------------------------------------------

OBJECTS = [
    o([0, 0, 10, 20]),  # 0: 200, exactly 2 % -> kept
    o([0, 0, 10, 19]),  # 1: 190 -> too small
    o([0, 0, 50, 50]),  # 2: 2500
    o([90, 90, 150, 150]),  # 3: 3600 unclipped, 10 x 10 = 100 inside the image -> too small
    o([0, 0, 20, 20]),  # 4: 400
    o([30, 30, 50, 50]),  # 5: 400, ties with 4 -> after it
]


def test_selection_by_area_largest_first():
    assert objects_to_describe(OBJECTS, 100, 100) == [2, 4, 5, 0]


def test_selection_cap_and_fraction():
    assert objects_to_describe(OBJECTS, 100, 100, max_objects=2) == [2, 4]
    assert objects_to_describe(OBJECTS, 100, 100, min_area_fraction=0.25) == [2]
    assert objects_to_describe(OBJECTS, 100, 100, min_area_fraction=0.0) == [2, 4, 5, 0, 1, 3]
    assert objects_to_describe(OBJECTS, 100, 100, max_objects=0) == []


def test_selection_edge_cases():
    assert objects_to_describe([], 100, 100) == []
    assert objects_to_describe([o([np.nan, 0, 50, 50]), o([0, 0, 50, 50])], 100, 100, min_area_fraction=0.0) == [1]
    with pytest.raises(ValueError):
        objects_to_describe(OBJECTS, 0, 100)


# -- crop_box (100 x 100 image unless said) ------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox, margin, expected",
    [
        ([10, 10, 40, 40], 0.1, (7, 7, 43, 43)),  # pad 3 px
        ([4.1, 4.1, 15.1, 15.1], 0.1, (3, 3, 17, 17)),  # 4.1 - 0.1 * 11 is 2.9999999999999996 in floats
        ([10, 20, 40, 30], 0.5, (0, 15, 55, 35)),  # pad 15 / 5: x 10 - 15 = -5 -> 0, 40 + 15; y 20 - 5, 30 + 5
        ([0, 0, 50, 50], 0.1, (0, 0, 55, 55)),  # clipped at the top-left border
        ([80, 90, 100, 100], 0.1, (78, 89, 100, 100)),  # clipped at the bottom-right border
        ([10.5, 10.5, 20.2, 20.2], 0.0, (10, 10, 21, 21)),  # every touched pixel
        ([40, 40, 10, 10], 0.1, (7, 7, 43, 43)),  # corners swapped
        ([-20, -20, 120, 120], 0.1, (0, 0, 100, 100)),  # larger than the image
    ],
)
def test_crop_box_margin_and_clipping(bbox, margin, expected):
    assert crop_box(bbox, 100, 100, margin) == expected


@pytest.mark.parametrize(
    "bbox, expected",
    [
        ([50, 50, 50, 50], (50, 50, 51, 51)),  # a point
        ([50.4, 20, 50.4, 60], (50, 16, 51, 64)),  # a vertical line: 1 px wide
        ([100, 100, 100, 100], (99, 99, 100, 100)),  # a point on the far corner
        ([200, 200, 300, 300], (99, 99, 100, 100)),  # beyond the far corner
        ([-50, -50, -10, -10], (0, 0, 1, 1)),  # before the near corner
    ],
)
def test_crop_box_degenerate_boxes_are_at_least_one_pixel(bbox, expected):
    assert crop_box(bbox, 100, 100) == expected


def test_crop_box_types_and_errors():
    crop = crop_box(np.array([1.5, 2.5, 3.5, 4.5], np.float32), 10, 10, 0.0)
    assert crop == (1, 2, 4, 5) and all(type(v) is int for v in crop)
    assert crop_box([0, 0, 0, 0], 1, 1) == (0, 0, 1, 1)
    with pytest.raises(ValueError):
        crop_box([0, 0, math.inf, 5], 10, 10)
    with pytest.raises(ValueError):
        crop_box([0, 0, 5, 5], 0, 10)


# -- clean_description -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a red car", "a red car"),
        ('  "A photo of a red car."  ', "a red car"),
        ("The region shows a man riding a horse. He wears a hat.", "a man riding a horse"),
        ("In this region, there is a small brown dog\nIt is sleeping.", "a small brown dog"),
        ("\n\nthis is an image of the Eiffel Tower", "the Eiffel Tower"),
        ("<s> A picture of a wooden bench </s>", "a wooden bench"),
        ("A PHOTO OF A PHOTO OF a cat", "a cat"),
        ("There are two dogs!", "two dogs"),
        ("Answer: a wooden bench.", "a wooden bench"),
        ("a   blue \t cup ..", "a blue cup"),
        ("\u201ca white plate\u201d", "a white plate"),
        ("this island in the sea", "this island in the sea"),  # "this is" only as a whole word
        ("a 3.5 inch screen", "a 3.5 inch screen"),  # a decimal point ends no sentence
        ("a t-shirt -", "a t-shirt"),
        ("word " * 40, " ".join(["word"] * 24)),  # 24 words = 119 chars; a 25th would pass 120
        ("x" * 130, "x" * 120),  # one long word: hard cut
    ],
)
def test_clean_description(raw, expected):
    assert clean_description(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [None, "", "   ", "...", "\n\n", '""', "N/A", "none.", "Unknown", "a", "The", "The region shows.", "this is a photo of",
     "I'm sorry, I cannot see the region.", "</s>", "1234", "?!"],
)
def test_clean_description_junk_is_none(raw):
    assert clean_description(raw) is None


def test_clean_description_custom_cap():
    assert clean_description("a big old red car", max_chars=10) == "a big old"


# -- final label --------------------------------------------------------------------------------------


def test_label_candidates_dedupe_keeps_first_spelling_and_order():
    assert label_candidates(o([0, 0, 1, 1], labels=["Dog", "dog ", " puppy", "", "DOG", "animal"])) == ["Dog", "puppy", "animal"]


def test_label_candidates_fall_back_to_label():
    assert label_candidates(o([0, 0, 1, 1], labels=[], label="cat")) == ["cat"]
    assert label_candidates(o([0, 0, 1, 1], labels=[], label="")) == []
    assert label_candidates(o([0, 0, 1, 1], labels=["dog"], label="cat", attributes=["a black cat"])) == ["dog"]


def test_choose_label():
    assert choose_label(["dog", "puppy", "animal"], [0.2, 0.7, 0.5]) == "puppy"
    assert choose_label(["dog", "puppy", "animal"], [0.7, 0.2, 0.7]) == "dog"  # tie -> earlier
    assert choose_label(["dog", "puppy"], np.array([0.3, 0.3], np.float32)) == "dog"
    assert choose_label(["dog", "puppy"], [float("nan"), 0.1]) == "puppy"
    assert choose_label(["dog", "puppy"], [float("nan"), float("nan")]) == "dog"
    assert choose_label(["dog"], [-1.0]) == "dog"
    with pytest.raises(ValueError):
        choose_label(["dog", "puppy"], [0.1])
    with pytest.raises(ValueError):
        choose_label([], [])
