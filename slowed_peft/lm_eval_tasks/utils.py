"""Dataset builders for the task YAMLs of this folder (lm-eval imports this file by path: absolute imports only)."""

from __future__ import annotations

import os
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
