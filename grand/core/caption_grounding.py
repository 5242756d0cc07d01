"""Level 3: the dense caption's phrases linked back to the image's objects (reference:
docs/REFERENCE_PIPELINE.md, "Level 3 — Grounding the dense caption back to masks").

Three passes over one caption; candidates are `objects` and `floating_objects` together (their ids
are unique per image). Earlier passes win:

1. Exact: every object attribute and every level-2 relationship phrase found in the caption,
   case-insensitive, on word boundaries (a hyphen joined to a word continues it: "a dog" is not in
   "a dog-friendly cafe"), any run of spaces matching any other, never across a line break. An
   attribute links its object (all objects that carry it); a relationship phrase its `object_ids`.
   Single-word strings are skipped here ("red" is no region); pass 3 covers single-word labels.
2. Lemma overlap: the caption's spaCy phrases (grand.core.phrases' "subtree" phrases, plus spaCy's
   noun chunks, so that "a man" in "a man riding a horse" is tried too) against each object's words
   (label, labels, attribute words). A phrase's content words are its tokens minus stop words,
   determiners, prepositions, numbers and punctuation; the score is the share of them found among
   the object's words (lemma, lower-case text or a singular form). A match needs score >=
   `spec.lemma_overlap` and the phrase's head noun among the object's labels or attribute heads (so
   "the horse ridden by a man" never links the man whose attribute is "man riding a horse").
3. Head noun: every noun whose lemma / singular form is an object label (multi-word labels such as
   "traffic light" must appear whole, ending at the noun; the longest matching label wins). The span
   is the noun's base noun phrase up to the noun ("Two dogs"), or the label's words when spaCy has no
   chunk there. "man", "woman", "men", "women", "people", "boy", "girl", "child", ... match "person"
   (level 1 normalises those labels to "person", reference rule). Skipped: compound modifiers
   ("dog" in "dog bed" names a kind of bed) and the noun of a hyphenated modifier ("dog" in
   "dog-friendly"). Only a singular compound of a singular noun is skipped: the small model parses
   subject + verb as a compound too ("dogs sleep", "a child plays"), and "dog beds" is the rarer case.

Spans of passes 2 and 3 are cut around their head noun at sentence starts, line breaks, commas,
semicolons and sentence punctuation (spaCy's chunks sometimes run over "Dogs? dogs"), and their
edge punctuation, spaces and conjunctions are trimmed.

Which objects a phrase gets: exact matches get every object they name. For passes 2 and 3, a plural
phrase (plural head, or a head coordinated with another noun inside the phrase: "a man and a
child") gets all the objects with the best score; a singular one gets one: the best score, then
the most attribute words matched (pass 3: whether an attribute uses the noun), then the largest
box, then the lowest id, preferring an object no earlier singular phrase took (so "a dog ...
another dog" names two dogs when there are two). In pass 3 the score is the label length in words.

Overlaps: within a pass the longer span wins, then the earlier one; a span overlapping one kept by
an earlier pass is dropped (so an exact "brown dog" beats a longer "A big brown dog" of pass 2).
Results never overlap and are sorted by start.

Output: dicts {phrase, tokens_positive: [start, end), ids, bbox} (grand.schema.GroundedPhrase),
caption[start:end] == phrase always, ids ascending (one id for a singular phrase). bbox is the union
of the linked objects' boxes: one box that holds every region the phrase names (for one object, its
own box), like the single box level 2 keeps per phrase; None if no linked object has a valid box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Sequence

from grand.config import CaptionGroundingSpec
from grand.core.phrases import DEFAULT_MODEL, PhraseExtractor

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span, Token

_BATCH_SIZE = 64
_CACHE_LIMIT = 50_000  # analysed object strings kept per grounder (labels repeat across images)
_NON_CONTENT_POS = frozenset({"DET", "PRON", "ADP", "CCONJ", "SCONJ", "PUNCT", "SPACE", "AUX", "PART", "NUM", "SYM", "X"})
_NOUN_POS = frozenset({"NOUN", "PROPN"})
_IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "people": "person", "persons": "person", "children": "child",
    "feet": "foot", "teeth": "tooth", "geese": "goose", "mice": "mouse", "oxen": "ox", "sheep": "sheep",
    "fish": "fish", "deer": "deer", "knives": "knife", "leaves": "leaf", "shelves": "shelf",
    "wolves": "wolf", "loaves": "loaf", "halves": "half", "scarves": "scarf", "lives": "life", "wives": "wife",
}
# caption words that name a "person" object (level 1 normalises man/woman/men/women to "person")
PERSON_WORDS = frozenset({
    "person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
    "lady", "guy", "adult", "player", "rider", "skier", "surfer", "skateboarder", "pedestrian",
})


# -- words ------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def singular_forms(word: str) -> frozenset[str]:
    """The word and its plausible singulars (lower-case): irregular plurals, -ies, -ves, -es, -s. Extra
    forms are harmless (they are only looked up), a missed singular loses a match."""
    w = word.lower()
    out = {w}
    if w in _IRREGULAR_PLURALS:
        out.add(_IRREGULAR_PLURALS[w])
    if len(w) > 4 and w.endswith("ies"):
        out.add(w[:-3] + "y")
    if len(w) > 4 and w.endswith("ves"):
        out.update({w[:-3] + "f", w[:-3] + "fe"})
    if len(w) > 3 and w.endswith("es"):
        out.add(w[:-2])
    if len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        out.add(w[:-1])
    return frozenset(out)


def token_forms(token: "Token") -> frozenset[str]:
    """Lower-case text, lemma and singular forms of one token."""
    forms = singular_forms(token.text)
    return forms | {token.lemma_.lower()} if token.lemma_ else forms


def _is_content(token: "Token") -> bool:
    return token.pos_ not in _NON_CONTENT_POS and not token.is_stop and any(c.isalpha() for c in token.text)


def _is_plural_form(token: "Token") -> bool:
    return token.tag_ in ("NNS", "NNPS") or "Plur" in token.morph.get("Number")


def _is_plural(head: "Token", span: "Span") -> bool:
    if _is_plural_form(head):
        return True
    # "a man and a child": a coordinated noun inside the phrase makes it name several things
    return any(c.dep_ == "conj" and c.pos_ in _NOUN_POS and span.start <= c.i < span.end for c in head.children)


@dataclass(frozen=True)
class TextWords:
    """What passes 2 and 3 need of an object string (label or attribute), from its spaCy parse."""

    words: tuple[str, ...]  # lower-case word tokens, in order (multi-word label matching)
    forms: frozenset[str]  # forms of its content tokens
    head_forms: frozenset[str]  # forms of its head noun (first noun chunk's root, else first noun)


def analyse_text(doc: "Doc") -> TextWords:
    tokens = [t for t in doc if not t.is_space]
    while tokens and not any(c.isalnum() for c in tokens[0].text):
        tokens.pop(0)
    while tokens and not any(c.isalnum() for c in tokens[-1].text):
        tokens.pop()
    words = tuple(t.lower_ for t in tokens)
    forms = frozenset().union(*(token_forms(t) for t in doc if _is_content(t) or t.pos_ in _NOUN_POS))
    head = next((c.root for c in doc.noun_chunks if c.root.pos_ in _NOUN_POS), None)
    if head is None:
        head = next((t for t in doc if t.pos_ in _NOUN_POS), None)
    return TextWords(words, forms, token_forms(head) if head is not None else frozenset())


@dataclass
class ObjectWords:
    """One candidate object as the passes see it."""

    id: int
    area: float
    bbox: list[float] | None
    labels: list[tuple[tuple[str, ...], frozenset[str]]]  # (words, forms of the last word) of label and labels (+ person words)
    label_forms: frozenset[str]
    head_forms: frozenset[str]  # label forms + attribute head forms
    attr_forms: frozenset[str]
    all_forms: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.all_forms = self.label_forms | self.attr_forms


# -- candidates and overlap resolution ----------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A span of the caption and the objects it may name. single: pick one of `ids` (ranked, best
    first); otherwise it names all of them."""

    start: int
    end: int
    ids: tuple[int, ...]
    single: bool = False


