"""Landmark category (level 2): two multiple-choice questions to a vision-language model, and a
robust reading of its free-text answers.

Reference (docs/REFERENCE_PIPELINE.md, "Level 2"; groundingLMM
`GranD/level_1_inference/1_landmark_categorization/infer.py`): ask for one of four scene categories,
then for one fine category of the chosen one; numbered options, "Respond with only the option".
The reference reads an answer by plain substring tests in a fixed order, so "not indoor" reads as
Indoor and "2" as nothing; `parse_choice` below is stricter and more forgiving at once.

The runtime flow:

    q = LandmarkQuestions(base_dir)
    a1 = vlm(image, q.first_question())
    category = q.parse_category(a1)
    a2 = vlm(image, q.second_question(category)) if category is not None else None
    row.landmark = Landmark(**q.result(a1, a2))
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Sequence

from grand.prompts import load_prompt

# Categories of the reference. Its code says "Indoor scene" etc. for the four categories (we keep
# the bare names, as the schema does) and "Urban landscape" / "Rural landscape" for the outdoor
# ones (the paper's "Urban, Rural, Natural landscape" shares the last word).
LANDMARK_CATEGORIES: dict[str, list[str]] = {
    "Indoor": ["Living space", "Work space", "Public space", "Industrial space"],
    "Outdoor": ["Urban landscape", "Rural landscape", "Natural landscape"],
    "Transportation": ["Road", "Airport", "Train station", "Port and harbor"],
    "Sports and recreation": ["Sporting venue", "Recreational area", "Gym and fitness center"],
}

CATEGORY_PROMPT = "prompts/landmark_category.txt"
FINE_PROMPT = "prompts/landmark_fine_category.txt"

# Words that stand for an option without naming it: only used when no option is named in full.
_ALIASES: dict[str, list[str]] = {
    "Indoor": ["inside", "interior"],
    "Outdoor": ["outside", "exterior", "open air"],
    "Train station": ["railway station", "railroad station", "rail station"],
}
# Spelling variants folded before matching (word -> words).
_SPELLING: dict[str, tuple[str, ...]] = {
    "centre": ("center",),
    "harbour": ("harbor",),
    "workspace": ("work", "space"),
    "transport": ("transportation",),
    "gymnasium": ("gym",),
}
# A mention right after one of these (same clause, up to 3 words back) is denied, not chosen:
# "not indoor", "neither indoor nor outdoor", "outdoor rather than indoor".
_NEGATORS = frozenset(
    "not no never nor neither isnt arent wasnt werent cant cannot dont doesnt without instead rather than".split()
)
_NEGATION_WINDOW = 3
# Answers that decline to choose: None even if they go on to name an option.
_HEDGE = re.compile(
    r"\b(?:(?:can ?not|cant|unable to|impossible to|hard to|difficult to|no way to)\s+(?:be\s+)?"
    r"(?:tell|told|say|said|determin\w*|decid\w*|know\w*|identif\w*|judg\w*|classif\w*|categori[sz]\w*)"
    r"|not sure|unsure|unclear|uncertain|dont know|do not know|none of (?:the|them))\b"
)
_NUMBER_WORDS = {w: i + 1 for i, w in enumerate("one two three four five six seven eight nine ten".split())}
# "option 2", "answer: 2", "the answer is option 2" (not "number 2": "a number 2 bus" is no choice)
_MARKER = r"(?:option|choice|answer|category)(?:\s+(?:is|would be))?\s*[:#]?\s*"
_IGNORED_WORDS = frozenset({"and", "or", "the", "a", "an", "of", "scene", "category"})


class LandmarkQuestions:
    """The two landmark prompts (text files with `{options}`, the second also `{category}`) and
    the reading of their answers.

    base_dir: folder the prompt paths are resolved against first (the config's folder).
    letters: options are labelled A, B, C... instead of 1, 2, 3 (and answers read that way).
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        category_prompt: str = CATEGORY_PROMPT,
        fine_prompt: str = FINE_PROMPT,
        letters: bool = False,
    ) -> None:
        self.letters = letters
        self.category_template = load_prompt(category_prompt, base_dir, required=("{options}",))
        self.fine_template = load_prompt(fine_prompt, base_dir, required=("{options}", "{category}"))

    def first_question(self) -> str:
        return self.category_template.replace("{options}", render_options(list(LANDMARK_CATEGORIES), self.letters))

    def second_question(self, category: str) -> str:
        """The fine question for a category (as returned by `parse_category`; case is ignored)."""
        name = _category_name(category)
        options = render_options(LANDMARK_CATEGORIES[name], self.letters)
        return self.fine_template.replace("{category}", name).replace("{options}", options)

    def parse_choice(self, answer: str, options: Sequence[str]) -> str | None:
        return parse_choice(answer, options, letters=self.letters)

    def parse_category(self, answer: str) -> str | None:
        return self.parse_choice(answer, list(LANDMARK_CATEGORIES))

    def needs_second_question(self, first_answer: str) -> bool:
        """Stage 2 is asked only when stage 1 gave a category."""
        return self.parse_category(first_answer) is not None

    def result(self, first_answer: str, second_answer: str | None = None) -> dict:
        return landmark_result(first_answer, second_answer, letters=self.letters)


