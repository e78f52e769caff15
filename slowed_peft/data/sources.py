"""Distilling-step-by-step files (SVAMP / CQA with PaLM rationales) and :func:`load_cot_dataset`, the one entry point.

Layout of a distilling-step-by-step folder (default: ``distill_step_by_step/{svamp,cqa}`` of the data folder)::

    svamp/svamp_{split}.json            JSON lines {"input", "label": "( 84.0 / 2.0 )"}
    svamp/llm/{split}_CoT_{i}.json      JSON arrays of raw PaLM completions, 1:1 with rows
    cqa/cqa_{split}.json                JSON lines {"id", "question", "choices", "answer", ...}
    cqa/llm/{split}_CoT_{i}.json        same as SVAMP

All loaders return prompt-completion datasets in the format of :mod:`slowed_peft.data.formats`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

from datasets import Dataset

from .answers import canonical_answer, eval_arithmetic, format_number, truncate_at_new_question
from .bbh import load_bbh
from .demo import demo_cot_dataset
from .formats import clip_limit, rows_to_dataset, to_prompt_completion
from .gsm8k import load_gsm8k
from .readers import (
    default_data_path,
    find_data_file,
    read_json_file,
    read_json_lines_numbered,
    row_error,
    rows_of,
    search_roots,
)
from .tables import COLUMN_ARGS, convert_auto, load_table


PathLike = Union[str, Path]

SVAMP_SUBDIR = "distill_step_by_step/svamp"
CQA_SUBDIR = "distill_step_by_step/cqa"
SVAMP_GOLD_FILES = (SVAMP_SUBDIR + "/svamp_{split}.json", "svamp/svamp_{split}.json")
_CHOICE_LETTERS = "abcdefghij"


# ------------------------------------------------------------------------------------- distilling-step-by-step


def svamp_answer(label: str) -> str:
    """The gold answer of a SVAMP equation label (``"( 3.0 / 4.0 )"`` -> ``"0.75"``), see :func:`format_number`."""
    return format_number(eval_arithmetic(str(label)))


def read_svamp(
    split: str = "test",
    path: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    limit: Optional[int] = None,
) -> list[dict[str, str]]:
    """The first ``limit`` SVAMP gold rows as ``{"question", "answer", "equation"}`` (no teacher rationales needed).

    ``path``: a SVAMP folder holding ``svamp_{split}.json``; else the data folder's (``data_dir`` / ``$SLOWED_DATA_DIR``).
    """
    if path is not None:
        file = Path(path).expanduser() / f"svamp_{split}.json"
    else:
        file = find_data_file(search_roots(data_dir), *(f.format(split=split) for f in SVAMP_GOLD_FILES))
    rows = []
    for line, r in read_json_lines_numbered(file, limit):
        try:
            rows.append({"question": r["input"], "answer": svamp_answer(r["label"]), "equation": r["label"]})
        except (ValueError, KeyError) as err:
            raise row_error(file, line, err) from err
    return rows


def parse_teacher_output(output: str, marker: str) -> Optional[tuple[str, str]]:
    """``(rationale, teacher_label)`` from a raw PaLM completion, or ``None`` when it has no answer sentence.

    The completion is cut before the next few-shot ``Q:`` and split at the last ``marker``
    ("The answer is" for SVAMP, "So the answer is" for CQA), as upstream's ``data_utils.py`` does.
    """
    head = truncate_at_new_question(output).rstrip()
    rationale, sep, label = head.rpartition(marker)
    rationale = rationale.strip()
    if not sep or not rationale or not label.strip():
        return None
    return rationale, label.strip()


def _load_teacher_outputs(folder: Path, split: str) -> list[str]:
    """All ``llm/{split}_CoT_{i}.json`` chunks of a distilling-step-by-step folder, concatenated in ``i`` order."""
    files = sorted((folder / "llm").glob(f"{split}_CoT_*.json"), key=lambda f: int(f.stem.rsplit("_", 1)[-1]))
    if not files:
        raise FileNotFoundError(f"No teacher rationales {folder / 'llm'}/{split}_CoT_*.json")
    outputs: list[str] = []
    for file in files:
        chunk = read_json_file(file)
        if not isinstance(chunk, list):
            raise ValueError(f"{file}: expected a JSON array of teacher completions, got {type(chunk).__name__}.")
        outputs.extend(chunk)
    return outputs


def _load_distill(folder: Path, name: str, split: str) -> tuple[Path, list[tuple[int, dict]], list[str]]:
    """The gold file ``{name}_{split}.json``, its ``(line, row)`` pairs and the teacher outputs aligned with them."""
    file = folder / f"{name}_{split}.json"
    gold = read_json_lines_numbered(file)
    outputs = _load_teacher_outputs(folder, split)
    if len(outputs) != len(gold):
        raise ValueError(f"{folder}: {len(gold)} {split} rows but {len(outputs)} teacher rationales.")
    return file, gold, outputs


def _svamp_teacher_value(label: str) -> Optional[float]:
    """The value of the first ``( ... )`` of a line of the teacher's answer (from its first ``(`` to the line's last
    ``)``, as ``re.search(r"\\(.*\\)", label)`` found it, in linear time), or ``None``."""
    for line in label.split("\n"):
        first, last = line.find("("), line.rfind(")")
        if 0 <= first < last:
            try:
                return eval_arithmetic(line[first : last + 1])
            except ValueError:
                return None
    return None


def load_svamp(
    path: Optional[PathLike] = None,
    split: str = "train",
    limit: Optional[int] = None,
    conversational: bool = False,
    drop_incorrect: bool = False,
    keep_unparsed: bool = False,
) -> Dataset:
    """SVAMP with PaLM rationales (default folder ``<data_dir>/distill_step_by_step/svamp``).

    Rows ``{"input", "label"}``: the prompt is ``input``; the gold answer is ``label`` (an equation) evaluated. Teacher
    outputs without an answer sentence are dropped, or with ``keep_unparsed`` kept with an empty rationale (e.g. to
    score on every gold row); ``drop_incorrect`` also drops rows whose teacher equation disagrees with the gold
    answer. ``limit`` then keeps the first rows.
    """
    folder = Path(path) if path is not None else default_data_path(SVAMP_SUBDIR)
    file, gold, outputs = _load_distill(folder, "svamp", split)
    rows = []
    for (line, example), output in zip(gold, outputs, strict=True):
        parsed = parse_teacher_output(output, "The answer is")
        if parsed is None:
            if not keep_unparsed:
                continue
            parsed = ("", "")
        try:
            value = eval_arithmetic(_required(example, "label"))
            if drop_incorrect:
                teacher = _svamp_teacher_value(parsed[1])
                if teacher is None or abs(teacher - value) > 1e-6:
                    continue
            row = to_prompt_completion(example["input"], parsed[0], format_number(value), conversational)
        except (ValueError, KeyError) as err:
            raise row_error(file, line, err) from err
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows_to_dataset(rows, f"SVAMP {split} set")


def _required(example: dict, field: str) -> object:
    """``example[field]``; ``ValueError`` naming the field when it is absent, ``null`` or empty."""
    value = example.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"field {field!r} is {'missing' if field not in example else repr(value)}; it is required.")
    return value


def cqa_question(question: str, choices: list[str]) -> str:
    """A CommonsenseQA question with its choices, in the teacher's layout (``Answer Choices:`` then ``(a) ...``)."""
    lines = [question.strip(), "Answer Choices:"]
    lines += [f"({_CHOICE_LETTERS[i]}) {choice}" for i, choice in enumerate(choices)]
    return "\n".join(lines)


