"""Level-3 verification of the dense caption (reference: docs/REFERENCE_PIPELINE.md, "Level 3"): the
paper's chain-of-thought check, as pure logic. The LLM lists the physical objects a caption claims
(a checklist); every checklist object must be found in the image's scene graph, else the caption is
flagged and regenerated (grand.core.dense_caption runs that loop).

Three pieces, each testable alone:

- `parse_checklist`: the checklist out of the LLM's free-text answer. The checklist prompt asks for
  reasoning first and then one machine-readable line, `CHECKLIST: a; b; c` (or `CHECKLIST: none`).
  The parser takes the last such line; for models that do not follow the format it also reads
  "Objects: a, b and c", a marker followed by a bulleted/numbered list, or an answer that is only a
  short list. Anything else (reasoning without a final list, a truncated answer) is None, never a
  guessed list: an empty checklist would pass any caption.
- `scene_terms`: what counts as "present in the scene graph" for one level-2 record.
- `ObjectMatcher.find_missing`: which checklist objects are not present.

What is present (`scene_terms`): the objects the scene graph shows (`objects`, plus
`floating_objects` when `include_floating`, or when the image has no `objects` at all, as the scene
graph does) with their final `label`, every candidate in `labels` and every `attributes` text;
every relationship phrase; the landmark category and fine category. Short captions are NOT terms:
the nouns of a short caption that phrase grounding found in the image are already labels, and the
rest were never seen by a detector (a captioner's guess, and no mask to ground the dense caption
on). The object cap of the scene graph (`scene_graph.max_objects`) is not applied: a small object
left out of the prompt is still in the image.

How a checklist item matches (`ObjectMatcher`), first rule that holds wins:

1. Ignored: the item (or its last word, the head noun of an English noun phrase) is a generic word
   (`GENERIC_WORDS`): words about the picture itself (scene, image, photo, background...) and
   ambient stuff that is in nearly every photo but that no detector reports (sky, ground, daylight,
   shadow...). Such words never flag a caption. "light" is not generic ("traffic light").
2. Text: words are compared by a plural-insensitive key (`singular_key`, or the `lemmatize`
   callable given, e.g. a spaCy lemma). The item is present when the key sequence of the whole
   item, of its head word, or of either side of "X of Y" ("cup of coffee", "group of people")
   occurs as consecutive words in any term. So "dogs" matches the label "dog", "shirt" matches the
   attribute "a man in a blue shirt", and "wooden table" matches "table" through its head.
3. Synonyms: the same candidates looked up in `SYNONYMS`, a short table of groups of words that
   detectors and LLMs use for the same thing (person/man/woman/child..., car/automobile,
   sofa/couch...); present when any term's words fall in the same group.
4. Embedding: when a `similarity` callable is given, the item is present when the cosine similarity
   of its text with any term, or with any content word of a multi-word term, is >= `threshold`
   (all-MiniLM-L6-v2: puppy~dog 0.80, couch~sofa 0.86, giraffe~dog 0.33; but cat~dog 0.66, so a
   threshold near 0.7 is safer than 0.6 for that model).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Sequence

import numpy as np

from grand.core.text import MAX_MODEL_TEXT_CHARS, squash_lines

Similarity = Callable[[list[str], list[str]], np.ndarray]

CHECKLIST_MARKER = "CHECKLIST"

# Words that never flag a caption (rule 1 in the module doc). Keep it short: every word here is a
# hallucination the check can no longer catch.
GENERIC_WORDS: frozenset[str] = frozenset({
    # the picture itself, its parts and framing
    "scene", "image", "photo", "photograph", "picture", "shot", "view", "background", "foreground",
    "midground", "setting", "surroundings", "surrounding", "environment", "atmosphere", "scenery",
    "area", "space", "side", "distance", "moment", "day", "daytime", "night",
    # ambient stuff in nearly every photo that detectors do not report
    "sky", "ground", "air", "daylight", "sunlight", "lighting", "shadow", "weather",
})

# Groups of interchangeable names (rule 3). Plural forms need not be listed (keys are plural-
# insensitive). Kept short on purpose: a group is an equivalence, so only true synonyms and the
# person words that detectors fold into "person" (config level1.voting.label_aliases).
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "lady",
     "gentleman", "guy", "adult", "teenager", "human", "individual", "pedestrian", "crowd"),
    ("car", "automobile", "auto", "sedan"),
    ("bicycle", "bike"),
    ("motorcycle", "motorbike"),
    ("airplane", "aeroplane", "plane", "aircraft", "jet"),
    ("sofa", "couch", "settee"),
    ("tv", "television", "television set", "tv set"),
    ("cell phone", "cellphone", "mobile phone", "phone", "smartphone"),
    ("dog", "puppy"),
    ("cat", "kitten"),
    ("cup", "mug"),
    ("bag", "handbag", "purse"),
    ("hat", "cap"),
    ("trousers", "pants"),
    ("rock", "stone"),
    ("shoe", "sneaker", "boot"),
)

# Words dropped at the start of an item: articles, quantities ("two dogs" -> "dogs").
_LEADING = frozenset(
    "a an the some several many few various multiple numerous one two three four five six seven eight "
    "nine ten dozen couple pair lots lot of its their his her this that these those another other".split()
)
_STOPWORDS = frozenset(
    "a an the of in on at with and or to for by from near next behind under over his her its their "
    "is are was were be being while as into onto".split()
)
# plural -> singular where the suffix rules below cannot tell
_IRREGULAR = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "cacti": "cactus",
    "fungi": "fungus", "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf",
    "loaves": "loaf", "shelves": "shelf", "wolves": "wolf", "halves": "half", "calves": "calf",
    "scarves": "scarf", "thieves": "thief", "hooves": "hoof",
}
_NONE_ANSWERS = frozenset({"none", "nothing", "no objects", "no object", "n/a", "na", "-", "[]", "none."})
_MAX_FALLBACK_WORDS = 5  # a "list item" longer than this in an unmarked answer is reasoning, not a name

_MARKER_LINE = re.compile(r"^[\s>*#_`\-]*(?P<label>[A-Za-z][A-Za-z ]{0,40}?)\s*[*_`]*\s*[:：]\s*(?P<rest>.*)$")
_MARKER_WORDS = frozenset({"checklist", "objects", "object", "list", "answer", "items"})
_LIST_ITEM = re.compile(r"^\s*(?:[-*•·+]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+(?P<item>.+)$", re.IGNORECASE)
_PAREN = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_WORD = re.compile(r"[^\W_]+")


# -- parsing the checklist answer ---------------------------------------------------------------------
def parse_checklist(text: object) -> list[str] | None:
    """The object names of a checklist answer (module doc), in order, duplicates removed (case-
    insensitive), articles and counts dropped ("two dogs" -> "dogs"). [] for an explicit "none";
    None when no list can be read. Never raises."""
    try:
        return _parse_checklist(text)
    except Exception:  # a parser bug must cost one verification, never a batch
        return None


def _parse_checklist(text: object) -> list[str] | None:
    if not isinstance(text, str):
        return None
    # cap and collapse whitespace first: the patterns below backtrack on long runs of spaces
    text = unicodedata.normalize("NFKC", text[:MAX_MODEL_TEXT_CHARS])
    lines = [_strip_markdown(line) for line in squash_lines(text)]
    marker = _last_marker(lines)
    if marker is not None:
        index, rest, strict = marker
        items = _items_from_line(rest) if rest else _list_after(lines, index + 1)
        if not items:  # [] = an explicit "none"; None = nothing readable ("CHECKLIST:" cut off)
            return items
        if not strict and any(len(_WORD.findall(i)) > _MAX_FALLBACK_WORDS for i in items):
            return None  # "Answer: the caption describes ..." is a sentence, not a list
        return _dedupe(items)
    return _unmarked_list(lines)


def _strip_markdown(line: str) -> str:
    return line.replace("**", "").replace("__", "").replace("`", "").strip()


def _last_marker(lines: list[str]) -> tuple[int, str, bool] | None:
    """(line index, text after the colon, is a CHECKLIST line) of the last `CHECKLIST:` line, else of
    the last line whose label names a list ("Objects:", "Final answer:", "Objects mentioned:")."""
    best: tuple[int, str, bool] | None = None
    for i, line in enumerate(lines):
        m = _MARKER_LINE.match(line)
        if not m:
            continue
        words = set(m["label"].lower().split())
        if CHECKLIST_MARKER.lower() in words:
            best = (i, m["rest"].strip(), True)
    if best is not None:
        return best
    for i, line in enumerate(lines):
        m = _MARKER_LINE.match(line)
        if m and set(m["label"].lower().split()) & _MARKER_WORDS:
            best = (i, m["rest"].strip(), False)
    return best


def _items_from_line(rest: str) -> list[str] | None:
    if _is_none(_PAREN.sub(" ", rest)):
        return []
    rest = rest.strip().strip("[]{}")
    parts = rest.split(";") if ";" in rest else re.split(r",|\s+(?:and|&)\s+", rest)
    return [i for i in (_clean_item(p) for p in parts) if i] or None


def _list_after(lines: list[str], start: int) -> list[str] | None:
    """Items of the list that follows a marker line: bulleted/numbered lines or short plain lines,
    up to the first blank line after an item or the first line that is not an item. [] for "none",
    None when no item follows."""
    items: list[str] = []
    for line in lines[start:]:
        if not line:
            if items:
                break
            continue
        m = _LIST_ITEM.match(line)
        if m:
            item = _clean_item(m["item"])
        elif len(_WORD.findall(line)) <= _MAX_FALLBACK_WORDS:
            if _is_none(line):
                return []
            item = _clean_item(line)
        else:
            break
        if item:
            items.append(item)
    return items or None


def _unmarked_list(lines: list[str]) -> list[str] | None:
    """A whole answer that is only a list: the last block of bulleted/numbered lines ending the
    answer, or a last line "a, b and c", every item short enough to be a name."""
    content = [line for line in lines if line]
    if not content:
        return None
    if len(content) == 1 and _is_none(content[0]):
        return []
    block: list[str] = []
    for line in reversed(content):
        m = _LIST_ITEM.match(line)
        if not m:
            break
        block.append(_PAREN.sub(" ", m["item"]))
    if block:
        block.reverse()
        if all(len(_WORD.findall(b)) <= _MAX_FALLBACK_WORDS for b in block):
            items = [i for i in (_clean_item(b) for b in block) if i]
            return _dedupe(items) if items else None
        return None
    last = content[-1]
    parts = last.split(";") if ";" in last else re.split(r",|\s+(?:and|&)\s+", last)
    if (len(content) == 1 or len(parts) > 1) and all(len(_WORD.findall(p)) <= _MAX_FALLBACK_WORDS - 1 for p in parts):
        items = [i for i in (_clean_item(p) for p in parts) if i]
        return _dedupe(items) if items else None
    return None


def _is_none(text: str) -> bool:
    return text.strip().strip(".").strip().lower() in _NONE_ANSWERS


def _clean_item(item: str) -> str:
    """'2 "Dogs" (brown).' -> 'Dogs': markers, quotes, parentheticals, articles and counts removed."""
    item = _PAREN.sub(" ", item)
    m = _LIST_ITEM.match(item)
    if m:
        item = m["item"]
    item = re.sub(r"[\"'“”‘’*_`]", " ", item)
    item = item.strip().strip(".,;:!?-– ").strip()
    words = item.split()
    while words and (words[0].lower() in _LEADING or words[0].isdigit()) and len(words) > 1:
        words = words[1:]
    if words and words[0].lower() in {"and", "or"}:
        words = words[1:]
    return " ".join(words)


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.casefold() not in seen:
            seen.add(item.casefold())
            out.append(item)
    return out


# -- what the scene graph holds ------------------------------------------------------------------------
def scene_terms(record: dict, include_floating: bool = False) -> list[str]:
    """The texts a checklist object may match for one level-2 record (a dict of
    `dataclasses.asdict(Level2Row)`; rules in the module doc), first-seen order, no duplicates
    (case-insensitive). Underscores (LVIS "traffic_light") read as spaces."""
    objects = list(record.get("objects") or [])
    floating = list(record.get("floating_objects") or [])
    pool = objects + floating if (include_floating or not objects) else objects
    texts: list[object] = []
    for obj in pool:
        texts.append(obj.get("label"))
        texts.extend(obj.get("labels") or [])
        texts.extend(obj.get("attributes") or [])
    for rel in record.get("relationships") or []:
        texts.append(rel.get("phrase") if isinstance(rel, dict) else None)
    landmark = record.get("landmark") or {}
    texts += [landmark.get("category"), landmark.get("fine_category")]
    out, seen = [], set()
    for t in texts:
        if not isinstance(t, str):
            continue
        t = " ".join(t.replace("_", " ").split())
        if t and t.casefold() not in seen:
            seen.add(t.casefold())
            out.append(t)
    return out


# -- matching -----------------------------------------------------------------------------------------
def singular_key(word: str) -> str:
    """A plural-insensitive matching key of one lower-case word (not always a word itself):
    'dogs'/'dog' -> 'dog', 'boxes'/'box' -> 'box', 'horses'/'horse' -> 'hors', 'berries'/'berry' ->
    'berry', 'cookies'/'cookie' -> 'cooky', 'knives'/'knife' -> 'knif', 'men'/'man' -> 'man'.
    The same function on both sides makes the pair meet; its output is never shown."""
    w = _IRREGULAR.get(word, word)
    if len(w) > 3 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 2 and w.endswith("ie"):
        return w[:-2] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 2 and w.endswith("e"):
        w = w[:-1]
    return w


def words_of(text: str) -> list[str]:
    """Lower-case words of a text (NFKC; hyphens and punctuation split words: "t-shirt" -> t, shirt)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


