"""The one answers module: the final answer line, its parsers, answer normalisation and safe arithmetic.

Every CoT completion this package writes ends with the line ``So the answer is <answer>.`` (:func:`answer_line`).
Two readers of such text live here, side by side:

* :func:`extract_answer` is the exact inverse of :func:`answer_line` (data: read a gold answer back);
* :func:`final_answer_segment` is the lenient parser for model generations (eval: also ``The answer is``,
  ``Answer:``, ``####``, run-on few-shot questions, markdown around the answer).

Two normalisations, for two jobs:

* :func:`canonical_answer` is the gold-answer *text* written into data (one line, case kept, no final period);
* :func:`normalize_answer` is a *comparison key* (lower-cased, quotes / markdown / ``(A)`` brackets dropped), never
  written anywhere, only compared.

:func:`eval_arithmetic` safely evaluates ``+ - * /`` expressions (SVAMP labels, answers such as ``(10 * 45)``).
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
import re
from collections.abc import Callable
from typing import Any, Optional


__all__ = [
    "ANSWER_PREFIX",
    "answer_line",
    "canonical_answer",
    "eval_arithmetic",
    "extract_answer",
    "final_answer_segment",
    "format_number",
    "normalize_answer",
    "normalize_dashes",
    "strip_answer_line",
    "truncate_at_new_question",
]

ANSWER_PREFIX = "So the answer is"

# Answer parsing is linear in the text: the answer line and a trailing answer sentence are found with ``str`` scans,
# not with patterns whose quantifiers can backtrack over the same run of whitespace (a 1 MB row of spaces or blank lines
# took hours with ``So the answer is\s*(.+?)\s*\.?\s*$``).
_TRAILING_CUES = ("So the answer is", "The answer is")  # a teacher rationale's own final answer sentence
_WHITESPACE = re.compile(r"\s*")  # only ever used with .match (one pass, no backtracking)
# "So the answer is", "the answer is", "The final answer is", "The best answer is" (lm-eval's ARC / MMLU chat
# prompts), "The correct answer is", "Answer:", "####" (GSM8K style).
_ANSWER_CUE_RE = re.compile(
    r"(?:the\s+(?:(?:final|best|correct)\s+)?answer\s+is\s*:?|\banswer\s*:|####)", re.IGNORECASE
)
# A new few-shot question started by a model that keeps going after its answer (PaLM teachers, base models).
# Anchored on the last newline before the "Q" (no two newlines of one blank run can both start a scan of it).
_NEW_QUESTION_RE = re.compile(r"\n[^\S\n]*(?:Q|Question)\s*:")
_DASHES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2019": "'", "\u2018": "'"})
_EDGE_JUNK = " \t\n\"'`*_"


# ------------------------------------------------------------------------------------------- the answer line


def canonical_answer(answer: Any) -> str:
    """The gold answer as written into data: one stripped line, case kept, no trailing period.

    ``ValueError`` naming the value when nothing is left (an empty answer cannot be learned or scored), for
    ``None`` (a JSON ``null`` or an empty CSV cell), which would otherwise be trained as the text "None", for anything
    but a string or a finite number (a list, dict or bool would be trained as its Python repr) and for a NUL byte.
    """
    if answer is None:
        raise ValueError("Missing answer (null or empty cell); every row needs a gold answer.")
    if isinstance(answer, bool) or not isinstance(answer, (str, numbers.Real)):
        raise ValueError(
            f"An answer must be a string or a number, not a {type(answer).__name__} ({answer!r:.80}): it would be "
            "trained as its Python text."
        )
    if isinstance(answer, numbers.Real) and not isinstance(answer, numbers.Integral) and not math.isfinite(answer):
        raise ValueError(f"An answer must be a finite number, not {answer!r}.")
    if isinstance(answer, str) and "\x00" in answer:
        raise ValueError(f"The answer holds a NUL byte ({answer!r:.80}); data files must be plain text.")
    text = " ".join(str(answer).split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    if not text:
        raise ValueError(f"Empty answer: {answer!r}.")
    return text


def format_number(value: float) -> str:
    """A number as an answer string: integers without ``.0``; otherwise at most 6 decimals, trailing zeros dropped."""
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def answer_line(answer: Any) -> str:
    """The fixed final line of every completion: ``So the answer is <answer>.``"""
    return f"{ANSWER_PREFIX} {canonical_answer(answer)}."


def extract_answer(text: str) -> Optional[str]:
    """The answer of the last ``So the answer is <answer>.`` line in ``text``, else ``None`` (inverse of
    :func:`answer_line`: case, quotes and brackets are kept).

    Exactly what ``re.findall(r"So the answer is\\s*(.+?)\\s*\\.?\\s*$", text, re.MULTILINE)[-1].strip()`` returned,
    in one linear pass (that pattern is cubic in a run of spaces)."""
    text = text or ""
    found: Optional[str] = None
    pos = 0
    while (start := text.find(ANSWER_PREFIX, pos)) >= 0:
        after = start + len(ANSWER_PREFIX)
        begin = _WHITESPACE.match(text, after).end()  # spaces and blank lines before the answer are skipped
        if begin == len(text):  # only whitespace is left: the answer is a single space character (empty once stripped)
            return "" if text[after:].strip("\n") else found
        end = text.find("\n", begin)
        line = text[begin : len(text) if end < 0 else end].rstrip()
        answer = line[:-1].rstrip() if line.endswith(".") else line  # one final period is not part of the answer
        answer = answer or line  # an answer that is just "."
        found = answer.strip()
        pos = begin + len(answer)
    return found


def strip_answer_line(rationale: str) -> str:
    """The rationale without a trailing "So the answer is ..." / "The answer is ..." sentence, stripped.

    The sentence starts the text, follows a ``.``/``!``/``?`` or starts a line, and runs to the end of the text on
    one line. Linear in the text (a regular expression with ``\\s*`` before the cue was quadratic in blank lines)."""
    text = rationale.strip()
    line_start = text.rfind("\n") + 1  # the cue and everything after it must be on the last line
    cues = sorted((at, len(cue)) for cue in _TRAILING_CUES for at in _occurrences(text, cue, line_start))
    previous_end = 0
    for at, length in cues:
        # the whitespace before the cue: text[space:at] (it cannot reach back past the previous cue)
        space = previous_end + len(text[previous_end:at].rstrip())
        previous_end = at + length
        if space == 0 or text[space - 1] in ".!?":
            return text[:space].strip()
        newline = text.find("\n", space, at)
        if newline >= 0:
            return text[: newline + 1].strip()
    return text


def _occurrences(text: str, needle: str, start: int = 0) -> list[int]:
    """Start indices of the non-overlapping occurrences of ``needle`` in ``text[start:]``."""
    found = []
    while (at := text.find(needle, start)) >= 0:
        found.append(at)
        start = at + len(needle)
    return found


# ------------------------------------------------------------------------------------- model generations


def normalize_dashes(text: str) -> str:
    """Unicode minus / en and em dashes as ``-`` and curly single quotes as ``'`` (model outputs use both)."""
    return text.translate(_DASHES)


