"""Landmark questions and answer parsing (grand/core/landmark.py, prompts/landmark_*.txt)."""

from __future__ import annotations

import random
import string

import pytest

from grand.core.landmark import (
    LANDMARK_CATEGORIES,
    LandmarkQuestions,
    _parse_choice,
    landmark_result,
    needs_second_question,
    parse_choice,
    render_options,
)
from grand.prompts import PromptError

CATEGORIES = list(LANDMARK_CATEGORIES)
FINE = [(c, f) for c, fines in LANDMARK_CATEGORIES.items() for f in fines]


def test_categories_are_the_reference_ones() -> None:
    assert LANDMARK_CATEGORIES == {
        "Indoor": ["Living space", "Work space", "Public space", "Industrial space"],
        "Outdoor": ["Urban landscape", "Rural landscape", "Natural landscape"],
        "Transportation": ["Road", "Airport", "Train station", "Port and harbor"],
        "Sports and recreation": ["Sporting venue", "Recreational area", "Gym and fitness center"],
    }


# ---------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def questions() -> LandmarkQuestions:
    return LandmarkQuestions()


def test_first_question_lists_every_category_numbered(questions: LandmarkQuestions) -> None:
    q = questions.first_question()
    for i, c in enumerate(CATEGORIES, 1):
        assert f"\n{i}. {c}\n" in q
    assert "{" not in q


@pytest.mark.parametrize("category", CATEGORIES)
def test_second_question_lists_every_fine_option(questions: LandmarkQuestions, category: str) -> None:
    q = questions.second_question(category)
    assert category in q and "{" not in q
    for i, f in enumerate(LANDMARK_CATEGORIES[category], 1):
        assert f"{i}. {f}" in q
    for other in CATEGORIES:  # no option of another category leaks in
        if other != category:
            assert all(f not in q for f in LANDMARK_CATEGORIES[other])


def test_second_question_accepts_any_case_and_refuses_unknown(questions: LandmarkQuestions) -> None:
    assert questions.second_question("  outdoor ") == questions.second_question("Outdoor")
    with pytest.raises(ValueError, match="unknown landmark category"):
        questions.second_question("Underwater")


def test_letter_options() -> None:
    q = LandmarkQuestions(letters=True)
    assert "A. Indoor" in q.first_question() and "D. Sports and recreation" in q.first_question()
    assert "C. Natural landscape" in q.second_question("Outdoor")
    assert render_options(["x", "y"]) == "1. x\n2. y"


def test_prompt_files_are_checked_for_placeholders(tmp_path) -> None:
    (tmp_path / "bad.txt").write_text("Which kind of place is this?\n")
    (tmp_path / "good.txt").write_text("Pick one:\n{options}\n")
    with pytest.raises(PromptError, match=r"\{options\}"):
        LandmarkQuestions(base_dir=tmp_path, category_prompt="bad.txt")
    with pytest.raises(PromptError, match=r"\{category\}"):
        LandmarkQuestions(base_dir=tmp_path, fine_prompt="good.txt")  # fine prompt needs {category} too
    custom = LandmarkQuestions(base_dir=tmp_path, category_prompt="good.txt")
    assert custom.first_question() == "Pick one:\n1. Indoor\n2. Outdoor\n3. Transportation\n4. Sports and recreation"


# ---------------------------------------------------------------- parse_choice: categories

