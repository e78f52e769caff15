"""Dataset builders for the task YAMLs of this folder (lm-eval imports this file by path: absolute imports only).

Each YAML names its builder with ``custom_dataset: !function utils.<name>_splits``. The files are found and read by
:mod:`slowed_peft.data` — the same locators (:func:`~slowed_peft.data.gsm8k.gsm8k_file`,
:func:`~slowed_peft.data.bbh.bbh_examples_file`, ...) and readers (:mod:`slowed_peft.data.readers`) as training and
our own evaluation — so a missing, empty, non-UTF-8 or malformed file is reported with its path (and line and column
where there is one), never as a bare ``json`` or ``datasets`` error. The data folder is ``$SLOWED_DATA_DIR``, or
``data_dir`` in lm-eval's ``--metadata``. The builders are named ``*_splits`` (a ``DatasetDict`` in the layout of the
Hub dataset lm-eval's own task reads), apart from :mod:`slowed_peft.data`'s ``load_*`` (prompt-completion rows).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

from slowed_peft.data.bbh import bbh_examples_file, bbh_prompt_file, read_bbh_examples
from slowed_peft.data.gsm8k import gsm8k_file
from slowed_peft.data.readers import (
    ARC_FILES,
    data_root,
    find_data_file,
    line_of_row,
    read_json_lines_numbered,
    read_table_file,
    read_text,
    row_error,
)


PathLike = Union[str, Path]

__all__ = ["arc_challenge_splits", "bbh_splits", "gsm8k_splits", "parse_bbh_cot_prompt"]


def gsm8k_splits(data_dir: Optional[PathLike] = None, **kwargs: Any):
    """GSM8K ``train`` / ``test`` (``question``, ``answer``) from the data folder's ``gsm8k/{train,test}.jsonl``."""
    import datasets

    splits = {}
    for split in ("train", "test"):
        file = gsm8k_file(split, data_dir=data_dir)
        table = read_table_file(file)
        missing = [c for c in ("question", "answer") if c not in table.column_names]
        if missing:
            raise ValueError(f"{file}: missing field(s) {missing} (GSM8K rows have 'question' and 'answer').")
        for column in ("question", "answer"):
            for index, value in enumerate(table[column]):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(
                        f"{file}:{line_of_row(file, index)}: field {column!r} must be non-empty text, got {value!r:.60}."
                    )
        splits[split] = table
    return datasets.DatasetDict(splits)


def _flatten_arc(row: dict) -> dict:
    q = row["question"]
    labels = [str(c["label"]) for c in q["choices"]]
    key = str(row["answerKey"])
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return {
        "id": row["id"],
        "question": q["stem"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": labels},
        "answerKey": key,
    }


def arc_challenge_splits(data_dir: Optional[PathLike] = None, **kwargs: Any):
    """ARC-Challenge ``train`` / ``validation`` / ``test`` in the layout of ``allenai/ai2_arc`` (flat ``question``,
    ``choices.text`` / ``choices.label``, ``answerKey``) from the data folder's ``arc/ARC-Challenge-*.jsonl``; a row
    without those fields, or whose ``answerKey`` is not a label, is named by file and line."""
    import datasets

    names = {"train": "Train", "validation": "Dev", "test": "Test"}
    root = data_root(data_dir)
    splits = {}
    for split, name in names.items():
        file = find_data_file(root, *(f.format(split=name) for f in ARC_FILES))
        rows = []
        for line, row in read_json_lines_numbered(file):
            try:
                rows.append(_flatten_arc(row))
            except (KeyError, TypeError, ValueError) as err:
                raise row_error(file, line, err) from err
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


# BBH: the CoT prompt file is a canary line, "-----", the task description, then 3 exemplars
# "Q: <input>\nA: Let's think step by step.\n<rationale ending in 'So the answer is X.'>" separated by blank lines
# (one file, sports_understanding, has a space instead of the newline after "step.").
_CANARY_END = "-----\n"
_COT_CUE = re.compile(r"\nA: Let's think step by step\.[ \n]")


def parse_bbh_cot_prompt(text: str) -> tuple[str, list[dict[str, str]]]:
    """``(description, exemplars)`` of a BBH CoT prompt file, as lm-eval's ``bbh_cot_fewshot`` YAMLs spell them.

    ``description`` ends with a blank line (lm-eval's ``description``); each exemplar is ``{"input", "target"}``
    with the rationale as ``target`` (lm-eval's ``fewshot_config.samples``).
    """
    text = text.replace("\r\n", "\n")
    if _CANARY_END in text:
        text = text.split(_CANARY_END, 1)[1]
    description, _, rest = text.strip().partition("\n\nQ: ")
    exemplars = []
    for block in rest.split("\n\nQ: ") if rest else []:
        parts = _COT_CUE.split(block, maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f'Malformed BBH exemplar (no "A: Let\'s think step by step."): {block[:80]!r}')
        exemplars.append({"input": parts[0].strip(), "target": parts[1].strip()})
    return f"{description.strip()}\n\n", exemplars


def bbh_splits(bbh_task: str, data_dir: Optional[PathLike] = None, **kwargs: Any):
    """BIG-Bench Hard ``bbh_task``: ``test`` (``input``, ``target``; the layout of the Hub's ``SaylorTwift/bbh``)
    from the data folder's ``bbh/bbh/<task>.json`` and ``fewshot`` (the 3 CoT exemplars) from
    ``bbh/cot-prompts/<task>.txt``; every row carries the task ``description``."""
    import datasets

    examples = read_bbh_examples(bbh_task, data_dir)
    examples_file = bbh_examples_file(bbh_task, data_dir)
    for i, row in enumerate(examples):
        missing = [k for k in ("input", "target") if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{examples_file}: examples[{i}]: missing field(s) {missing}.")
    prompt_file = bbh_prompt_file(bbh_task, data_dir)
    try:
        description, exemplars = parse_bbh_cot_prompt(read_text(prompt_file))
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(str(prompt_file)) else f"{prompt_file}: {err}") from err
    if not exemplars:
        raise ValueError(f"{prompt_file}: no 'Q: ...' exemplars after the task description.")

    def split(rows: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "input": [r["input"] for r in rows],
                "target": [str(r["target"]) for r in rows],
                "description": [description] * len(rows),
            }
        )

    return datasets.DatasetDict({"test": split(examples), "fewshot": split(exemplars)})
