"""Where data files are and how they are read: the data folder, file lookup, JSON lines, and local files as tables.

Training loaders (this package) and evaluation loaders (:mod:`slowed_peft.eval.tasks`) both read files through these
functions, so each file format has one reader. A data folder (``data_dir=`` / ``path=`` arguments, else
``$SLOWED_DATA_DIR``) is laid out as::

    gsm8k/{train,test}.jsonl                                  GSM8K
    distill_step_by_step/{svamp,cqa}/...                      SVAMP / CQA with PaLM rationales
    bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt           BIG-Bench Hard examples and 3-shot CoT prompts
    arc/ARC-Challenge-{Train,Dev,Test}.jsonl                  ARC-Challenge
    agieval/<task>.jsonl                                      AGIEval (English multiple choice)
    advbench/harmful_behaviors.csv                            AdvBench
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from datasets import Dataset, load_dataset

from ..utils.paths import data_dir as configured_data_dir


PathLike = Union[str, Path]

ARC_FILES = ("arc/ARC-Challenge-{split}.jsonl", "arc/ARC-Challenge/ARC-Challenge-{split}.jsonl")
AGIEVAL_FILES = ("agieval/{task}.jsonl",)


def data_root(data_dir: Optional[PathLike] = None) -> Path:
    """``data_dir`` when given, else ``$SLOWED_DATA_DIR`` (``ValueError`` saying how to provide one if neither)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return configured_data_dir(required=True)


def default_data_path(subdir: str) -> Path:
    """``<data folder>/<subdir>`` (``ValueError`` when no data folder is configured)."""
    return data_root() / subdir


def find_data_file(root: Path, *candidates: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that is a file; ``FileNotFoundError`` naming the first."""
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(f"Data file not found: {root / candidates[0]} (pass data_dir= or set SLOWED_DATA_DIR).")


def read_json_lines(path: PathLike, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The first ``limit`` (default: all) non-empty lines of a JSON-lines file as dicts.

    ``FileNotFoundError`` naming the file when it is absent; ``ValueError`` naming file and line for bad JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err}).") from err
    return rows


def read_table_file(path: PathLike, builder: str = "json") -> Dataset:
    """A local file as one ``datasets`` table (Arrow-cached by ``datasets``; ``builder``: json / csv / parquet).

    ``FileNotFoundError`` naming the file when it is absent; ``ValueError`` when it holds no rows.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except ValueError as err:
        if "no data" in str(err):  # datasets: 'Instruction "train" corresponds to no data!'
            raise ValueError(f"The dataset file {path} is empty: no rows to convert.") from err
        raise


def read_arc(split: str = "test", data_dir: Optional[PathLike] = None, limit: Optional[int] = None) -> list[dict]:
    """Raw ARC-Challenge rows of ``split`` (``train``/``dev``/``test``): ``{"id", "question": {"stem", "choices"},
    "answerKey"}``."""
    name = split.capitalize()
    return read_json_lines(find_data_file(data_root(data_dir), *(f.format(split=name) for f in ARC_FILES)), limit)


def read_agieval(task: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None) -> list[dict]:
    """Raw AGIEval rows of ``task``: ``{"passage", "question", "options": ["(A)...", ...], "label"}``."""
    return read_json_lines(find_data_file(data_root(data_dir), *(f.format(task=task) for f in AGIEVAL_FILES)), limit)
