"""Answer extraction and matching of model completions (``slowed_peft.eval`` names, homed in ``data.answers``)."""

from __future__ import annotations

import pytest

from slowed_peft.eval import (
    bbh_answer_format,
    bbh_match,
    extract_bbh_answer,
    extract_choice,
    extract_number,
    normalize_answer,
    numbers_match,
)


# ------------------------------------------------------------------------------------------ answer extraction


@pytest.mark.parametrize(
    "text, target, ok",
    [
        # multiple choice letters
        ("(B) is wrong because ... So the answer is (A).", "(A)", True),
        ("Checking each option. So the answer is (A) 12/11/1937.", "(A)", True),
        ("So the answer is C.", "(C)", True),
        ("Option (D) fits best, so (D) it is.", "(D)", False),  # no answer cue: unanswered (lm-eval get-answer)
        ("So the answer is (B).", "(A)", False),
        ("So the answer is (K).", "(K)", True),
        # True / False
        ("not False = True. So the answer is False.", "False", True),
        ("So the answer is true", "True", True),
        # Yes / No (including lower-case targets of sports_understanding)
        ("He did cause it. So the answer is Yes.", "Yes", True),
        ("So the answer is No.", "no", True),
        ("So the answer is yes.", "no", False),
        # valid / invalid ("invalid" contains "valid")
        ("So the answer is invalid.", "invalid", True),
        ("So the answer is invalid.", "valid", False),
        ("The argument holds. So the answer is valid.", "valid", True),
        # numbers
        ("-163 - 56 = -219. So the answer is -219.", "-219", True),
        ("1 + 1 + 2 = 4. So the answer is 4.", "4", True),
        ("So the answer is 1,234.", "1234", True),
        # free form: Dyck closings, sorted words, movie titles
        ('We need "]", ")", ">". So the answer is ] ) >.', "] ) >", True),
        ("So the answer is apple banana cherry.", "apple banana cherry", True),
        ("So the answer is banana apple cherry.", "apple banana cherry", False),
        ("So the answer is Monsters, Inc.", "Monsters, Inc", True),
        # a base model running on into a new few-shot question
        ("So the answer is True.\n\nQ: not True is\nA: So the answer is False.", "True", True),
        ("I do not know.", "(A)", False),
    ],
)
def test_bbh_match(text, target, ok):
    assert bbh_match(text, target) is ok


def test_bbh_answer_format_and_extraction():
    assert [bbh_answer_format(t) for t in ["(A)", "True", "no", "invalid", "-12", "] )", "Monsters, Inc"]] == [
        "choice",
        "bool",
        "yes_no",
        "validity",
        "number",
        "free",
        "free",
    ]
    assert extract_bbh_answer("So the answer is (E).", "choice") == "e"
    # no "the answer is" cue: no answer, as lm-eval's get-answer filter reads it (no guess from the words around)
    assert extract_bbh_answer("It is No, since ... therefore no", "yes_no") is None
    assert extract_bbh_answer("A = True and False = False.\nLet's evaluate B: B = True", "bool") is None
    assert extract_bbh_answer("The options are (A) and (C).\n(C)", "choice") is None
    assert extract_bbh_answer("So the answer is (10 * 45).", "number") == "450"
    assert extract_bbh_answer("So the answer is 3.5.", "number") == "3.5"
    assert extract_bbh_answer("nothing here", "number") is None
    with pytest.raises(ValueError, match="Unknown BBH answer format"):
        extract_bbh_answer("x", "weird")


@pytest.mark.parametrize(
    "text, labels, choices, expected",
    [
        ("Plants need light. So the answer is (C).", "ABCD", None, "C"),
        ("So the answer is B.", "ABCD", None, "B"),
        ("So the answer is D) a magnet.", "ABCD", None, "D"),
        ("The answer is: option A", "ABCD", None, "A"),
        ("So the answer is a bit unclear.", "ABCD", None, None),
        ("So the answer is (3).", "1234", None, "3"),
        ("So the answer is 2.", "1234", None, "2"),
        ("So the answer is shorter days.", "ABCD", ["longer years", "shorter days", "x", "y"], "B"),
        ("(A) is false, (C) is true.\nFinal: see above", "ABCD", None, "C"),
        ("Let me think.\nE", "ABCDE", None, "E"),
        ("Answer: E", "ABCDE", None, "E"),  # AGIEval style
        ("The best answer is C", "ABCD", None, "C"),  # lm-eval's arc_challenge_chat gen_prefix + letter
        ("The correct answer is (B).", "ABCD", None, "B"),
        ("So the answer is (F).", "ABCDE", None, None),
        ("", "ABCD", None, None),
    ],
)
def test_extract_choice(text, labels, choices, expected):
    assert extract_choice(text, list(labels), choices) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\nSo the answer is 18.", 18.0),
        ("So the answer is 1,234.", 1234.0),
        ("So the answer is $18.", 18.0),
        ("So the answer is $1,234.50 in total.", 1234.5),
        ("So the answer is -7.", -7.0),
        ("So the answer is \u22124.", -4.0),
        ("So the answer is 3.75.", 3.75),
        ("So the answer is .5", 0.5),
        ("So the answer is 9 * 2 = 18.", 18.0),
        ("So the answer is 18 (16 - 3 - 4 = 9, 9 * 2 = 18).", 18.0),
        ("She pays 10-5 = 5 dollars", 5.0),
        ("The total is 5 apples and 7 pears, so 12", 12.0),
        ("worked solution\n#### 72", 72.0),
        ("The final answer is 42", 42.0),
        ("So the answer is 7.\n\nQ: Tom has 3 apples.", 7.0),
        ("10 * 45 is 450. So the answer is (10 * 45).", 450.0),  # distilling-step-by-step SVAMP style
        ("So the answer is ((14 - 2) - 10).", 2.0),
        ("So the answer is 3/4.", 0.75),
        ("I have no idea.", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numbers_match_and_normalize():
    assert numbers_match(18.00000001, 18)
    assert not numbers_match(18.01, 18)
    assert not numbers_match(None, 18)
    assert numbers_match(-0.5, -0.5)
    assert normalize_answer(" (A) ") == "a"
    assert normalize_answer("**Yes**.") == "yes"
    assert normalize_answer(") ]") == ") ]"
    assert normalize_answer("Apple   Banana!") == "apple banana"