def render_options(options: Sequence[str], letters: bool = False) -> str:
    """One option a line: "1. Indoor" (or "A. Indoor")."""
    if letters and len(options) > 26:
        raise ValueError(f"{len(options)} options cannot be labelled with letters")
    labels = [chr(ord("A") + i) if letters else str(i + 1) for i in range(len(options))]
    return "\n".join(f"{label}. {option}" for label, option in zip(labels, options))


def needs_second_question(first_answer: str, letters: bool = False) -> bool:
    """Whether the runtime should ask the fine question after this first answer."""
    return parse_choice(first_answer, list(LANDMARK_CATEGORIES), letters=letters) is not None


def landmark_result(first_answer: str, second_answer: str | None = None, letters: bool = False) -> dict:
    """{category, fine_category, answers} (the schema's `Landmark`). The category is None when the
    first answer names no single category, and then the fine category is None too; the fine
    category is None when the second answer is missing or names no single fine option.
    `answers` keeps the raw answers given, stage 1 then stage 2."""
    category = parse_choice(first_answer, list(LANDMARK_CATEGORIES), letters=letters)
    fine = None
    if category is not None and second_answer is not None:
        fine = parse_choice(second_answer, LANDMARK_CATEGORIES[category], letters=letters)
    answers = [a if isinstance(a, str) else str(a) for a in (first_answer, second_answer) if a is not None]
    return {"category": category, "fine_category": fine, "answers": answers}


def _category_name(category: str) -> str:
    for name in LANDMARK_CATEGORIES:
        if isinstance(category, str) and name.lower() == category.strip().lower():
            return name
    raise ValueError(f"unknown landmark category {category!r}, expected one of {', '.join(LANDMARK_CATEGORIES)}")


# ---------------------------------------------------------------- answer parsing


def parse_choice(answer: str, options: Sequence[str], letters: bool = False) -> str | None:
    """The option a free-text answer chooses, or None. Never raises.

    In order:
    1. the answer is an option (case, spacing, punctuation, plurals ignored): that option;
    2. an answer that declines ("I cannot tell", "not sure", "none of them") -> None;
    3. an option number ("2", "2.", "(2)", "2) Outdoor", "Option 2", "the answer is two"; with
       `letters`: "b", "(B)", "Option B") picks that option, unless the text names only other
       options (then the answer contradicts itself -> None); two different numbers -> None;
    4. otherwise the options named in the text, ignoring denied mentions ("not indoor"): an
       option named in full beats one only hinted at by a distinctive word ("urban" for "Urban
       landscape") or alias ("inside"); the option named most often wins, and a tie for the most
       ("Both indoor and outdoor", an echo of the whole list) -> None.
    """
    try:
        return _parse_choice(answer, list(options), letters)
    except Exception:  # a parser bug must cost one label, never a batch
        return None


def _parse_choice(answer: str, options: list[str], letters: bool) -> str | None:
    if not isinstance(answer, str) or not options:
        return None
    text = _clean(answer)
    answer_words = _words(text)
    if not answer_words:
        return None
    for option in options:
        if _words(_clean(option)) == answer_words:
            return option
    if _HEDGE.search(text):
        return None
    counts = _mention_counts(text, options)
    index = _chosen_index(text, len(options), letters)
    if index is _CONFLICT:
        return None
    if index is not None:
        chosen = options[index]
        if not counts or counts.get(chosen, 0) == max(counts.values()):
            return chosen
        return None
    return _unique_max(counts)