def resolve_overlaps(candidates: Iterable[Candidate], kept: Sequence[Candidate] = ()) -> list[Candidate]:
    """The candidates to keep: longer first, then earlier, each kept only if it overlaps neither a
    candidate kept before it nor any of `kept` (an earlier pass's result). Deterministic."""
    taken = [(c.start, c.end) for c in kept]
    out = []
    for c in sorted(candidates, key=lambda c: (c.start - c.end, c.start)):
        if c.end > c.start and all(c.end <= s or c.start >= e for s, e in taken):
            taken.append((c.start, c.end))
            out.append(c)
    return out


def _fold(text: str) -> tuple[str, list[int]]:
    """`text` lower-cased character by character (a character whose lower case is longer stays as
    is, so that positions map back), every run of spaces/tabs as one space; line breaks are kept.
    Also returns, for each folded character, its offset in `text`."""
    out: list[str] = []
    where: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() and c not in "\r\n":
            out.append(" ")
            where.append(i)
            while i < n and text[i].isspace() and text[i] not in "\r\n":
                i += 1
            continue
        low = c.lower()
        out.append(low if len(low) == 1 else c)
        where.append(i)
        i += 1
    return "".join(out), where


def _needle(text: str) -> str | None:
    """The folded search text of an attribute or phrase (edge punctuation dropped, whitespace runs as
    one space); None for strings of fewer than two words (a lone "red" is no region)."""
    words = text.strip(" \t\n\r.,;:!?\"'()[]{}").split()
    if len(words) < 2 or not any(c.isalnum() for c in "".join(words)):
        return None
    return _fold(" ".join(words))[0]


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _bounded(hay: str, start: int, end: int) -> bool:
    """hay[start:end] stands on word boundaries; a hyphen joined to a word continues it ("a dog" is
    not in "a dog-friendly cafe")."""
    if start > 0 and (_is_word_char(hay[start - 1]) or (hay[start - 1] == "-" and start > 1 and _is_word_char(hay[start - 2]))):
        return False
    if end < len(hay) and (_is_word_char(hay[end]) or (hay[end] == "-" and end + 1 < len(hay) and _is_word_char(hay[end + 1]))):
        return False
    return True


