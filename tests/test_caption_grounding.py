"""Grounding the level-3 dense caption back to objects (grand/core/caption_grounding.py) with the real
spaCy English model: one fixture per pass, overlap resolution, and span validity over tricky captions."""

from __future__ import annotations

import dataclasses

import pytest

from grand.config import CaptionGroundingSpec
from grand.core.caption_grounding import (
    CaptionGrounder, Candidate, exact_matches, resolve_overlaps, singular_forms, union_box,
)
from grand.schema import GroundedPhrase, Level2Row, ObjectRecord, Relationship

# spaCy's CLI module imports a deprecated click helper; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Importing 'parser.split_arg_string':DeprecationWarning")


def obj(i, label, bbox=(0, 0, 10, 10), attributes=(), labels=None) -> ObjectRecord:
    return ObjectRecord(id=i, bbox=[float(v) for v in bbox], label=label, labels=list(labels or [label]), score=0.9,
                        models=["a", "b"], attributes=list(attributes), depth=1.0)


def record(objects=(), floating=(), relationships=()) -> dict:
    row = Level2Row(image_id="img", shard="s", index=0, status="ok", objects=list(objects),
                    floating_objects=list(floating),
                    relationships=[Relationship(phrase=p, object_ids=list(ids)) for p, ids in relationships])
    return dataclasses.asdict(row)


@pytest.fixture(scope="module")
def grounder() -> CaptionGrounder:
    return CaptionGrounder(spec=CaptionGroundingSpec())


def found(details: list[dict]) -> list[tuple[str, list[int]]]:
    return [(d["phrase"], d["ids"]) for d in details]


def check_valid(caption: str, details: list[dict], rec: dict) -> None:
    ids = {o["id"] for o in rec["objects"] + rec["floating_objects"]}
    end = 0
    for d in details:
        GroundedPhrase(**d)  # the schema's shape, nothing more
        s, e = d["tokens_positive"]
        assert isinstance(s, int) and isinstance(e, int)
        assert 0 <= s < e <= len(caption) and caption[s:e] == d["phrase"] and d["phrase"].strip() == d["phrase"]
        assert s >= end, "spans overlap or are out of order"
        end = e
        assert d["ids"] and set(d["ids"]) <= ids
        assert d["bbox"] is None or (len(d["bbox"]) == 4 and all(isinstance(v, float) for v in d["bbox"]))


# -- pass 1: exact -----------------------------------------------------------------------------------
def test_pass1_attribute_phrase(grounder):
    rec = record([obj(0, "person", (10, 10, 50, 90), ["man in a red shirt"]), obj(1, "person", (60, 10, 90, 90))])
    caption = "A MAN IN A RED  SHIRT stands near the door."
    details = grounder.ground_one(caption, rec)
    assert found(details)[0] == ("MAN IN A RED  SHIRT", [0])  # case and whitespace runs do not matter
    assert details[0]["tokens_positive"] == [2, 21] and details[0]["bbox"] == [10.0, 10.0, 50.0, 90.0]


def test_pass1_relationship_phrase_names_all_its_objects(grounder):
    rec = record([obj(0, "dog", (0, 0, 100, 100)), obj(1, "ball", (200, 50, 220, 70))],
                 relationships=[("a dog chasing a ball", [0, 1]), ("a ghost", [99])])
    details = grounder.ground_one("In the park, a dog chasing a ball runs past.", rec)
    assert found(details) == [("a dog chasing a ball", [0, 1])]  # inner "a ball" lost to the earlier pass
    assert details[0]["bbox"] == [0.0, 0.0, 220.0, 100.0]  # union of both boxes


def test_exact_matches_rules():
    objects = [dataclasses.asdict(obj(0, "car", attributes=["red car", "red", "shiny  red car."])),
               dataclasses.asdict(obj(1, "car", attributes=["Red Car"]))]
    caption = "A red car, a red cart, and another RED CAR; red."
    got = exact_matches(caption, objects, [{"phrase": "another red car", "object_ids": [1]}])
    assert [(caption[c.start:c.end], c.ids) for c in got] == [
        ("red car", (0, 1)),  # two objects carry it: pooled
        ("another RED CAR", (1,)), ("RED CAR", (0, 1)),
    ]  # "red cart" is no word-bounded match; the single word "red" is skipped


# -- pass 2: lemma overlap -----------------------------------------------------------------------------
def test_pass2_lemma_overlap_links_via_attributes(grounder):
    rec = record([obj(0, "vehicle", (0, 0, 300, 200), ["old red pickup trucks"]), obj(1, "tree", (400, 0, 500, 300))])
    assert found(grounder.ground_one("An old pickup truck is parked under a tree.", rec)) == [
        ("An old pickup truck", [0]), ("a tree", [1])]


def test_pass2_threshold_comes_from_the_spec(grounder):
    rec = record([obj(0, "vehicle", (0, 0, 300, 200), ["old red pickup truck"])])
    caption = "A shiny pickup truck."  # content words shiny, pickup, truck: 2 of 3 known
    assert grounder.ground_one(caption, rec) == []
    loose = CaptionGrounder(spec=CaptionGroundingSpec(lemma_overlap=0.5), nlp=grounder.nlp)
    assert found(loose.ground_one(caption, rec)) == [("A shiny pickup truck", [0])]