def load_cqa(
    path: Optional[PathLike] = None,
    split: str = "train",
    limit: Optional[int] = None,
    conversational: bool = False,
    drop_incorrect: bool = False,
    keep_unparsed: bool = False,
) -> Dataset:
    """CommonsenseQA with PaLM rationales (default folder ``<data_dir>/distill_step_by_step/cqa``).

    The prompt is the question plus its lettered choices; the gold answer is the ``answer`` choice text. Teacher
    outputs without "So the answer is" are dropped unless ``keep_unparsed`` (then the rationale is empty);
    ``drop_incorrect`` also drops those naming another choice.
    """
    folder = Path(path) if path is not None else default_data_path(CQA_SUBDIR)
    file, gold, outputs = _load_distill(folder, "cqa", split)
    rows = []
    for (line, example), output in zip(gold, outputs, strict=True):
        parsed = parse_teacher_output(output, "So the answer is")
        if parsed is None:
            if not keep_unparsed:
                continue
            parsed = ("", "")
        try:
            answer = canonical_answer(_required(example, "answer"))
            if drop_incorrect:
                teacher = re.sub(r"^\([a-j]\)\s*", "", parsed[1]).rstrip(".").strip()
                if teacher.lower() != answer.lower():
                    continue
            question = cqa_question(example["question"], list(example["choices"]))
            row = to_prompt_completion(question, parsed[0], answer, conversational)
        except (ValueError, KeyError, TypeError) as err:
            raise row_error(file, line, err) from err
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows_to_dataset(rows, f"CQA {split} set")