def exact_matches(caption: str, objects: Sequence[dict], relationships: Sequence[dict] = ()) -> list[Candidate]:
    """Pass 1 (no spaCy): every occurrence of an object attribute or relationship phrase in `caption`
    (case-insensitive, word-bounded, runs of spaces alike, never across a line break), as candidates
    naming the objects behind that string (pooled when several strings are the same)."""
    known = {int(o["id"]) for o in objects}
    names: dict[str, set[int]] = {}
    for obj in objects:
        for attr in obj.get("attributes") or []:
            needle = _needle(attr) if isinstance(attr, str) else None
            if needle:
                names.setdefault(needle, set()).add(int(obj["id"]))
    for rel in relationships:
        ids = {i for i in _int_ids(rel.get("object_ids")) if i in known}
        needle = _needle(rel["phrase"]) if isinstance(rel.get("phrase"), str) else None
        if ids and needle:
            names.setdefault(needle, set()).update(ids)
    hay, where = _fold(caption)
    spans: dict[tuple[int, int], set[int]] = {}
    for needle, ids in names.items():
        at = hay.find(needle)
        while at >= 0:
            end = at + len(needle)
            if _bounded(hay, at, end):
                # the needle ends on a non-space character, which maps to exactly one of the caption
                spans.setdefault((where[at], where[end - 1] + 1), set()).update(ids)
            at = hay.find(needle, at + 1)
    return [Candidate(s, e, tuple(sorted(ids))) for (s, e), ids in sorted(spans.items())]


def _int_ids(values) -> list[int]:
    """Integer ids of a list that may hold junk (None, strings) after a round trip through JSON."""
    out = []
    for v in values or []:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            continue
    return out