def test_pass2_needs_the_head_noun(grounder):
    # the man's attribute holds every word of the phrase, but the phrase is about the horse
    rec = record([obj(0, "person", (0, 0, 100, 200), ["man riding a horse"]), obj(1, "horse", (0, 50, 200, 250))])
    assert found(grounder.ground_one("The horse ridden by a man is tired.", rec)) == [("The horse", [1]), ("a man", [0])]


# -- pass 3: head noun ----------------------------------------------------------------------------------
def test_pass3_plural_head_noun_names_all_matching_objects(grounder):
    rec = record([obj(0, "dog", (0, 0, 100, 100)), obj(1, "dog", (300, 0, 350, 50)), obj(2, "cat", (600, 0, 650, 50))])
    details = grounder.ground_one("Two fluffy dogs are sleeping.", rec)  # "fluffy" unknown: pass 2 scores 1/2
    assert found(details) == [("Two fluffy dogs", [0, 1])]
    assert details[0]["bbox"] == [0.0, 0.0, 350.0, 100.0]
    # the small model parses "dogs sleep" as a compound noun: a plural compound still counts
    assert found(grounder.ground_one("Two fluffy dogs sleep.", rec)) == [("Two fluffy dogs", [0, 1])]


def test_pass3_singular_mentions_take_distinct_objects(grounder):
    rec = record([obj(0, "dog", (0, 0, 50, 50)), obj(1, "dog", (100, 0, 300, 200))])
    details = grounder.ground_one("A happy dog watches while another happy dog is eating.", rec)
    assert found(details) == [("A happy dog", [1]), ("another happy dog", [0])]  # largest first


def test_pass3_person_words_plural_forms_and_multiword_labels(grounder):
    rec = record([
        obj(0, "person", (0, 0, 50, 100)), obj(1, "person", (60, 0, 110, 100)),
        obj(2, "traffic light", (500, 0, 520, 60)), obj(3, "light", (600, 0, 620, 20)),
        obj(4, "bus", (700, 0, 900, 100)),
    ])
    caption = "Three tall men wait by a red traffic light while blue buses pass."
    assert found(grounder.ground_one(caption, rec)) == [
        ("Three tall men", [0, 1]), ("a red traffic light", [2]), ("blue buses", [4])]


def test_pass3_skips_compound_modifiers(grounder):
    rec = record([obj(0, "dog", (0, 0, 50, 50))])
    assert grounder.ground_one("A soft dog bed.", rec) == []


def test_floating_objects_are_candidates(grounder):
    rec = record([obj(0, "car", (0, 0, 10, 10))], floating=[obj(5, "kite", (100, 0, 120, 20))])
    assert found(grounder.ground_one("A small kite above a car.", rec)) == [("A small kite", [5]), ("a car", [0])]


def test_earlier_pass_wins_over_longer_later_span(grounder):
    rec = record([obj(0, "dog", (0, 0, 50, 50), ["brown dog"]), obj(1, "sofa", (0, 0, 300, 200))])
    details = grounder.ground_one("A big brown dog on the sofa.", rec)
    # pass 1 takes "brown dog"; pass 2/3's "A big brown dog" overlaps it and is dropped
    assert found(details) == [("brown dog", [0]), ("the sofa", [1])]


# -- overlaps, boxes, words ----------------------------------------------------------------------------
def test_resolve_overlaps_longer_then_earlier():
    cands = [Candidate(0, 5, (1,)), Candidate(3, 12, (2,)), Candidate(10, 19, (3,)), Candidate(20, 25, (4,)), Candidate(4, 4, (5,))]
    assert [c.ids for c in resolve_overlaps(cands)] == [(2,), (4,)]  # 9-char tie: the earlier one
    assert resolve_overlaps([Candidate(0, 5, (1,)), Candidate(5, 8, (2,))], kept=[Candidate(4, 5, (9,))]) == [Candidate(5, 8, (2,))]


def test_union_box_and_singulars():
    assert union_box([[0, 0, 10, 10], None, [5, -5, 20, 8], [1, 1, float("nan"), 2]]) == [0.0, -5.0, 20.0, 10.0]
    assert union_box([]) is None and union_box([None]) is None
    for plural, single in [("dogs", "dog"), ("buses", "bus"), ("people", "person"), ("knives", "knife"),
                           ("puppies", "puppy"), ("men", "man"), ("glasses", "glass")]:
        assert single in singular_forms(plural)
    assert singular_forms("glass") == {"glass"} and singular_forms("bus") == {"bus"}


