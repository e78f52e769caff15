"""BIG-Bench Hard files: the 3-shot CoT prompts (``bbh/cot-prompts/<task>.txt``) and the task examples
(``bbh/bbh/<task>.json``), read for training (exemplars as CoT rows) and for evaluation (prompt + examples).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from datasets import Dataset

from .answers import ANSWER_PREFIX, canonical_answer
from .formats import clip_limit, rows_to_dataset, to_prompt_completion
from .readers import default_data_path, find_data_file, read_json_file, read_text, search_roots


PathLike = Union[str, Path]

BBH_SUBDIR = "bbh/cot-prompts"
BBH_PROMPT_FILES = ("bbh/cot-prompts/{task}.txt", "cot-prompts/{task}.txt")
BBH_EXAMPLE_FILES = ("bbh/bbh/{task}.json", "bbh/{task}.json")

_BBH_BLOCK_RE = re.compile(r"(?:^|\n\n)Q: ")
_CANARY_END = "-----\n"


def bbh_few_shot(text: str) -> str:
    """A BBH CoT prompt file without its canary header: the task description and the ``Q: ... A: ...`` exemplars."""
    text = text.replace("\r\n", "\n")
    if _CANARY_END in text:
        text = text.split(_CANARY_END, 1)[1]
    return text.strip()


def bbh_prompt_file(task: str, data_dir: Optional[PathLike] = None) -> Path:
    """The 3-shot CoT prompt file of BBH ``task`` in the data folder (``FileNotFoundError`` naming it if absent)."""
    return find_data_file(search_roots(data_dir), *(f.format(task=task) for f in BBH_PROMPT_FILES))


def bbh_examples_file(task: str, data_dir: Optional[PathLike] = None) -> Path:
    """The examples file of BBH ``task`` in the data folder (``FileNotFoundError`` naming it if absent)."""
    return find_data_file(search_roots(data_dir), *(f.format(task=task) for f in BBH_EXAMPLE_FILES))


def read_bbh_prompt(task: str, data_dir: Optional[PathLike] = None) -> str:
    """The 3-shot CoT prompt of BBH ``task`` without its canary header (see :func:`bbh_few_shot`)."""
    return bbh_few_shot(read_text(bbh_prompt_file(task, data_dir)))


def read_bbh_examples(task: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None) -> list[dict]:
    """The first ``limit`` examples ``{"input", "target"}`` of BBH ``task``."""
    file = bbh_examples_file(task, data_dir)
    data = read_json_file(file)
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise ValueError(f"{file}: expected a JSON object with an 'examples' list.")
    return examples[: clip_limit(len(examples), limit)]


def parse_bbh_prompt(text: str, include_description: bool = True) -> list[dict[str, str]]:
    """Few-shot exemplars of a BBH CoT prompt as ``{"question", "rationale", "answer"}`` dicts.

    The file is a header (canary line, ``-----``, task description) then ``Q: ...\\nA: ...`` blocks whose rationale
    ends with "So the answer is <answer>.". With ``include_description`` the description leads each question.
    """
    parts = _BBH_BLOCK_RE.split(bbh_few_shot(text))
    description, blocks = parts[0].strip(), parts[1:]
    exemplars = []
    for block in blocks:
        question, sep, rationale = block.partition("\nA: ")
        rationale_head, marker, answer = rationale.strip().rpartition(ANSWER_PREFIX)
        if not sep or not marker:
            raise ValueError(f"Malformed BBH exemplar (needs '\\nA: ' and '{ANSWER_PREFIX}'): {block[:80]!r}")
        if include_description and description:
            question = f"{description}\n\n{question.strip()}"
        exemplars.append(
            {"question": question.strip(), "rationale": rationale_head.strip(), "answer": canonical_answer(answer)}
        )
    return exemplars


def load_bbh(
    path: Optional[PathLike] = None,
    split: str = "train",
    limit: Optional[int] = None,
    conversational: bool = False,
    tasks: Optional[list[str]] = None,
) -> Dataset:
    """BBH CoT exemplars from a prompt ``.txt`` file or a folder of them (default: the data folder's
    ``bbh/cot-prompts``). Only the few-shot exemplars carry rationales, so the only split is ``"train"``; ``tasks``
    filters file stems. (Evaluation prompts of a task: :func:`slowed_peft.eval.load_bbh`.)
    """
    if split != "train":
        raise ValueError(f"BBH CoT prompts only provide a 'train' split of few-shot exemplars, not {split!r}.")
    path = Path(path) if path is not None else default_data_path(BBH_SUBDIR)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if tasks is not None:
        files = [f for f in files if f.stem in set(tasks)]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"No BBH prompt files at {path} (tasks={tasks}).")
    rows = []
    for file in files:
        try:
            for ex in parse_bbh_prompt(read_text(file)):
                rows.append(to_prompt_completion(ex["question"], ex["rationale"], ex["answer"], conversational))
        except ValueError as err:
            raise ValueError(err.args[0] if str(err).startswith(str(file)) else f"{file}: {err}") from err
    return rows_to_dataset(rows[: clip_limit(len(rows), limit)], "BBH exemplar set")
