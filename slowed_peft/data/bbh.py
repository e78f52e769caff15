"""BBH few-shot chain-of-thought prompts (``bbh/cot-prompts/<task>.txt``) parsed into question/rationale/answer rows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Union

from datasets import Dataset

from .formats import clip_limit, default_data_path, normalize_answer, rows_to_dataset, to_prompt_completion

BBH_SUBDIR = "bbh/cot-prompts"

_BBH_BLOCK_RE = re.compile(r"(?:^|\n\n)Q: ")


def parse_bbh_prompt(text: str, include_description: bool = True) -> List[Dict[str, str]]:
    """Few-shot exemplars of a BBH CoT prompt as ``{"question", "rationale", "answer"}`` dicts.

    The file is a header (canary line, ``-----``, task description) then ``Q: ...\\nA: ...`` blocks whose rationale
    ends with "So the answer is <answer>.". With ``include_description`` the description leads each question.
    """
    text = text.replace("\r\n", "\n").strip()
    parts = _BBH_BLOCK_RE.split(text)
    header, blocks = parts[0], parts[1:]
    description = header.split("-----")[-1].strip() if "-----" in header else header.strip()
    exemplars = []
    for block in blocks:
        question, sep, rationale = block.partition("\nA: ")
        rationale_head, marker, answer = rationale.strip().rpartition("So the answer is")
        if not sep or not marker:
            raise ValueError(f"Malformed BBH exemplar (needs '\\nA: ' and 'So the answer is'): {block[:80]!r}")
        if include_description and description:
            question = f"{description}\n\n{question.strip()}"
        exemplars.append(
            {"question": question.strip(), "rationale": rationale_head.strip(), "answer": normalize_answer(answer)}
        )
    return exemplars


def load_bbh(
    path: Optional[Union[str, Path]] = None,
    split: str = "train",
    limit: Optional[int] = None,
    conversational: bool = False,
    tasks: Optional[List[str]] = None,
) -> Dataset:
    """BBH CoT exemplars from a prompt ``.txt`` file or a folder of them (default ``<data_dir>/bbh/cot-prompts``).

    Only the few-shot exemplars carry rationales, so the only split is ``"train"``; ``tasks`` filters file stems.
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
        for ex in parse_bbh_prompt(file.read_text(encoding="utf-8")):
            rows.append(to_prompt_completion(ex["question"], ex["rationale"], ex["answer"], conversational))
    return rows_to_dataset(rows[: clip_limit(len(rows), limit)], "BBH exemplar set")