# -- robustness ----------------------------------------------------------------------------------------
TRICKY = [
    "", "   ", "...", "\n\t", "dog", "dog dog dog dog", "A dog. A dog. A dog.", "Dogs! Dogs? dogs.",
    "A dog—and a cat—sit on a mat.", "“A dog” said the man’s cat.", "A café with a dog 🐶 and a cat 🐱.",
    "一只狗 and a dog, ein Hund.", "naïve résumé: a person, a PERSON, a Person.",
    "A red car, a red car, a red car.", "  A dog   with\n\na  red   collar  ", "(a dog) [a cat] {a car}",
    "The dog's owner's cat's toy.", "A man in a red shirt holds a man in a red shirt.",
    "Dog" * 50, "a " * 200 + "dog", "Tom & Jerry: cat vs. mouse!!!", "A dog-friendly café; cats welcome.",
]
TRICKY_RECORD = record(
    [obj(0, "dog", (0, 0, 50, 50), ["a red collar", "dog with a red collar"]), obj(1, "cat", (60, 0, 90, 30)),
     obj(2, "person", (100, 0, 150, 100), ["man in a red shirt"]), obj(3, "car", (200, 0, 300, 60), ["red car"])],
    floating=[obj(4, "mouse", (400, 0, 410, 10))],
    relationships=[("a dog", [0]), ("a red car", [3]), ("the man's cat", [2, 1])],
)


def test_spans_always_valid_and_disjoint(grounder):
    results = grounder.ground(TRICKY, [TRICKY_RECORD] * len(TRICKY))
    assert len(results) == len(TRICKY)
    for caption, details in zip(TRICKY, results):
        check_valid(caption, details, TRICKY_RECORD)
    by_caption = dict(zip(TRICKY, results))
    assert found(by_caption["A dog. A dog. A dog."]) == [("A dog", [0])] * 3
    assert found(by_caption["A red car, a red car, a red car."]) == [("A red car", [3])] + [("a red car", [3])] * 2
    assert by_caption[""] == [] and by_caption["..."] == []
    # spans never run over sentence punctuation, line breaks or into hyphenated modifiers
    assert found(by_caption["Dogs! Dogs? dogs."]) == [("Dogs", [0]), ("Dogs", [0]), ("dogs", [0])]
    assert found(by_caption["  A dog   with\n\na  red   collar  "]) == [("A dog", [0]), ("a  red   collar", [0])]
    assert found(by_caption["A dog-friendly café; cats welcome."]) == [("cats", [1])]


def test_no_objects_empty_caption_and_bad_input(grounder):
    assert grounder.ground_one("A dog on a sofa.", record()) == []
    assert grounder.ground_one("", TRICKY_RECORD) == []
    assert grounder.ground([None], [TRICKY_RECORD]) == [[]]  # type: ignore[list-item]
    assert grounder.ground([], []) == []
    with pytest.raises(ValueError, match="2 captions but 1 records"):
        grounder.ground(["a", "b"], [TRICKY_RECORD])
    # a parquet-style record: keys may be missing or None
    assert found(grounder.ground_one("A dog.", {"objects": [{"id": 3, "bbox": None, "label": "dog"}],
                                                "floating_objects": None})) == [("A dog", [3])]


def test_spans_valid_on_random_captions(grounder):
    import random

    rng = random.Random(0)
    pieces = ["a", "A", "the", "dog", "dogs", "red", "car", "cars", "man", "men", "in", "with", "shirt", "cat",
              "mouse", "collar", ",", ".", "!", "?", ";", "-", "—", "\n", "  ", "é", "🐶", "“", "”", "'s", "(", ")",
              "red car", "man in a red shirt", "dog with a red collar", "traffic", "light"]
    captions = []
    for _ in range(200):
        words = [rng.choice(pieces) for _ in range(rng.randint(0, 25))]
        captions.append("".join(w + rng.choice(["", " ", " ", " ", "  "]) for w in words))
    for caption, details in zip(captions, grounder.ground(captions, [TRICKY_RECORD] * len(captions))):
        check_valid(caption, details, TRICKY_RECORD)


def test_coordination_is_plural_only_inside_the_phrase(grounder):
    rec = record([obj(0, "person", (0, 0, 50, 100), ["man in shorts"]), obj(1, "person", (60, 0, 100, 80), ["small child"]),
                  obj(2, "person", (200, 0, 300, 200))])
    # pass 2: the subtree phrase holds both nouns, so it names every best-scoring person
    assert found(grounder.ground_one("A man and a child are walking.", rec)) == [("A man and a child", [0, 1, 2])]
    # pass 3 spans hold one noun each: one person apiece, the one whose attributes use the noun
    assert found(grounder.ground_one("A tall man and a tall child are walking.", rec)) == [
        ("A tall man", [0]), ("a tall child", [1])]
    # else the largest, never the same one twice
    assert found(grounder.ground_one("A tall woman and a tall girl are walking.", rec)) == [
        ("A tall woman", [2]), ("a tall girl", [0])]
    # a singular phrase prefers the object whose attributes it matches; "a child plays" is parsed
    # as a compound noun by the small model and still found
    assert found(grounder.ground_one("Two men talk while a child plays.", rec)) == [("Two men", [0, 1, 2]), ("a child", [1])]
