"""Dataset builders for the task YAMLs of this folder (lm-eval imports this file by path: absolute imports only)."""

from __future__ import annotations

import json
import os
import re
from typing import Any


ENV_VAR = "SLOWED_DATA_DIR"


def _data_file(*parts: str) -> str:
    root = os.environ.get(ENV_VAR)
    if not root:
        raise ValueError(f"slowed_peft lm-eval tasks read local files: set ${ENV_VAR} to the data folder.")
    path = os.path.join(root, *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"slowed_peft lm-eval tasks: {path} does not exist (${ENV_VAR}={root}).")
    return path


def load_gsm8k(**kwargs: Any):
    """GSM8K ``train`` / ``test`` splits from ``$SLOWED_DATA_DIR/gsm8k/*.jsonl`` (fields ``question``, ``answer``)."""
    import datasets

    files = {split: _data_file("gsm8k", f"{split}.jsonl") for split in ("train", "test")}
    return datasets.load_dataset("json", data_files=files)


def _flatten_arc(row: dict) -> dict:
    q = row["question"]
    return {
        "id": row["id"],
        "question": q["stem"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
        "answerKey": row["answerKey"],
    }


def load_arc_challenge(**kwargs: Any):
    """ARC-Challenge ``train`` / ``validation`` / ``test`` in the layout of ``allenai/ai2_arc`` (flat ``question``,
    ``choices.text`` / ``choices.label``, ``answerKey``) from ``$SLOWED_DATA_DIR/arc/ARC-Challenge-*.jsonl``."""
    import datasets

    names = {"train": "Train", "validation": "Dev", "test": "Test"}
    files = {split: _data_file("arc", f"ARC-Challenge-{name}.jsonl") for split, name in names.items()}
    raw = datasets.load_dataset("json", data_files=files)
    return raw.map(_flatten_arc, remove_columns=raw["train"].column_names)


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


def load_bbh(bbh_task: str, **kwargs: Any):
    """BIG-Bench Hard ``bbh_task``: ``test`` (``input``, ``target``; the layout of the Hub's ``SaylorTwift/bbh``)
    from ``$SLOWED_DATA_DIR/bbh/bbh/<task>.json`` and ``fewshot`` (the 3 CoT exemplars) from
    ``bbh/cot-prompts/<task>.txt``; every row carries the task ``description``."""
    import datasets

    with open(_data_file("bbh", "bbh", f"{bbh_task}.json"), encoding="utf-8") as f:
        examples = json.load(f)["examples"]
    with open(_data_file("bbh", "cot-prompts", f"{bbh_task}.txt"), encoding="utf-8") as f:
        description, exemplars = parse_bbh_cot_prompt(f.read())

    def split(rows: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "input": [r["input"] for r in rows],
                "target": [str(r["target"]) for r in rows],
                "description": [description] * len(rows),
            }
        )

    return datasets.DatasetDict({"test": split(examples), "fewshot": split(exemplars)})