def _clean(text: str) -> str:
    """NFKC, lower case, apostrophes dropped ("isn't" -> "isnt"), markdown emphasis removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"['\u2019`]", "", text)
    return re.sub(r"[*_]+", " ", text).strip()


def _words(text: str) -> list[str]:
    out: list[str] = []
    for word in re.findall(r"[^\W_]+", text):
        out.extend(_SPELLING.get(_stem(word), (_stem(word),)))
    return out


def _stem(word: str) -> str:
    """Plural / -s forms folded: indoors -> indoor, landscapes -> landscape, sports -> sport."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


# ---- option numbers and letters

_CONFLICT = object()  # two different option numbers in one answer


def _chosen_index(text: str, n: int, letters: bool) -> "int | object | None":
    """0-based index named by an option number/letter, None, or _CONFLICT."""
    found = {i for i in _number_indices(text) if 0 <= i < n}
    if letters:
        found |= {i for i in _letter_indices(text) if 0 <= i < n}
    if len(found) > 1:
        return _CONFLICT
    return found.pop() if found else None


def _number_indices(text: str) -> list[int]:
    words = "|".join(_NUMBER_WORDS)
    hits = re.findall(r"^[(#]?\s*(\d+)\s*(?:[).:]|-\s|$)", text)  # "2", "2.", "(2)", "#2", "2) outdoor"
    hits += re.findall(rf"\b{_MARKER}\(?\s*(\d+|{words})\b", text)  # "option 2", "answer: two"
    return [(int(h) if h.isdigit() else _NUMBER_WORDS[h]) - 1 for h in hits]


def _letter_indices(text: str) -> list[int]:
    # a letter counts only where it cannot be the article "a": alone, or marked by ")", ".", ":"
    hits = re.findall(r"^\(?\s*([a-z])\s*(?:[).:]|$)", text)
    hits += re.findall(rf"\b{_MARKER}\(?\s*([a-z])\s*(?:[).:,]|$)", text)
    return [ord(h) - ord("a") for h in hits]


# ---- options named in the text


def _mention_counts(text: str, options: list[str]) -> dict[str, int]:
    """How often each option is named (not denied): full names if any, else distinctive words."""
    clauses = [_words(c) for c in re.split(r"[,.;:!?\n()\[\]]+", text)]
    full = _count(clauses, {o: [tuple(_words(_clean(o)))] for o in options})
    if full:
        return full
    return _count(clauses, _hint_patterns(options), merge_gap=2)


def _hint_patterns(options: list[str]) -> dict[str, list[tuple[str, ...]]]:
    """Per option: its words that no other option shares (e.g. "urban"), plus its aliases."""
    words = {o: set(_words(_clean(o))) - _IGNORED_WORDS for o in options}
    out: dict[str, list[tuple[str, ...]]] = {}
    for o in options:
        shared = set().union(*(words[p] for p in options if p != o))
        out[o] = [(w,) for w in sorted(words[o] - shared)]
        out[o] += [tuple(_words(a)) for a in _ALIASES.get(o, [])]
    return out


def _count(clauses: list[list[str]], patterns: dict[str, list[tuple[str, ...]]], merge_gap: int = 0) -> dict[str, int]:
    """Non-denied mentions per option. Hits of one option within `merge_gap` words of each other
    count once ("fitness center" is one mention of "Gym and fitness center"), and a hit inside a
    longer hit of another option is not counted."""
    counts: dict[str, int] = {}
    for words in clauses:
        hits = [
            (i, i + len(p), option)
            for option, pats in patterns.items()
            for p in pats
            if p
            for i in range(len(words) - len(p) + 1)
            if tuple(words[i : i + len(p)]) == p and not _denied(words, i)
        ]
        hits = [h for h in hits if not any(_inside(h, g) for g in hits)]
        last_end: dict[str, int] = {}
        for start, end, option in sorted(hits):
            if option not in last_end or start - last_end[option] > merge_gap:
                counts[option] = counts.get(option, 0) + 1
            last_end[option] = max(end, last_end.get(option, end))
    return counts


def _inside(h: tuple[int, int, str], g: tuple[int, int, str]) -> bool:
    return h[2] != g[2] and g[0] <= h[0] and h[1] <= g[1] and (g[1] - g[0]) > (h[1] - h[0])


def _denied(words: list[str], i: int) -> bool:
    return any(w in _NEGATORS for w in words[max(0, i - _NEGATION_WINDOW) : i])


def _unique_max(counts: dict[str, int]) -> str | None:
    if not counts:
        return None
    best = max(counts.values())
    winners = [o for o, c in counts.items() if c == best]
    return winners[0] if len(winners) == 1 else None