CATEGORY_ANSWERS: list[tuple[str, str | None]] = [
    # exact, any case / spacing / punctuation / markdown
    ("Outdoor", "Outdoor"),
    ("outdoor", "Outdoor"),
    ("  OUTDOOR.  ", "Outdoor"),
    ("**Indoor**", "Indoor"),
    ('"Transportation"', "Transportation"),
    ("Sports and Recreation", "Sports and recreation"),
    # the reference's own option wording
    ("Indoor scene", "Indoor"),
    ("Sports and recreation scene.", "Sports and recreation"),
    # numbers
    ("2", "Outdoor"),
    ("2.", "Outdoor"),
    ("(2)", "Outdoor"),
    ("2)", "Outdoor"),
    ("#3", "Transportation"),
    ("Option 2", "Outdoor"),
    ("option two", "Outdoor"),
    ("Option #3", "Transportation"),
    ("answer: (4)", "Sports and recreation"),
    ("The answer is 1.", "Indoor"),
    ("2. Outdoor", "Outdoor"),
    ("1) Indoor scene", "Indoor"),
    ("3 - Transportation", "Transportation"),
    # number out of range, or not an option number
    ("5", None),
    ("0", None),
    ("2-3", None),
    ("12", None),
    ("A number 2 bus on a city street.", None),
    # number and text disagree, two numbers
    ("2. Indoor", None),
    ("Option 1 or option 2", None),
    # sentences
    ("This looks like an outdoor scene.", "Outdoor"),
    ("The image was taken indoors, in a living room.", "Indoor"),
    ("It is a transportation scene: a busy road with cars.", "Transportation"),
    ("Outdoor scene.\n\nThe image shows a street with trees.", "Outdoor"),
    # morphology, spelling, partial names, aliases
    ("indoors", "Indoor"),
    ("Outdoors!", "Outdoor"),
    ("sports", "Sports and recreation"),
    ("sport and recreation", "Sports and recreation"),
    ("recreation", "Sports and recreation"),
    ("transport", "Transportation"),
    ("inside", "Indoor"),
    ("The photo was taken outside.", "Outdoor"),
    # denied mentions do not count
    ("It is not indoor, it is outdoor.", "Outdoor"),
    ("Outdoor, not indoor", "Outdoor"),
    ("Indoor rather than outdoor", "Indoor"),
    ("No, it's outdoor.", "Outdoor"),
    # the option named most often wins
    ("Indoor. The indoor room has a window onto the outdoor garden.", "Indoor"),
    # junk, refusals, ties
    ("", None),
    ("   ", None),
    ("\n\t", None),
    (".", None),
    ("asdf", None),
    ("qwertyuiop 12345", None),
    ("I cannot tell", None),
    ("I can't tell whether it's indoor or outdoor.", None),
    ("I'm not sure, maybe indoor.", None),
    ("It is unclear from the image.", None),
    ("None of the above.", None),
    ("None of them.", None),
    ("It cannot be determined from this image.", None),
    ("I don't know.", None),
    ("Both indoor and outdoor", None),
    ("indoor/outdoor", None),
    ("Neither indoor nor outdoor.", None),
    ("Living space", None),  # a fine category is no answer to the first question
    # the model echoing the question names every option once
    (
        "Categorize the image landmark into one of the following options:\n1. Indoor\n2. Outdoor\n"
        "3. Transportation\n4. Sports and recreation\nRespond with only the option.",
        None,
    ),
    ("b", None),  # letters only count when the prompt uses letters
]


@pytest.mark.parametrize("answer, expected", CATEGORY_ANSWERS)
def test_parse_category_answers(answer: str, expected: str | None) -> None:
    assert parse_choice(answer, CATEGORIES) == expected


LETTER_ANSWERS: list[tuple[str, str | None]] = [
    ("b", "Outdoor"),
    ("(B)", "Outdoor"),
    ("B.", "Outdoor"),
    ("Option C", "Transportation"),
    ("Option C: Transportation", "Transportation"),
    ("B. Outdoor", "Outdoor"),
    ("B. Indoor", None),  # letter and text disagree
    ("a", "Indoor"),
    ("A.", "Indoor"),
    ("A sunny outdoor scene.", "Outdoor"),  # the article "A" is no letter
    ("E", None),
    ("2", "Outdoor"),  # a number still works
]


@pytest.mark.parametrize("answer, expected", LETTER_ANSWERS)
def test_parse_letter_answers(answer: str, expected: str | None) -> None:
    assert parse_choice(answer, CATEGORIES, letters=True) == expected
    assert LandmarkQuestions(letters=True).parse_category(answer) == expected


# ---------------------------------------------------------------- parse_choice: fine categories

FINE_ANSWERS: list[tuple[str, str, str | None]] = [
    ("Outdoor", "urban", "Urban landscape"),
    ("Outdoor", "Urban", "Urban landscape"),
    ("Outdoor", "natural landscapes", "Natural landscape"),
    ("Outdoor", "A rural landscape with fields and a barn.", "Rural landscape"),
    ("Outdoor", "3", "Natural landscape"),
    ("Outdoor", "landscape", None),  # shared by all three
    ("Outdoor", "rural and urban", None),
    ("Indoor", "workspace", "Work space"),
    ("Indoor", "living room", "Living space"),
    ("Indoor", "It's a public space, like a shopping mall.", "Public space"),
    ("Indoor", "office", None),
    ("Indoor", "space", None),
    ("Transportation", "harbour", "Port and harbor"),
    ("Transportation", "Port and Harbour", "Port and harbor"),
    ("Transportation", "port", "Port and harbor"),
    ("Transportation", "railway station", "Train station"),
    ("Transportation", "The airport.", "Airport"),
    ("Transportation", "roads", "Road"),
    ("Transportation", "an airport and a train station", None),
    ("Sports and recreation", "gym", "Gym and fitness center"),
    ("Sports and recreation", "fitness centre", "Gym and fitness center"),
    ("Sports and recreation", "Gym and fitness centre", "Gym and fitness center"),
    ("Sports and recreation", "recreational areas", "Recreational area"),
    ("Sports and recreation", "A sporting venue (a stadium).", "Sporting venue"),
    ("Sports and recreation", "stadium", None),
]


