"""Answer extraction from model completions, one function per answer format (numbers, choices, BBH), plus matching.

Convention: CoT-distilled models end their completion with a line ``So the answer is <answer>.`` Every extractor
first looks at that final-answer segment and only then falls back to heuristics over the whole completion. The
answer line itself, its parser (:func:`final_answer_segment`), the comparison key (:func:`normalize_answer`) and
safe arithmetic live in :mod:`slowed_peft.data.answers`, shared with the data loaders; they are re-exported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Optional

from ..data.answers import (
    eval_arithmetic,
    final_answer_segment,
    normalize_answer,
    normalize_dashes,
    truncate_at_new_question,
)


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

eval_equation = eval_arithmetic  # the public eval name of the one safe arithmetic evaluator

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


# ----------------------------------------------------------------------------------------------- numbers


def parse_number(text: str) -> Optional[float]:
    """The number in ``text`` (``"$1,234.50"`` -> ``1234.5``, ``"-3"`` -> ``-3.0``), or ``None``."""
    match = _NUMBER.search(normalize_dashes(text))
    return float(match.group(0).replace(",", "")) if match else None


_EXPRESSION = re.compile(r"[\d\s.+\-*/()x\u00d7\u00f7]+")


def _expression_value(segment: str) -> Optional[float]:
    """Value of a segment that is a bare arithmetic expression (``"(10 * 45)"``), else ``None``."""
    if not _EXPRESSION.fullmatch(segment) or not re.search(r"\d\s*[-+*/x\u00d7\u00f7]\s*[\d(]", segment):
        return None
    try:
        return eval_arithmetic(segment.replace("x", "*").replace("\u00d7", "*").replace("\u00f7", "/"))
    except ValueError:
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
    numbers = _NUMBER.findall(truncate_at_new_question(normalize_dashes(text)))
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


def _extract_word(segment: str, words: Sequence[str]) -> Optional[str]:
    found = re.findall(r"\b(" + "|".join(words) + r")\b", segment, flags=re.IGNORECASE)
    return found[0].lower() if found else None


def extract_bbh_answer(text: str, fmt: str) -> Optional[str]:
    """Normalised BBH answer for format ``fmt`` (see :func:`bbh_answer_format`), or ``None``.

    Read from the final-answer segment only (``So the answer is ...``), as lm-eval's ``get-answer`` filter does for
    ``bbh_cot_fewshot``: a completion without the cue has no answer (a rambling base model is not credited with a
    guess). ``choice`` -> ``"(b)"``-style letter normalised to ``"b"``; ``bool`` -> ``"true"``/``"false"``;
    ``yes_no`` -> ``"yes"``/``"no"``; ``validity`` -> ``"valid"``/``"invalid"``; ``number`` -> e.g. ``"-219"``;
    ``free`` -> the normalised final-answer segment.
    """
    if fmt not in BBH_FORMATS:
        raise ValueError(f"Unknown BBH answer format {fmt!r}; expected one of {BBH_FORMATS}.")
    segment = final_answer_segment(text)
    if segment is None:
        return None
    if fmt == "choice":
        label = _choice_in(segment, _BBH_LETTERS, None)
        return label.lower() if label else None
    if fmt in _WORD_SETS:
        return _extract_word(segment, _WORD_SETS[fmt])
    if fmt == "number":
        value = extract_number(f"So the answer is {segment}.")  # the segment rules (equation, bare expression)
        if value is None:
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return normalize_answer(segment) or None


def bbh_match(text: str, target: str) -> bool:
    """Whether completion ``text`` answers BBH ``target`` (format inferred from the target)."""
    fmt = bbh_answer_format(target)
    pred = extract_bbh_answer(text, fmt)
    if pred is None:
        return False
    if fmt == "number":
        return numbers_match(float(pred), float(target))
    return pred == normalize_answer(target)
