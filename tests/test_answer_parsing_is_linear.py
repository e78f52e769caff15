"""Answer parsing is linear in the text. Rows of runs of spaces / newlines that took the old
regular expressions minutes to hours (``So the answer is\\s*(.+?)\\s*\\.?\\s*$`` is cubic in spaces, the trailing-answer
and new-question patterns quadratic in blank lines) parse in well under a second, with the same results."""

from __future__ import annotations

import json
import random
import re
import time

import pytest

from slowed_peft.data import extract_answer, load_cot_dataset, parse_gsm8k_answer
from slowed_peft.data.alignment import trim_response
from slowed_peft.data.answers import normalize_answer, normalize_dashes, strip_answer_line, truncate_at_new_question
from slowed_peft.data.gsm8k import remove_calculator_annotations
from slowed_peft.data.sources import _svamp_teacher_value
from slowed_peft.eval.answers import extract_bbh_answer, extract_choice, extract_number


MB = 1_000_000
# Sizes where the old code needed minutes (extract_answer: 4,000 spaces took 161 s) or hours; 1 s is generous.
LIMIT_S = 1.0


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


PATHOLOGICAL = {
    "spaces": "So the answer is 1" + " " * MB + "x",
    "newlines": "Step.\n" + "\n" * MB + "b",
    "blank lines of spaces": "So the answer is\n" + " \n" * (MB // 2) + "x",
    "spaced periods": "a" + ". " * (MB // 2),
    "open brackets": "<" * MB + "(" * MB,
    "newlines then a cue": "x." + "\n" * MB + "Thx answer is 4",
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_a_1mb_pathological_row_parses_in_well_under_a_second(name):
    text = PATHOLOGICAL[name]
    for fn in (
        extract_answer,
        strip_answer_line,
        truncate_at_new_question,
        normalize_answer,
        trim_response,
        remove_calculator_annotations,
        _svamp_teacher_value,
    ):
        _, seconds = timed(fn, text)
        assert seconds < LIMIT_S, f"{fn.__name__} took {seconds:.2f} s on the {name!r} row"
    for fn in (extract_number, extract_choice, lambda t: extract_bbh_answer(t, "free")):
        _, seconds = timed(fn, text)
        assert seconds < 2 * LIMIT_S, f"{fn} took {seconds:.2f} s on the {name!r} row"
    _, seconds = timed(parse_gsm8k_answer, text + "\n#### 4")
    assert seconds < LIMIT_S


def test_linear_parsers_give_the_answers_of_the_old_patterns():
    assert extract_answer(PATHOLOGICAL["spaces"]) == "1" + " " * MB + "x"
    assert extract_answer(PATHOLOGICAL["blank lines of spaces"]) == "x"
    assert extract_answer("So the answer is 3.5.\nSo the answer is (B).") == "(B)"
    assert extract_answer("no cue") is None
    assert strip_answer_line("x.\n\n\nThe answer is 4") == "x."
    assert strip_answer_line("a" + "\n" * MB + "So the answer is 4") == "a"
    assert truncate_at_new_question("ans 4." + "\n" * MB + "Q: next") == "ans 4."
    assert normalize_answer("'(A).'") == "a" and normalize_answer("a" + ". " * 1000) == "a"
    assert remove_calculator_annotations("3*4=<<3*4=12>>12 <<<x>") == "3*4=12 <<<x>"
    assert _svamp_teacher_value("so (1 + 2) x\n(3") == 3.0
    assert trim_response("1. First point here. And a half") == "1. First point here."


# The patterns (and the loop) the linear parsers replace: the new code must agree with them on every short text.
OLD_ANSWER_LINE = re.compile(r"So the answer is\s*(.+?)\s*\.?\s*$", re.MULTILINE)
OLD_TRAILING = re.compile(r"(?:^|(?<=[.!?\n]))\s*(?:So the answer is|The answer is)[^\n]*$")
OLD_NEW_QUESTION = re.compile(r"\n\s*(?:Q|Question)\s*:")
OLD_CALCULATOR = re.compile(r"<<[^>]*>>")
ATOMS = [
    "So the answer is",
    "The answer is",
    " ",
    "\n",
    "\n\n",
    ".",
    "!",
    "?",
    "4",
    "x",
    "\t",
    "\r",
    "\u00a0",
    "Q",
    "Question",
    ":",
    "'",
    "*",
    "(",
    ")",
    "<<",
    ">",
    ">>",
    "<",
]


def old_extract(text):
    matches = OLD_ANSWER_LINE.findall(text)
    return matches[-1].strip() if matches else None


def old_truncate(text):
    match = OLD_NEW_QUESTION.search(text)
    return text[: match.start()] if match else text


def old_normalize(text):
    text = " ".join(normalize_dashes(text).split()).lower()
    previous = None
    while text != previous:
        previous, text = text, text.strip(" \t\n\"'`*_").rstrip(".!")
    match = re.fullmatch(r"\(\s*([^\s()]+)\s*\)", text)
    return match.group(1) if match else text


def test_linear_parsers_agree_with_the_old_patterns_on_random_short_texts():
    rng = random.Random(24)
    for _ in range(30_000):
        text = "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 12)))
        assert extract_answer(text) == old_extract(text), repr(text)
        assert strip_answer_line(text) == OLD_TRAILING.sub("", text.strip()).strip(), repr(text)
        assert truncate_at_new_question(text) == old_truncate(text), repr(text)
        assert remove_calculator_annotations(text) == OLD_CALCULATOR.sub("", text), repr(text)
        assert normalize_answer(text) == old_normalize(text), repr(text)


def test_load_cot_dataset_of_a_jsonl_with_a_1mb_pathological_row_is_fast(tmp_path):
    warm = tmp_path / "warm.jsonl"
    warm.write_text(json.dumps({"prompt": "Question: 1+1?\nAnswer:", "completion": " 2.\nSo the answer is 2."}) + "\n")
    load_cot_dataset(str(warm))  # datasets' first-call set-up is not what is measured
    rows = [
        {"prompt": "Question: 1+1?\nAnswer:", "completion": " 1+1=2.\nSo the answer is 2."},
        # no answer column: the answer is read from the completion (the 3 KB file took 81 s)
        {
            "prompt": "Question: x?\nAnswer:",
            "completion": "So the answer is 1" + " " * (MB // 2) + "x" + "\n" * (MB // 2) + "So the answer is 7.",
        },
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, seconds = timed(load_cot_dataset, str(path))
    assert seconds < LIMIT_S, f"load_cot_dataset took {seconds:.2f} s"
    assert ds["answer"] == ["2", "7"]
    assert ds[1]["completion"].endswith("x\nSo the answer is 7.")
