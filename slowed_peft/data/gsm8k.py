"""GSM8K: ``{"question", "answer": "...<<a=b>>...\\n#### 42"}`` JSON lines, read for training and for evaluation.

One locator (:func:`gsm8k_file`) and one solution parser (:func:`parse_gsm8k_answer`) serve both
:func:`load_gsm8k` (prompt-completion rows) and :func:`read_gsm8k` (plain dicts, used by the evaluation loader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from datasets import Dataset

from .answers import canonical_answer
from .formats import check_columns, clip_limit, map_rows, to_prompt_completion
from .readers import find_data_file, read_json_lines_numbered, read_table_file, row_error, rows_of, search_roots


PathLike = Union[str, Path]

GSM8K_FILES = ("gsm8k/{split}.jsonl", "gsm8k/grade_school_math/data/{split}.jsonl")


def parse_gsm8k_answer(solution: str) -> tuple[str, str]:
    """``(rationale, answer)`` from a GSM8K worked solution: ``<<...>>`` annotations removed, answer after ``####``.

    Thousands separators are dropped from the answer (``1,080`` -> ``1080``).
    """
    if not isinstance(solution, str):
        raise ValueError(f"GSM8K solution must be a string ending with '#### <answer>', got {solution!r}.")
    body, sep, final = solution.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {solution[-80:]!r}")
    rationale = remove_calculator_annotations(body).strip()
    answer = final.strip().replace(",", "")
    return rationale, canonical_answer(answer)


def remove_calculator_annotations(text: str) -> str:
    """``text`` without GSM8K's ``<<48/2=24>>`` calculator annotations: what ``re.sub(r"<<[^>]*>>", "", text)`` gave,
    in one linear pass (that pattern is quadratic in a run of ``<`` without ``>``)."""
    out, pos = [], 0
    start = text.find("<<")
    while start >= 0:
        close = text.find(">", start + 2)
        if close < 0:
            break  # no ">" left: no later "<<" can close either
        if text.startswith(">>", close):
            out.append(text[pos:start])
            pos = close + 2
            start = text.find("<<", pos)
        else:  # every "<<" before this lone ">" meets it first and fails too
            start = text.find("<<", close + 1)
    out.append(text[pos:])
    return "".join(out)


def gsm8k_file(split: str = "train", path: Optional[PathLike] = None, data_dir: Optional[PathLike] = None) -> Path:
    """The GSM8K ``split`` file: ``path`` itself (a ``.jsonl``) or ``path/{split}.jsonl`` (a folder); without
    ``path``, the GSM8K file of the data folder (``data_dir`` or ``$SLOWED_DATA_DIR``)."""
    if path is not None:
        path = Path(path).expanduser()
        return path / f"{split}.jsonl" if path.is_dir() else path
    return find_data_file(search_roots(data_dir), *(f.format(split=split) for f in GSM8K_FILES))


def read_gsm8k(
    split: str = "test",
    path: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    limit: Optional[int] = None,
) -> list[dict[str, str]]:
    """The first ``limit`` GSM8K rows as ``{"question", "rationale", "answer"}`` dicts (see :func:`gsm8k_file`)."""
    file = gsm8k_file(split, path, data_dir)
    rows = []
    for line, row in read_json_lines_numbered(file, limit):
        try:
            rationale, answer = parse_gsm8k_answer(row["answer"])
            rows.append({"rationale": rationale, "answer": answer, "question": row["question"]})
        except (ValueError, KeyError) as err:
            raise row_error(file, line, err) from err
    return rows


def gsm8k_to_prompt_completion(
    ds: Dataset, question_column: str = "question", answer_column: str = "answer", conversational: bool = False
) -> Dataset:
    """Convert GSM8K-layout rows (a question and a ``#### answer`` worked solution), e.g. a Hub copy of GSM8K."""
    check_columns(ds, [question_column, answer_column])

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        rationale, answer = parse_gsm8k_answer(example[answer_column])
        return to_prompt_completion(example[question_column], rationale, answer, conversational)

    return map_rows(ds, convert)


def load_gsm8k(
    path: Optional[PathLike] = None, split: str = "train", limit: Optional[int] = None, conversational: bool = False
) -> Dataset:
    """GSM8K from a ``.jsonl`` file, or a folder holding ``{split}.jsonl`` (default: the data folder's GSM8K).

    The file is read as an Arrow table, so ``datasets`` caches this and every later ``map`` (tokenizing, entropy).
    """
    file = gsm8k_file(split, path)
    ds = read_table_file(file)
    if limit is not None:
        ds = ds.select(range(clip_limit(len(ds), limit)))
    with rows_of(file):
        return gsm8k_to_prompt_completion(ds, conversational=conversational)