def truncate_at_new_question(text: str) -> str:
    """Cut a completion where the model starts a new ``Q:``/``Question:`` (few-shot run-on)."""
    match = _NEW_QUESTION_RE.search(text)
    if not match:
        return text
    # cut at the first newline of the blank run before the question, as ``\n\s*(?:Q|Question)\s*:`` did
    space = len(text[: match.start()].rstrip())
    return text[: text.find("\n", space, match.start() + 1)]


def final_answer_segment(text: str) -> Optional[str]:
    """Text after the last answer cue (``So the answer is`` etc.) up to the end of that line, or ``None``.

    The completion is first cut at a run-on ``Q:``. A trailing sentence period is removed (``"1,234."`` ->
    ``"1,234"``), as are surrounding quotes, spaces and markdown emphasis.
    """
    text = truncate_at_new_question(normalize_dashes(text))
    matches = list(_ANSWER_CUE_RE.finditer(text))
    if not matches:
        return None
    segment = text[matches[-1].end() :].strip(" \t:")
    segment = segment.split("\n", 1)[0]
    segment = segment.strip(_EDGE_JUNK)
    if segment.endswith("."):
        segment = segment[:-1]
    return segment.strip(_EDGE_JUNK)


def normalize_answer(text: str) -> str:
    """Comparison key of an answer: lower-case, spaces collapsed, edge quotes/markdown and a trailing ``.``/``!``
    dropped; ``"(A)"`` -> ``"a"``. Brackets are only removed around a single token, so Dyck answers such as
    ``") ]"`` survive. Compare keys; never write them into data (that is :func:`canonical_answer`)."""
    text = " ".join(normalize_dashes(text).split()).lower()
    text = text.lstrip(_EDGE_JUNK).rstrip(_EDGE_JUNK + ".!")  # one pass (a loop of strips was quadratic in ". . .")
    match = re.fullmatch(r"\(\s*([^\s()]+)\s*\)", text)
    return match.group(1) if match else text


# ------------------------------------------------------------------------------------------------ arithmetic

_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def eval_arithmetic(expression: str) -> float:
    """Safely evaluate ``+ - * /`` arithmetic with parentheses (e.g. SVAMP's ``( ( 17.0 + 15.0 ) + 2.0 )``).

    Anything else (names, calls, powers, booleans) and division by zero raise ``ValueError`` naming the expression.
    """

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"Unsupported expression {expression!r}: only numbers, + - * / and parentheses.")

    try:
        return ev(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ZeroDivisionError) as err:
        raise ValueError(f"Cannot evaluate {expression!r}: {err}") from err