@pytest.mark.parametrize("category, answer, expected", FINE_ANSWERS)
def test_parse_fine_answers(category: str, answer: str, expected: str | None) -> None:
    assert parse_choice(answer, LANDMARK_CATEGORIES[category]) == expected


@pytest.mark.parametrize("option", CATEGORIES)
def test_every_category_round_trips(option: str) -> None:
    i = CATEGORIES.index(option) + 1
    for answer in (option, option.lower(), option.upper(), f"{option}.", f"{i}", f"{i}. {option}",
                   f"Option {i}", f"The answer is {option.lower()}.", f"{option} scene"):
        assert parse_choice(answer, CATEGORIES) == option, answer
    assert parse_choice(chr(ord("a") + i - 1), CATEGORIES, letters=True) == option


@pytest.mark.parametrize("category, option", FINE)
def test_every_fine_category_round_trips(category: str, option: str) -> None:
    options = LANDMARK_CATEGORIES[category]
    i = options.index(option) + 1
    for answer in (option, option.lower(), option.upper(), f"{option}.", f"{i}", f"({i})", f"{i}. {option}",
                   f"This image shows a {option.lower()}."):
        assert parse_choice(answer, options) == option, answer
    # its number means nothing beyond the list
    assert parse_choice(str(len(options) + 1), options) is None


def test_never_raises_on_any_input() -> None:
    rng = random.Random(0)
    alphabet = string.printable + "éü中文🐶\u200b\u0000\ud800"
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(400)]
    samples += ["(" * 500, "option " * 300, "1." * 1000, "a" * 10_000, "not " * 200 + "indoor"]
    for options in (CATEGORIES, *LANDMARK_CATEGORIES.values(), [], [""], ["x", "x"]):
        for s in samples:
            for letters in (False, True):
                # the private parser, so that the public one's safety net cannot hide a bug
                out = _parse_choice(s, list(options), letters)
                assert out is None or out in options
    for junk in (None, 3, b"Outdoor", ["Outdoor"]):
        assert parse_choice(junk, CATEGORIES) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- the two-stage result


def test_stage_two_is_asked_only_after_a_category(questions: LandmarkQuestions) -> None:
    for answer, asked in [("Outdoor", True), ("2", True), ("a road with cars (transportation)", True),
                          ("", False), ("I cannot tell", False), ("Both indoor and outdoor", False)]:
        assert needs_second_question(answer) is asked
        assert questions.needs_second_question(answer) is asked


def test_landmark_result() -> None:
    assert landmark_result("Outdoor", "urban") == {
        "category": "Outdoor", "fine_category": "Urban landscape", "answers": ["Outdoor", "urban"],
    }
    assert landmark_result("3.", "Airport") == {
        "category": "Transportation", "fine_category": "Airport", "answers": ["3.", "Airport"],
    }
    # stage 2 not asked
    assert landmark_result("Indoor") == {"category": "Indoor", "fine_category": None, "answers": ["Indoor"]}
    # stage 2 unparseable, or naming an option of another category
    assert landmark_result("Indoor", "asdf")["fine_category"] is None
    assert landmark_result("Indoor", "Airport")["fine_category"] is None
    # stage 1 unparseable: no fine category whatever stage 2 says
    assert landmark_result("asdf", "urban") == {"category": None, "fine_category": None, "answers": ["asdf", "urban"]}
    assert landmark_result("") == {"category": None, "fine_category": None, "answers": [""]}


def test_result_fits_the_schema(questions: LandmarkQuestions) -> None:
    from grand.schema import Landmark

    landmark = Landmark(**questions.result("Sports and recreation", "2"))
    assert (landmark.category, landmark.fine_category) == ("Sports and recreation", "Recreational area")
    assert landmark.answers == ["Sports and recreation", "2"]