# -- the grounder ---------------------------------------------------------------------------------------
class CaptionGrounder:
    """Grounds dense captions to the objects of their level-2 records (rules: module doc).

    spacy_model: installed spaCy pipeline name or path (the level-2 phrase model); with a tagger,
        lemmatizer and parser.
    spec: config `level3.grounding`.
    nlp: an already loaded pipeline to share instead of loading `spacy_model`.
    """

    def __init__(self, spacy_model: str = DEFAULT_MODEL, spec: CaptionGroundingSpec | None = None,
                 nlp: "Language | None" = None) -> None:
        self.spec = spec or CaptionGroundingSpec()
        self.phrases = PhraseExtractor(spacy_model, method="subtree", nlp=nlp)
        self.nlp = self.phrases.nlp
        self._cache: dict[str, TextWords] = {}

    def ground(self, captions: Sequence[str], records: Sequence[dict]) -> list[list[dict]]:
        """GroundedPhrase dicts of each caption against the objects of the record at the same index."""
        if len(captions) != len(records):
            raise ValueError(f"{len(captions)} captions but {len(records)} records")
        captions = [c if isinstance(c, str) else "" for c in captions]
        self._analyse_strings(s for r in records for s in _object_strings(r))
        docs = self.nlp.pipe([c[: self.nlp.max_length] for c in captions], batch_size=_BATCH_SIZE)
        return [self._ground_doc(caption, doc, record) for caption, doc, record in zip(captions, docs, records)]

    def ground_one(self, caption: str, record: dict) -> list[dict]:
        return self.ground([caption], [record])[0]

    # -- object words
    def _analyse_strings(self, strings: Iterable[str]) -> None:
        needed = set(strings)
        todo = sorted(needed - self._cache.keys())
        if len(self._cache) + len(todo) > _CACHE_LIMIT:
            self._cache.clear()
            todo = sorted(needed)
        for text, doc in zip(todo, self.nlp.pipe(todo, batch_size=256)):
            self._cache[text] = analyse_text(doc)

    def _object_words(self, obj: dict) -> ObjectWords:
        words: list[tuple[str, ...]] = []
        label_forms: set[str] = set()
        for label in _labels(obj):
            tw = self._cache[label]
            if tw.words and tw.words not in words:
                words.append(tw.words)
                label_forms |= {f for w in tw.words for f in singular_forms(w)} | tw.forms
        if "person" in label_forms:
            words += [(w,) for w in sorted(PERSON_WORDS) if (w,) not in words]
            label_forms |= PERSON_WORDS
        labels = [(w, singular_forms(w[-1])) for w in words]
        attrs = [self._cache[a] for a in _attributes(obj)]
        attr_forms = frozenset().union(*(a.forms for a in attrs))
        head_forms = frozenset(label_forms).union(*(a.head_forms for a in attrs))
        box = _valid_box(obj.get("bbox"))
        area = (box[2] - box[0]) * (box[3] - box[1]) if box else 0.0
        return ObjectWords(int(obj["id"]), area, box, labels, frozenset(label_forms), head_forms, attr_forms)

    # -- one caption
    def _ground_doc(self, caption: str, doc: "Doc", record: dict) -> list[dict]:
        objects = candidate_objects(record)
        if not objects or not caption.strip():
            return []
        words = [self._object_words(o) for o in objects]
        forms = [token_forms(t) for t in doc]
        kept = resolve_overlaps(exact_matches(caption, objects, record.get("relationships") or []))
        kept += resolve_overlaps(self._overlap_candidates(doc, forms, words), kept)
        kept += resolve_overlaps(_head_noun_candidates(doc, forms, words), kept)
        return _details(caption, kept, {w.id: w for w in words})

    def _overlap_candidates(self, doc: "Doc", forms: list[frozenset[str]], objects: list[ObjectWords]) -> list[Candidate]:
        """Pass 2 candidates: subtree phrases, then every noun chunk."""
        # the extractor's own rule on this very parse (its public extract() would parse again)
        spans = [doc.char_span(p.start, p.end) for p in self.phrases.phrases_of(doc)]
        spans += list(doc.noun_chunks)
        out = []
        for span in spans:
            if span is None:
                continue
            head = span.root
            span = _segment(span, head)
            if span is None or head.pos_ not in _NOUN_POS or _hyphen_modifier(head):
                continue
            content = [t for t in span if _is_content(t) or t.i == head.i]
            scored = []
            for obj in objects:
                if not (forms[head.i] & obj.head_forms):
                    continue
                score = sum(bool(forms[t.i] & obj.all_forms) for t in content) / len(content)
                if score >= self.spec.lemma_overlap:
                    attr_hits = sum(bool(forms[t.i] & obj.attr_forms) for t in content)
                    scored.append(((score, attr_hits), obj))
            if scored:
                out.append(_candidate(span.start_char, span.end_char, scored, plural=_is_plural(head, span)))
        return out


