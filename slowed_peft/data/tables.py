"""Any table as CoT rows: a local json/jsonl/csv/parquet file, a local dataset folder or a Hugging Face Hub dataset id,
loaded as a ``datasets`` table (:func:`load_table`) and converted with its column layout auto-detected
(:func:`convert_auto`). (Pushing adapters to the Hub is :mod:`slowed_peft.hub`, not this module.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from datasets import Dataset, load_dataset

from .formats import from_columns, from_question_rationale_answer
from .gsm8k import gsm8k_to_prompt_completion
from .readers import read_table_file


FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
COLUMN_ARGS = ("prompt_column", "completion_column", "question_column", "rationale_column", "answer_column")
BUILTIN_SOURCES = ("gsm8k", "svamp", "cqa", "bbh", "demo", "columns")
ACCEPTED_LAYOUTS = (
    "'prompt' + 'completion' columns (optional 'answer'); "
    "'question' + 'rationale' + 'answer' columns; "
    "GSM8K 'question' + 'answer' columns whose answer ends with '#### <answer>'; "
    "other column names mapped with " + ", ".join(f"{a}=..." for a in COLUMN_ARGS) + "; "
    "built-in sources " + ", ".join(repr(s) for s in BUILTIN_SOURCES)
)


def load_table(source: Union[str, Path], split: str = "train", subset: Optional[str] = None) -> Dataset:
    """Load a local file (json/jsonl/csv/parquet, as its one ``train`` split), a local dataset folder, or a Hub id.

    A Hub id that cannot be loaded (e.g. not cached while ``HF_HUB_OFFLINE=1``) raises ``ValueError`` with a hint.
    """
    path = Path(source).expanduser()
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is not None:
        return read_table_file(path, builder)
    if path.is_dir():
        return load_dataset(str(path), split=split)
    try:
        return load_dataset(str(source), subset, split=split)
    except Exception as err:  # datasets raises several error types for "not found / offline"
        raise ValueError(
            f"Could not load {str(source)!r} (split={split!r}): it is not a local file or folder, and as a Hugging Face "
            f"Hub dataset it failed with {type(err).__name__}: {err}. Hub datasets load only when cached locally or "
            "when online: with HF_HUB_OFFLINE=1 only cached datasets are available (set HF_HUB_OFFLINE=0 with network "
            f"access, or pass a local json/jsonl/csv/parquet file). Accepted layouts: {ACCEPTED_LAYOUTS}."
        ) from err


def _is_gsm8k_layout(ds: Dataset, question_column: str, answer_column: str) -> bool:
    if question_column not in ds.column_names or answer_column not in ds.column_names or len(ds) == 0:
        return False
    first = ds[0][answer_column]
    return isinstance(first, str) and "####" in first


def convert_auto(ds: Dataset, conversational: bool = False, **column_mapping: str) -> Dataset:
    """Convert ``ds`` to prompt-completion rows, detecting its layout (explicit ``*_column`` arguments win).

    Passing ``prompt_column``/``completion_column`` selects the prompt-completion layout and
    ``question_column``/``rationale_column`` the question-rationale-answer one; missing columns then raise a
    ``ValueError`` naming them. Otherwise the first matching layout of :data:`ACCEPTED_LAYOUTS` is used.
    """
    unknown = sorted(set(column_mapping) - set(COLUMN_ARGS))
    if unknown:
        raise TypeError(f"Unknown column-mapping argument(s) {unknown}; accepted: {list(COLUMN_ARGS)}.")
    if len(ds) == 0:
        raise ValueError("The dataset is empty: no rows to convert.")
    prompt = column_mapping.get("prompt_column", "prompt")
    completion = column_mapping.get("completion_column", "completion")
    question = column_mapping.get("question_column", "question")
    rationale = column_mapping.get("rationale_column", "rationale")
    answer = column_mapping.get("answer_column", "answer")
    columns = set(ds.column_names)
    explicit_pc = "prompt_column" in column_mapping or "completion_column" in column_mapping
    explicit_qra = "question_column" in column_mapping or "rationale_column" in column_mapping
    if explicit_pc or (not explicit_qra and {prompt, completion} <= columns):
        return from_columns(
            ds, prompt, completion, answer_column=column_mapping.get("answer_column"), conversational=conversational
        )
    if explicit_qra and "rationale_column" not in column_mapping and _is_gsm8k_layout(ds, question, answer):
        explicit_qra = rationale in columns
    if explicit_qra or {question, rationale, answer} <= columns:
        return from_question_rationale_answer(ds, question, rationale, answer, conversational=conversational)
    if _is_gsm8k_layout(ds, question, answer):
        return gsm8k_to_prompt_completion(ds, question, answer, conversational=conversational)
    raise ValueError(f"Unknown dataset layout: columns {list(ds.column_names)}. Accepted layouts: {ACCEPTED_LAYOUTS}.")
