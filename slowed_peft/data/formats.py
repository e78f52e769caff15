"""The fixed prompt-completion format every CoT loader produces, plus column-mapping converters for any dataset.

A row is ``{"prompt": str, "completion": str, "answer": str}`` (TRL's *prompt-completion* layout) where::

    prompt     = "Question: <question>\\nAnswer:"
    completion = " <rationale>\\nSo the answer is <answer>."

The completion always ends with the line ``So the answer is <answer>.`` (see :mod:`slowed_peft.data.answers`), and
``answer`` keeps the gold answer as a plain string for scoring. With
``conversational=True`` the row is ``{"prompt": [{"role": "user", "content": <question>}],
"completion": [{"role": "assistant", "content": "<rationale>\\nSo the answer is <answer>."}], "answer": ...}``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

from datasets import Dataset

from .answers import ANSWER_PREFIX, answer_line, canonical_answer, extract_answer, strip_answer_line


PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def clip_limit(n: int, limit: Optional[int]) -> int:
    """How many of ``n`` rows to keep under ``limit`` (``None``: all)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    return n if limit is None else min(n, limit)


def text_field(value: Any, column: str, required: bool = False) -> str:
    """``value`` of ``column`` as text: a string (or a number, written as text); ``None`` is ``""`` unless ``required``.

    ``ValueError`` naming the column for anything else (a list, dict or bool would be trained as its Python repr), for
    a NUL byte, and for an empty or blank value when ``required``."""
    if value is None and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise ValueError(
            f"column {column!r} must hold text, not a {type(value).__name__} ({value!r:.80}): it would be trained as "
            "its Python text."
        )
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ValueError(f"column {column!r} holds a NUL byte ({text!r:.80}); data files must be plain text.")
    if required and not text.strip():
        raise ValueError(f"column {column!r} is empty ({value!r}); every row needs one.")
    return text


def answer_field(value: Any, column: str) -> str:
    """:func:`canonical_answer` of ``value``, its ``ValueError`` naming ``column``."""
    try:
        return canonical_answer(value)
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')} (column {column!r}).") from None


def completion_text(rationale: str, answer: Any) -> str:
    """``rationale`` (a trailing answer sentence of its own removed) followed by the fixed answer line."""
    body = strip_answer_line(str(rationale or ""))
    return f"{body}\n{answer_line(answer)}" if body else answer_line(answer)


def to_prompt_completion(
    question: str,
    rationale: str,
    answer: Any,
    conversational: bool = False,
    columns: Sequence[str] = ("question", "rationale", "answer"),
) -> dict[str, Any]:
    """One prompt-completion row from a question, a teacher rationale and the gold answer (see module docstring).

    A trailing answer sentence already present in ``rationale`` is replaced by the fixed answer line. ``ValueError``
    naming the column (``columns``: the names of the three fields in the source) for an empty question, a NUL byte,
    or a value that is not text (an answer may also be a number).
    """
    question = text_field(question, columns[0], required=True).strip()
    rationale = text_field(rationale, columns[1])
    gold = answer_field(answer, columns[2])
    target = completion_text(rationale, gold)
    if conversational:
        return chat_row(question, target, answer=gold)
    return {"prompt": PROMPT_TEMPLATE.format(question=question), "completion": " " + target, "answer": gold}


def to_conversational(row: dict[str, Any]) -> dict[str, Any]:
    """Convert a string prompt-completion row (this module's format) to the conversational one."""
    prompt, completion = row["prompt"], row["completion"]
    if not isinstance(prompt, str):
        return dict(row)  # already conversational
    match = re.fullmatch(r"Question: (.*)\nAnswer:", prompt, flags=re.DOTALL)
    question = match.group(1) if match else prompt
    return {**row, **chat_row(question, completion.strip())}