# ------------------------------------------------------------------------------------------------------ dispatcher

_FILE_LOADERS: dict[str, Callable[..., Dataset]] = {
    "gsm8k": load_gsm8k,
    "svamp": load_svamp,
    "cqa": load_cqa,
    "bbh": load_bbh,
}


def load_cot_dataset(
    source: str,
    path: Optional[PathLike] = None,
    split: str = "train",
    limit: Optional[int] = None,
    conversational: bool = False,
    *,
    subset: Optional[str] = None,
    **column_mapping: str,
) -> Dataset:
    """Load a CoT source as a prompt-completion dataset with an ``answer`` column.

    ``source`` is one of ``"gsm8k"``, ``"svamp"``, ``"cqa"``, ``"bbh"`` (files under ``path``, default the standard
    names under ``data_dir()``), ``"demo"`` (generated; ``limit`` is the row count), ``"columns"`` (``path`` is a
    local file or Hub id converted with the ``*_column`` arguments), or directly a Hub id / local
    json/jsonl/csv/parquet file whose layout is auto-detected (``subset`` picks a Hub config, e.g. ``"main"``).
    """
    unknown = sorted(set(column_mapping) - set(COLUMN_ARGS))
    if unknown:
        raise TypeError(f"Unknown argument(s) {unknown}; column-mapping arguments are {list(COLUMN_ARGS)}.")
    key = str(source).lower()
    if key in _FILE_LOADERS or key == "demo":
        if column_mapping:
            raise ValueError(f"Column mapping applies to 'columns', Hub and file sources, not to {key!r}.")
        if key == "demo":
            if path is not None:
                raise ValueError("The 'demo' source is generated by code and takes no path.")
            return demo_cot_dataset(split=split, n=limit, conversational=conversational)
        return _FILE_LOADERS[key](path, split=split, limit=limit, conversational=conversational)
    if key == "columns":
        if path is None:
            raise ValueError("source='columns' needs path= (a local json/jsonl/csv/parquet file or a Hub dataset id).")
        table = load_table(path, split=split, subset=subset)
    else:
        if path is not None:
            raise ValueError(f"path= is only used by the built-in sources, not by {source!r}.")
        table = load_table(source, split=split, subset=subset)
    if limit is not None:
        table = table.select(range(clip_limit(len(table), limit)))
    local = Path(str(path if key == "columns" else source)).expanduser()
    if not local.exists():
        return convert_auto(table, conversational=conversational, **column_mapping)
    with rows_of(local):
        return convert_auto(table, conversational=conversational, **column_mapping)