def _head_noun_candidates(doc: "Doc", forms: list[frozenset[str]], objects: list[ObjectWords]) -> list[Candidate]:
    """Pass 3 candidates: nouns naming an object label, spanning their base noun phrase up to the noun."""
    chunk_at: dict[int, "Span"] = {}  # token index -> the noun chunk holding it
    for chunk in doc.noun_chunks:
        chunk_at.update((i, chunk) for i in range(chunk.start, chunk.end))
    out = []
    for token in doc:
        if token.pos_ not in _NOUN_POS or not any(c.isalpha() for c in token.text) or _hyphen_modifier(token):
            continue
        if token.dep_ == "compound" and _names_a_kind(token):
            continue
        scored = []
        for obj in objects:
            n = _label_match(doc, token, forms[token.i], obj)
            if n:  # ties between objects of one label: the one whose attributes use this noun
                scored.append(((n, bool(forms[token.i] & obj.attr_forms)), obj))
        if not scored:
            continue
        longest = max(key[0] for key, _ in scored)
        scored = [(key, obj) for key, obj in scored if key[0] == longest]
        first = token.i - longest + 1
        chunk = chunk_at.get(token.i)
        if chunk is not None and chunk.start <= first:
            start = chunk.start
        else:  # no chunk (a misparse): take the determiners, adjectives and numbers just before it
            start = first
            while start > 0 and doc[start - 1].pos_ in ("DET", "ADJ", "NUM"):
                start -= 1
        span = _segment(doc[start: token.i + 1], token)
        if span is None or span.start > first:  # a break inside the label's words: no match
            continue
        out.append(_candidate(span.start_char, span.end_char, scored, plural=_is_plural(token, span)))
    return out


def _names_a_kind(compound: "Token") -> bool:
    """A compound modifier names a kind of its head ("dog bed"), not an object of its own. But the
    small model often parses subject + verb as a compound ("dogs sleep", "a child plays": the verb
    tagged as a plural noun, or left a verb), so only a singular compound of a singular noun counts."""
    head = compound.head
    return not _is_plural_form(compound) and head.pos_ in _NOUN_POS and not _is_plural_form(head)


def _label_match(doc: "Doc", token: "Token", forms: frozenset[str], obj: ObjectWords) -> int:
    """Number of words of the longest label of `obj` that ends at `token` (its forms given; 0: none)."""
    best = 0
    for words, last_forms in obj.labels:
        if len(words) <= best or not (last_forms & forms):
            continue
        first = token.i - len(words) + 1
        if first < 0:
            continue
        if all(doc[first + k].lower_ == w for k, w in enumerate(words[:-1])):
            best = len(words)
    return best


def _candidate(start: int, end: int, scored: list[tuple[tuple, ObjectWords]], plural: bool) -> Candidate:
    """A plural phrase names every object with the best score (key[0]); a singular one ranks the
    objects with the best full key (score, then tie-breakers) by box area, then id."""
    if plural:
        top = max(key[0] for key, _ in scored)
        return Candidate(start, end, tuple(sorted(obj.id for key, obj in scored if key[0] == top)))
    top = max(key for key, _ in scored)
    best = sorted((obj for key, obj in scored if key == top), key=lambda o: (-o.area, o.id))
    return Candidate(start, end, tuple(o.id for o in best), single=True)