class ObjectMatcher:
    """Decides which checklist objects are absent from the scene terms (rules: module doc).

    similarity: `f(a, b) -> (len(a), len(b))` cosine matrix (grand.models.text_embedding.TextEmbedder
        .similarity), or None to match by text and synonyms only.
    threshold: cosine similarity at which an embedding match counts (config
        `level3.verification.similarity_threshold`).
    lemmatize: word -> matching key (e.g. a spaCy lemma); None = `singular_key`.
    synonyms / generic_words: the tables above, replaceable.
    """

    def __init__(
        self,
        similarity: Similarity | None = None,
        threshold: float = 0.7,
        lemmatize: Callable[[str], str] | None = None,
        synonyms: Sequence[Sequence[str]] = SYNONYMS,
        generic_words: Iterable[str] = GENERIC_WORDS,
    ) -> None:
        self.similarity = similarity
        self.threshold = float(threshold)
        self.lemmatize = lemmatize or singular_key
        self.generic = {self._key(w) for w in generic_words}
        self.synonym_group: dict[tuple[str, ...], int] = {}
        for g, group in enumerate(synonyms):
            for name in group:
                self.synonym_group[self._key(name)] = g

    def _key(self, text: str) -> tuple[str, ...]:
        return tuple(self.lemmatize(w) for w in words_of(text))

    def _candidates(self, item: str) -> list[tuple[str, ...]]:
        """Key sequences standing for the item: itself, its head word, both sides of "X of Y"."""
        words = words_of(item)
        while len(words) > 1 and words[0] in _LEADING:
            words = words[1:]
        out = [tuple(words)]
        if "of" in words[1:-1]:
            k = words.index("of", 1)
            out += [tuple(words[:k]), tuple(words[k + 1:])]
        out += [c[-1:] for c in list(out) if len(c) > 1]
        keys = []
        for c in out:
            key = tuple(self.lemmatize(w) for w in c)
            if key and key not in keys:
                keys.append(key)
        return keys

    def is_generic(self, item: str) -> bool:
        words = [w for w in words_of(item) if w not in _LEADING]
        if not words:
            return True  # nothing left to check ("the", "") cannot flag a caption
        key = tuple(self.lemmatize(w) for w in words)
        return key in self.generic or key[-1:] in self.generic

    def find_missing(self, checklist: Sequence[str], terms: Sequence[str]) -> list[str]:
        """Checklist items not present among `terms` (as given, checklist order)."""
        ngrams: set[tuple[str, ...]] = set()
        for term in terms:
            key = self._key(term)
            for n in range(1, min(len(key), 6) + 1):
                ngrams.update(key[i:i + n] for i in range(len(key) - n + 1))
        groups = {self.synonym_group[g] for g in ngrams if g in self.synonym_group}
        unresolved = []
        for item in checklist:
            if self.is_generic(item):
                continue
            cands = self._candidates(item)
            if any(c in ngrams or self.synonym_group.get(c, -1) in groups for c in cands):
                continue
            unresolved.append(item)
        targets = _embedding_targets(terms) if unresolved and self.similarity is not None else []
        if targets:
            queries = [" ".join(words_of(i)) or i for i in unresolved]
            sims = np.asarray(self.similarity(queries, targets), dtype=np.float32)
            if sims.shape != (len(queries), len(targets)):
                raise ValueError(f"similarity returned shape {sims.shape}, expected {(len(queries), len(targets))}")
            unresolved = [i for i, row in zip(unresolved, sims) if not (row.max() >= self.threshold)]
        return unresolved


def _embedding_targets(terms: Sequence[str]) -> list[str]:
    """Every term, plus the content words of multi-word terms (so "jumper" can meet the "sweater" of
    an attribute "a man in a red sweater"), no duplicates."""
    out: dict[str, None] = {}
    for term in terms:
        words = words_of(term)
        if not words:
            continue
        out[" ".join(words)] = None
        if len(words) > 1:
            for w in words:
                if w not in _STOPWORDS and not w.isdigit() and len(w) > 1:
                    out[w] = None
    return list(out)
