"""File loaders for GSM8K, distilling-step-by-step (SVAMP / CQA PaLM rationales) and BBH few-shot CoT prompts.

Standard layout under :func:`slowed_peft.utils.paths.data_dir` (``$SLOWED_DATA_DIR`` or ``../shared/data``)::

    gsm8k/{train,test}.jsonl                                 {"question", "answer": "...<<a=b>>...\\n#### 42"}
    distill_step_by_step/svamp/svamp_{split}.json            JSON lines {"input", "label": "( 84.0 / 2.0 )"}
    distill_step_by_step/svamp/llm/{split}_CoT_{i}.json      JSON arrays of raw PaLM completions, 1:1 with rows
    distill_step_by_step/cqa/cqa_{split}.json                JSON lines {"id", "question", "choices", "answer", ...}
    distill_step_by_step/cqa/llm/{split}_CoT_{i}.json        same as SVAMP
    bbh/cot-prompts/<task>.txt                               3-shot "Q: ... A: Let's think step by step. ..." prompts

All loaders return prompt-completion datasets in the format of :mod:`slowed_peft.data.formats`.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from datasets import Dataset, load_dataset

from .bbh import load_bbh
from .formats import (
    check_columns,
    clip_limit,
    default_data_path,
    format_number,
    normalize_answer,
    rows_to_dataset,
    to_prompt_completion,
)

PathLike = Union[str, Path]

GSM8K_SUBDIR = "gsm8k"
SVAMP_SUBDIR = "distill_step_by_step/svamp"
CQA_SUBDIR = "distill_step_by_step/cqa"

_CALCULATOR_RE = re.compile(r"<<[^>]*>>")
_NEXT_QUESTION_RE = re.compile(r"\n\s*Q:")  # PaLM completions run on into further few-shot "Q:/A:" pairs
_CHOICE_LETTERS = "abcdefghij"




def _load_json_lines(path: Path, limit: Optional[int] = None) -> Dataset:
    """A JSON-lines file as a ``Dataset`` (``FileNotFoundError`` naming the file when it is absent)."""
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.select(range(clip_limit(len(ds), limit))) if limit is not None else ds


# ----------------------------------------------------------------------------------------------------------- GSM8K


def parse_gsm8k_answer(solution: str) -> Tuple[str, str]:
    """``(rationale, answer)`` from a GSM8K worked solution: ``<<...>>`` annotations removed, answer after ``####``.

    Thousands separators are dropped from the answer (``1,080`` -> ``1080``).
    """
    body, sep, final = solution.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {solution[-80:]!r}")
    rationale = _CALCULATOR_RE.sub("", body).strip()
    answer = final.strip().replace(",", "")
    return rationale, normalize_answer(answer)


def load_gsm8k(
    path: Optional[PathLike] = None, split: str = "train", limit: Optional[int] = None, conversational: bool = False
) -> Dataset:
    """GSM8K from a ``.jsonl`` file, or a folder holding ``{split}.jsonl`` (default: ``<data_dir>/gsm8k``)."""
    path = Path(path) if path is not None else default_data_path(GSM8K_SUBDIR)
    file = path / f"{split}.jsonl" if path.is_dir() else path
    ds = _load_json_lines(file, limit)
    return gsm8k_to_prompt_completion(ds, conversational=conversational)


def gsm8k_to_prompt_completion(
    ds: Dataset, question_column: str = "question", answer_column: str = "answer", conversational: bool = False
) -> Dataset:
    """Convert GSM8K-layout rows (a question and a ``#### answer`` worked solution), e.g. a Hub copy of GSM8K."""
    check_columns(ds, [question_column, answer_column])

    def convert(example: Dict[str, Any]) -> Dict[str, Any]:
        rationale, answer = parse_gsm8k_answer(example[answer_column])
        return to_prompt_completion(example[question_column], rationale, answer, conversational)

    return ds.map(convert, remove_columns=ds.column_names)


# ------------------------------------------------------------------------------------- distilling-step-by-step

_OPS: Dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def eval_arithmetic(expression: str) -> float:
    """Safely evaluate ``+ - * /`` arithmetic with parentheses (e.g. SVAMP's ``( ( 17.0 + 15.0 ) + 2.0 )``)."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"Not plain arithmetic: {expression!r}")

    try:
        return ev(ast.parse(expression.strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError) as err:
        raise ValueError(f"Cannot evaluate {expression!r}: {err}") from err


def parse_teacher_output(output: str, marker: str) -> Optional[Tuple[str, str]]:
    """``(rationale, teacher_label)`` from a raw PaLM completion, or ``None`` when it has no answer sentence.

    The completion is cut before the next few-shot ``Q:`` and split at the last ``marker``
    ("The answer is" for SVAMP, "So the answer is" for CQA), as upstream's ``data_utils.py`` does.
    """
    head = _NEXT_QUESTION_RE.split(output, maxsplit=1)[0].rstrip()
    rationale, sep, label = head.rpartition(marker)
    rationale = rationale.strip()
    if not sep or not rationale or not label.strip():
        return None
    return rationale, label.strip()


def _load_teacher_outputs(folder: Path, split: str) -> List[str]:
    """All ``llm/{split}_CoT_{i}.json`` chunks of a distilling-step-by-step folder, concatenated in ``i`` order."""
    files = sorted((folder / "llm").glob(f"{split}_CoT_*.json"), key=lambda f: int(f.stem.rsplit("_", 1)[-1]))
    if not files:
        raise FileNotFoundError(f"No teacher rationales {folder / 'llm'}/{split}_CoT_*.json")
    outputs: List[str] = []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            outputs.extend(json.load(handle))
    return outputs


def _load_distill(folder: Path, name: str, split: str) -> Tuple[Dataset, List[str]]:
    gold = _load_json_lines(folder / f"{name}_{split}.json")
    outputs = _load_teacher_outputs(folder, split)
    if len(outputs) != len(gold):
        raise ValueError(f"{folder}: {len(gold)} {split} rows but {len(outputs)} teacher rationales.")
    return gold, outputs


def _svamp_teacher_value(label: str) -> Optional[float]:
    match = re.search(r"\(.*\)", label)
    try:
        return eval_arithmetic(match.group(0)) if match else None
    except ValueError:
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
    gold, outputs = _load_distill(folder, "svamp", split)
    rows = []
    for example, output in zip(gold, outputs, strict=True):
        parsed = parse_teacher_output(output, "The answer is")
        if parsed is None:
            if not keep_unparsed:
                continue
            parsed = ("", "")
        value = eval_arithmetic(example["label"])
        if drop_incorrect:
            teacher = _svamp_teacher_value(parsed[1])
            if teacher is None or abs(teacher - value) > 1e-6:
                continue
        rows.append(to_prompt_completion(example["input"], parsed[0], format_number(value), conversational))
        if limit is not None and len(rows) >= limit:
            break
    return rows_to_dataset(rows, f"SVAMP {split} set")


def cqa_question(question: str, choices: List[str]) -> str:
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
    gold, outputs = _load_distill(folder, "cqa", split)
    rows = []
    for example, output in zip(gold, outputs, strict=True):
        parsed = parse_teacher_output(output, "So the answer is")
        if parsed is None:
            if not keep_unparsed:
                continue
            parsed = ("", "")
        if drop_incorrect:
            teacher = re.sub(r"^\([a-j]\)\s*", "", parsed[1]).rstrip(".").strip()
            if teacher.lower() != str(example["answer"]).strip().lower():
                continue
        question = cqa_question(example["question"], list(example["choices"]))
        rows.append(to_prompt_completion(question, parsed[0], example["answer"], conversational))
        if limit is not None and len(rows) >= limit:
            break
    return rows_to_dataset(rows, f"CQA {split} set")


# ------------------------------------------------------------------------------------------------------ dispatcher

_FILE_LOADERS: Dict[str, Callable[..., Dataset]] = {
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
    from .demo import demo_cot_dataset
    from .hub import COLUMN_ARGS, convert_auto, load_table

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
    return convert_auto(table, conversational=conversational, **column_mapping)