def _details(caption: str, kept: list[Candidate], objects: dict[int, ObjectWords]) -> list[dict]:
    used: set[int] = set()
    out = []
    for c in sorted(kept, key=lambda c: (c.start, c.end)):
        if c.single:
            pick = next((i for i in c.ids if i not in used), c.ids[0])
            used.add(pick)
            ids = [pick]
        else:
            ids = list(c.ids)
        phrase = caption[c.start: c.end]
        if not phrase.strip():
            continue
        out.append({
            "phrase": phrase,
            "tokens_positive": [int(c.start), int(c.end)],
            "ids": [int(i) for i in ids],
            "bbox": union_box([objects[i].bbox for i in ids if i in objects]),
        })
    return out


# -- helpers ----------------------------------------------------------------------------------------
def candidate_objects(record: dict) -> list[dict]:
    """objects and floating_objects of a level-2 record (ids unique across both), duplicates dropped."""
    seen: set[int] = set()
    out = []
    for obj in [*(record.get("objects") or []), *(record.get("floating_objects") or [])]:
        if obj.get("id") is None or int(obj["id"]) in seen:
            continue
        seen.add(int(obj["id"]))
        out.append(obj)
    return out


def _labels(obj: dict) -> list[str]:
    out = []
    for label in [obj.get("label"), *(obj.get("labels") or [])]:
        if isinstance(label, str) and label.strip():
            text = label.replace("_", " ").strip()
            if text not in out:
                out.append(text)
    return out


def _attributes(obj: dict) -> list[str]:
    return [a.strip() for a in obj.get("attributes") or [] if isinstance(a, str) and a.strip()]


def _object_strings(record: dict) -> list[str]:
    return [s for obj in candidate_objects(record) for s in (*_labels(obj), *_attributes(obj))]


_BREAKS = frozenset({".", "!", "?", ";", ",", "…", "。", "！", "？", "；", "，"})


def _hyphen_modifier(token: "Token") -> bool:
    """The noun of a hyphenated modifier ("dog" in "dog-friendly"), which names no object."""
    nxt = token.nbor(1) if token.i + 1 < len(token.doc) else None
    return nxt is not None and not token.whitespace_ and nxt.text in ("-", "–", "‐")


def _segment(span: "Span", head: "Token") -> "Span | None":
    """The part of `span` around `head` that crosses no sentence start, line break, comma or sentence
    punctuation (the small model lets noun chunks run over "?" or a new line), edges trimmed; None
    when the head does not survive."""
    doc = span.doc
    start, end = span.start, span.end
    for i in range(head.i, start, -1):  # a break between tokens i-1 and i
        if doc[i].is_sent_start or doc[i - 1].text in _BREAKS or "\n" in doc[i - 1].whitespace_ or _newline(doc[i - 1]):
            start = i
            break
    for i in range(head.i + 1, end):
        if doc[i].is_sent_start or doc[i].text in _BREAKS or "\n" in doc[i - 1].whitespace_ or _newline(doc[i]):
            end = i
            break
    if not start <= head.i < end:
        return None
    trimmed = _trim(doc[start:end])
    return trimmed if trimmed is not None and trimmed.start <= head.i < trimmed.end else None


def _newline(token: "Token") -> bool:
    return token.is_space and "\n" in token.text


def _trim(span: "Span") -> "Span | None":
    """The span without edge punctuation, spaces, conjunctions or symbols; None if nothing is left."""
    start, end = span.start, span.end
    doc = span.doc

    def edge(t: "Token") -> bool:
        return t.is_punct or t.is_space or t.pos_ == "CCONJ" or not any(c.isalnum() for c in t.text)

    while start < end and edge(doc[start]):
        start += 1
    while end > start and edge(doc[end - 1]):
        end -= 1
    return doc[start:end] if end > start else None


def _valid_box(b) -> list[float] | None:
    try:
        x1, y1, x2, y2 = (float(v) for v in b)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
        return None
    return [x1, y1, x2, y2]


def union_box(boxes: Iterable[list[float] | None]) -> list[float] | None:
    """The smallest box holding every valid box (rounded to 0.01 px), or None."""
    valid = [b for b in (_valid_box(b) for b in boxes if b is not None) if b is not None]
    if not valid:
        return None
    return [round(min(b[0] for b in valid), 2), round(min(b[1] for b in valid), 2),
            round(max(b[2] for b in valid), 2), round(max(b[3] for b in valid), 2)]