def rows_to_dataset(rows: Iterable[dict[str, Any]], what: str = "dataset") -> Dataset:
    """A ``datasets.Dataset`` from rows; ``ValueError`` when there are none."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"The {what} is empty: no rows to convert.")
    return Dataset.from_list(rows)


def check_columns(ds: Dataset, required: Sequence[str]) -> None:
    """``ValueError`` naming missing columns (and the ones present), or when ``ds`` has no rows."""
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"Missing column(s) {missing}; the dataset has columns {list(ds.column_names)}. "
            "Pass the matching *_column arguments to map them."
        )
    if len(ds) == 0:
        raise ValueError("The dataset is empty: no rows to convert.")


def map_rows(ds: Dataset, convert: Callable[[dict[str, Any]], dict[str, Any]]) -> Dataset:
    """``ds.map(convert)`` replacing all columns; a bad row raises ``ValueError`` naming it (``row N``, 1-based).

    Callers that know the file the rows came from prefix its name (and line) to the message.
    """

    def convert_row(example: dict[str, Any], idx: int) -> dict[str, Any]:
        try:
            return convert(example)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"row {idx + 1}: {err}") from err

    features = None
    if any(type(f).__name__ == "Json" for f in ds.features.values()):
        # A column of mixed JSON types is a ``Json`` column, and ``map`` would keep that type for an output column of
        # the same name: the answer "2" would come back as the number 2. The output schema is the first row's.
        features = Dataset.from_list([convert_row(ds[0], 0)]).features
    return ds.map(convert_row, with_indices=True, remove_columns=ds.column_names, features=features)


def _message_text(value: Any, role: str, column: str, required: bool = True) -> str:
    """Plain text from a string or a list of chat messages (the content of the last message with ``role``);
    ``ValueError`` naming ``column`` when there is none, it is not text, it holds a NUL byte or (``required``) it is
    empty."""
    if isinstance(value, list):
        contents = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == role]
        if not contents:
            raise ValueError(f"column {column!r}: cannot read a {role} text from {value!r:.200}.")
        value = contents[-1]
    elif not isinstance(value, str):
        raise ValueError(f"column {column!r}: cannot read a {role} text from {value!r:.200}.")
    return text_field(value, column, required=required)


def from_columns(
    ds: Dataset,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    answer_column: Optional[str] = None,
    conversational: bool = False,
) -> Dataset:
    """Convert a dataset that already has prompt / completion columns.

    The prompt is kept verbatim. The completion is made to end with the fixed answer line: the gold answer comes
    from ``answer_column`` when given (or when an ``answer`` column exists), else from the completion's own final
    "So the answer is ..." line (``ValueError`` for a row that has neither). Chat-message lists are accepted too.
    """
    if answer_column is None and "answer" in ds.column_names:
        answer_column = "answer"
    check_columns(ds, [prompt_column, completion_column] + ([answer_column] if answer_column else []))

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        prompt = _message_text(example[prompt_column], "user", prompt_column)
        completion = _message_text(example[completion_column], "assistant", completion_column, required=False)
        if answer_column:
            gold = example[answer_column]
            answer_field(gold, answer_column)  # refused here, naming the column
        else:
            gold = extract_answer(completion)
            if gold is None:
                raise ValueError(
                    f"the completion does not end with '{ANSWER_PREFIX} <answer>.' and no answer column "
                    "was given (pass answer_column=...)."
                )
        target = completion_text(completion, gold)
        if conversational:
            return chat_row(prompt, target, answer=canonical_answer(gold))
        sep = "" if prompt[-1:].isspace() else " "
        return {"prompt": prompt, "completion": sep + target, "answer": canonical_answer(gold)}

    return map_rows(ds, convert)


def from_question_rationale_answer(
    ds: Dataset,
    question_column: str = "question",
    rationale_column: str = "rationale",
    answer_column: str = "answer",
    conversational: bool = False,
) -> Dataset:
    """Convert any dataset with question / rationale / gold-answer columns (names mapped by the arguments)."""
    check_columns(ds, [question_column, rationale_column, answer_column])
    return map_rows(
        ds,
        lambda ex: to_prompt_completion(
            ex[question_column],
            ex[rationale_column],
            ex[answer_column],
            conversational,
            columns=(question_column, rationale_column, answer_column),
        ),
    )


# ------------------------------------------------------------------------------------------- the chat format


def user_turn(content: str) -> list[dict[str, str]]:
    """One user message: the chat format of a single prompt (the one place it is spelled out)."""
    return [{"role": "user", "content": content}]


def chat_row(prompt: str, completion: str, **columns: Any) -> dict[str, Any]:
    """A conversational prompt-completion row (TRL's format): one user turn, one assistant turn, extra columns."""
    return {"prompt": user_turn(prompt), "completion": [{"role": "assistant", "content": completion}], **columns}


def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompts(
    tokenizer,
    prompts: Sequence[str],
    use_chat_template: bool = True,
    system_prompt: Optional[str] = None,
) -> list[str]:
    """Wrap each prompt as a single user turn with the chat template (plus generation prompt) when there is one.

    Without a chat template (or with ``use_chat_template=False``) the prompts are returned unchanged, and
    ``system_prompt`` (if any) is prepended followed by a blank line.
    """
    if use_chat_template and has_chat_template(tokenizer):
        out = []
        for prompt in prompts:
            messages = user_turn(prompt)
            if system_prompt is not None:
                messages.insert(0, {"role": "system", "content": system_prompt})
            out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return out
    if system_prompt:
        return [f"{system_prompt}\n\n{p}" for p in prompts]
    return list(prompts)
