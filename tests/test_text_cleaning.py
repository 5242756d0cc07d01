"""Linear-time text cleaning (issue 13, item 7): runs of whitespace in model output are collapsed
before any regex, so adversarial answers parse like their collapsed forms instead of backtracking
for minutes (before this, "Objects" + 5,000 spaces + "x" took 45-85 s in parse_checklist)."""

from __future__ import annotations


import pytest

from grand.core.scene_graph import clean_text
from grand.core.text import MAX_MODEL_TEXT_CHARS, squash_lines, squash_spaces
from grand.core.verification import parse_checklist

ADVERSARIAL = [
    " " * 10_000,
    "Objects" + " " * 5_000 + "x",
    "CHECKLIST:" + " \t" * 5_000 + "dog",
    "a" + " " * 5_000 + ":",
    "\n" * 5_000 + "x",
    "<<" + " " * 5_000 + "[" + " " * 5_000,
]

pytestmark = pytest.mark.usefixtures("no_hang")


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_answers_parse_like_their_collapsed_form(text):
    collapsed = "\n".join(squash_lines(text))
    assert parse_checklist(text) == parse_checklist(collapsed)
    assert clean_text(text) == clean_text(squash_spaces(text))


def test_parsed_results_of_padded_answers():
    assert parse_checklist("CHECKLIST:" + " " * 5_000 + "dog," + " " * 5_000 + "cat") == ["dog", "cat"]
    assert parse_checklist(" " * 10_000) is None
    assert clean_text("a" + " " * 5_000 + "<|im_end|>" + " " * 5_000 + "b") == "a b"


def test_squashing_caps_length_and_keeps_lines():
    assert squash_lines("a  b\n\tc   d\n") == ["a b", "c d"]
    assert len(squash_spaces("x " * MAX_MODEL_TEXT_CHARS)) <= MAX_MODEL_TEXT_CHARS
