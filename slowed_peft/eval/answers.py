"""Answer extraction from model completions, one function per answer format, plus matching helpers.

Convention: CoT-distilled models end their completion with a line ``So the answer is <answer>.`` Every extractor
first looks at that final-answer segment (see :func:`final_answer_segment`) and only then falls back to heuristics
over the whole completion.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Callable, Optional, Sequence

__all__ = [
    "BBH_FORMATS",
    "bbh_answer_format",
    "bbh_match",
    "eval_equation",
    "extract_bbh_answer",
    "extract_choice",
    "extract_number",
    "final_answer_segment",
    "normalize_answer",
    "numbers_match",
    "parse_number",
    "truncate_at_new_question",
]

# "So the answer is", "the answer is", "The final answer is", "Answer:", "####" (GSM8K style).
_ANSWER_CUE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is\s*:?|\banswer\s*:|####)", re.IGNORECASE)
# A new few-shot question started by a base model that keeps going after its answer.
_NEW_QUESTION = re.compile(r"\n\s*(?:Q|Question)\s*:")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_DASHES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2019": "'", "\u2018": "'"})
_EDGE_JUNK = " \t\n\"'`*_"


def truncate_at_new_question(text: str) -> str:
    """Cut a completion where the model starts a new ``Q:``/``Question:`` (few-shot run-on)."""
    match = _NEW_QUESTION.search(text)
    return text[: match.start()] if match else text


def final_answer_segment(text: str) -> Optional[str]:
    """Text after the last answer cue (``So the answer is`` etc.) up to the end of that line, or ``None``.

    The completion is first cut at a run-on ``Q:``. A trailing sentence period is removed (``"1,234."`` ->
    ``"1,234"``), as are surrounding quotes, spaces and markdown emphasis.
    """
    text = truncate_at_new_question(text.translate(_DASHES))
    matches = list(_ANSWER_CUE.finditer(text))
    if not matches:
        return None
    segment = text[matches[-1].end() :].strip(" \t:")
    segment = segment.split("\n", 1)[0]
    segment = segment.strip(_EDGE_JUNK)
    if segment.endswith("."):
        segment = segment[:-1]
    return segment.strip(_EDGE_JUNK)


def normalize_answer(text: str) -> str:
    """Lower-case, collapse spaces, drop edge quotes/markdown and a trailing ``.``/``!``; ``"(A)"`` -> ``"a"``.

    Brackets are only removed around a single token, so Dyck answers such as ``") ]"`` survive.
    """
    text = " ".join(text.translate(_DASHES).split()).lower()
    previous = None
    while text != previous:
        previous, text = text, text.strip(_EDGE_JUNK).rstrip(".!")
    match = re.fullmatch(r"\(\s*([^\s()]+)\s*\)", text)
    return match.group(1) if match else text


# ----------------------------------------------------------------------------------------------- numbers


def parse_number(text: str) -> Optional[float]:
    """The number in ``text`` (``"$1,234.50"`` -> ``1234.5``, ``"-3"`` -> ``-3.0``), or ``None``."""
    match = _NUMBER.search(text.translate(_DASHES))
    return float(match.group(0).replace(",", "")) if match else None


_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}  # fmt: skip


def eval_equation(equation: str) -> float:
    """Safely evaluate ``+ - * /`` arithmetic such as the SVAMP label ``"( 10.0 - ( 6.0 + 3.0 ) )"``.

    Anything else (names, calls, powers) raises ``ValueError``.
    """

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        raise ValueError(f"Unsupported expression in equation {equation!r}.")

    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"Unsupported expression in equation {equation!r}.") from err
    return ev(tree.body)


_EXPRESSION = re.compile(r"[\d\s.+\-*/()x\u00d7\u00f7]+")


def _expression_value(segment: str) -> Optional[float]:
    """Value of a segment that is a bare arithmetic expression (``"(10 * 45)"``), else ``None``."""
    if not _EXPRESSION.fullmatch(segment) or not re.search(r"\d\s*[-+*/x\u00d7\u00f7]\s*[\d(]", segment):
        return None
    try:
        return eval_equation(segment.replace("x", "*").replace("\u00d7", "*").replace("\u00f7", "/"))
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> Optional[float]:
    """Numeric answer (GSM8K, SVAMP, BBH arithmetic/counting).

    In the final-answer segment the first number is taken (``"So the answer is 18 dollars."``), or the last one
    when the segment is an equation (``"So the answer is 9 * 2 = 18."``). Without a segment: the last number of
    the completion. A segment that is a bare expression (``"So the answer is (10 * 45)."``, the style of the
    distilling-step-by-step SVAMP rationales) is evaluated. Handles ``$``, thousands commas, a trailing ``.``,
    negatives and decimals.
    """
    segment = final_answer_segment(text)
    if segment is not None:
        value = _expression_value(segment.replace(",", ""))
        if value is not None:
            return value
        numbers = _NUMBER.findall(segment)
        if numbers:
            pick = numbers[-1] if "=" in segment else numbers[0]
            return float(pick.replace(",", ""))
    numbers = _NUMBER.findall(truncate_at_new_question(text.translate(_DASHES)))
    return float(numbers[-1].replace(",", "")) if numbers else None


def numbers_match(pred: Optional[float], gold: float, abs_tol: float = 1e-4, rel_tol: float = 1e-9) -> bool:
    """Numeric equality with a small tolerance; ``None`` never matches."""
    if pred is None or gold is None:
        return False
    return math.isclose(float(pred), float(gold), rel_tol=rel_tol, abs_tol=abs_tol)


# ----------------------------------------------------------------------------------------- multiple choice


def _label_pattern(labels: Sequence[str]) -> str:
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


def _choice_in(segment: str, labels: Sequence[str], choices: Optional[Sequence[str]]) -> Optional[str]:
    alt = _label_pattern(labels)
    # "(B)" / "[B]" anywhere in the segment (first one wins), else the segment starting with the label and then
    # ending or going on with punctuation: "B", "B) text", "B. text", "B: text", "option B". Labels are
    # case-sensitive so "a bit unclear" is no "A".
    found = re.findall(rf"[(\[]\s*({alt})\s*[)\]]", segment)
    if found:
        return _canonical_label(found[0], labels)
    match = re.match(rf"(?:(?i:option|choice)\s+)?({alt})(?:$|[.):,])", segment)
    if match:
        return _canonical_label(match.group(1), labels)
    if choices:
        norm = normalize_answer(segment)
        for label, choice in zip(labels, choices, strict=False):
            if norm and norm == normalize_answer(choice):
                return label
    return None


def _canonical_label(found: str, labels: Sequence[str]) -> Optional[str]:
    for label in labels:
        if label.lower() == found.lower():
            return label
    return None


def extract_choice(
    text: str, labels: Sequence[str] = ("A", "B", "C", "D", "E"), choices: Optional[Sequence[str]] = None
) -> Optional[str]:
    """Multiple-choice label (ARC ``A``-``E`` or ``1``-``4``, AGIEval ``A``-``E``, BBH ``(A)``-``(R)``) or ``None``.

    Looks in the final-answer segment for ``(B)``, ``B``, ``B.``, ``B) text``, ``option B``; if ``choices`` (option
    texts aligned with ``labels``) are given, a segment equal to an option text also counts. Fallbacks over the
    whole completion: the last ``(B)``, then a last line that is just a label.
    """
    segment = final_answer_segment(text)
    if segment is not None:
        label = _choice_in(segment, labels, choices)
        if label is not None:
            return label
    body = truncate_at_new_question(text)
    found = re.findall(rf"\(\s*({_label_pattern(labels)})\s*\)", body)
    if found:
        return _canonical_label(found[-1], labels)
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    if lines:
        match = re.fullmatch(rf"\(?({_label_pattern(labels)})[).]?", lines[-1])
        if match:
            return _canonical_label(match.group(1), labels)
    return None


# -------------------------------------------------------------------------------------------------- BBH

BBH_FORMATS = ("choice", "bool", "yes_no", "validity", "number", "free")
_BBH_LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
_WORD_SETS = {
    "bool": ("true", "false"),
    "yes_no": ("yes", "no"),
    "validity": ("invalid", "valid"),
}


def bbh_answer_format(target: str) -> str:
    """Answer format of a BBH target: ``choice`` ``(A)``, ``bool``, ``yes_no``, ``validity``, ``number`` or ``free``."""
    t = target.strip()
    if re.fullmatch(r"\([A-Z]\)", t):
        return "choice"
    low = t.lower()
    for fmt, words in _WORD_SETS.items():
        if low in words:
            return fmt
    if re.fullmatch(r"-?\d+(?:\.\d+)?", t):
        return "number"
    return "free"


def _extract_word(text: str, words: Sequence[str]) -> Optional[str]:
    segment = final_answer_segment(text)
    pattern = r"\b(" + "|".join(words) + r")\b"
    if segment is not None:
        found = re.findall(pattern, segment, flags=re.IGNORECASE)
        if found:
            return found[0].lower()
    found = re.findall(pattern, truncate_at_new_question(text), flags=re.IGNORECASE)
    return found[-1].lower() if found else None


def extract_bbh_answer(text: str, fmt: str) -> Optional[str]:
    """Normalised BBH answer for format ``fmt`` (see :func:`bbh_answer_format`), or ``None``.

    ``choice`` -> ``"(b)"``-style letter normalised to ``"b"``; ``bool`` -> ``"true"``/``"false"``; ``yes_no`` ->
    ``"yes"``/``"no"``; ``validity`` -> ``"valid"``/``"invalid"``; ``number`` -> e.g. ``"-219"``; ``free`` -> the
    normalised final-answer segment (last line as fallback).
    """
    if fmt == "choice":
        label = extract_choice(text, _BBH_LETTERS)
        return label.lower() if label else None
    if fmt in _WORD_SETS:
        return _extract_word(text, _WORD_SETS[fmt])
    if fmt == "number":
        value = extract_number(text)
        if value is None:
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if fmt == "free":
        segment = final_answer_segment(text)
        if segment is None:
            lines = [line for line in truncate_at_new_question(text).strip().splitlines() if line.strip()]
            segment = lines[-1] if lines else ""
        return normalize_answer(segment) or None
    raise ValueError(f"Unknown BBH answer format {fmt!r}; expected one of {BBH_FORMATS}.")


def bbh_match(text: str, target: str) -> bool:
    """Whether completion ``text`` answers BBH ``target`` (format inferred from the target)."""
    fmt = bbh_answer_format(target)
    pred = extract_bbh_answer(text, fmt)
    if pred is None:
        return False
    if fmt == "number":
        return numbers_match(float(pred), float(target))
    return pred == normalize_answer(target)
