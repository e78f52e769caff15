"""Reasoning task loaders (BBH, ARC-Challenge, AGIEval, GSM8K, SVAMP) and the ``ReasoningExample`` they return.

Files are read by the data readers (:mod:`slowed_peft.data.readers` and the GSM8K / SVAMP / BBH modules of
:mod:`slowed_peft.data`) from the data folder: the ``data_dir`` argument, else ``$SLOWED_DATA_DIR``. A missing file
raises ``FileNotFoundError`` naming the path. These loaders turn rows into scored prompts; the training loaders of the
same names in :mod:`slowed_peft.data` turn the same rows into prompt-completion datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..data.bbh import read_bbh_examples, read_bbh_prompt
from ..data.gsm8k import read_gsm8k
from ..data.readers import read_agieval, read_arc
from ..data.sources import read_svamp


__all__ = [
    "AGIEVAL_TASKS",
    "BBH_TASKS",
    "DEFAULT_TASKS",
    "KINDS",
    "ReasoningExample",
    "available_tasks",
    "expand_tasks",
    "agieval_examples",
    "arc_examples",
    "bbh_examples",
    "gsm8k_examples",
    "svamp_examples",
    "load_task",
    "mc_prompt",
    "numeric_prompt",
]

BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)  # fmt: skip
AGIEVAL_TASKS = (
    "aqua-rat", "gaokao-english", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en",
    "sat-en-without-passage", "sat-math",
)  # fmt: skip
KINDS = ("numeric", "choice", "bbh", "exact")
DEFAULT_TASKS = ("gsm8k", "svamp", "arc", "bbh:boolean_expressions")

MC_INSTRUCTION = (
    'Think step by step, then finish with a final line of the form "So the answer is (X)." '
    "where X is the label of the correct choice."
)
NUMERIC_INSTRUCTION = (
    'Think step by step, then finish with a final line of the form "So the answer is N." where N is the final number.'
)
BBH_ANSWER_PREFIX = "A: Let's think step by step."


@dataclass
class ReasoningExample:
    """One scored prompt. ``kind``: ``numeric`` | ``choice`` (needs ``labels``) | ``bbh`` | ``exact``."""

    prompt: str
    answer: str
    kind: str
    labels: Optional[tuple[str, ...]] = None
    choices: Optional[tuple[str, ...]] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown example kind {self.kind!r}; expected one of {KINDS}.")
        self.answer = str(self.answer)
        if self.kind == "choice" and not self.labels:
            self.labels = ("A", "B", "C", "D", "E")
        if self.labels is not None:
            self.labels = tuple(str(x) for x in self.labels)
        if self.kind == "choice" and self.answer not in self.labels:
            bare = self.answer.strip().strip("()")  # "(B)" -> "B"
            if bare not in self.labels:
                raise ValueError(f"Answer {self.answer!r} is not one of the labels {self.labels}.")
            self.answer = bare

    @classmethod
    def coerce(cls, item: Union[ReasoningExample, Mapping[str, Any]]) -> ReasoningExample:
        """Build from a mapping with ``prompt``, ``answer``, ``kind`` (optional ``labels``, ``choices``, ``meta``)."""
        if isinstance(item, cls):
            return item
        missing = [k for k in ("prompt", "answer", "kind") if k not in item]
        if missing:
            raise ValueError(f"Example {dict(item)!r} is missing key(s) {missing}.")
        return cls(**{k: item[k] for k in ("prompt", "answer", "kind", "labels", "choices", "meta") if k in item})


# ------------------------------------------------------------------------------------------------- loaders


def mc_prompt(question: str, labels: Sequence[str], texts: Sequence[str], passage: Optional[str] = None) -> str:
    """A zero-shot CoT multiple-choice prompt: optional passage, the question, ``(label) text`` options, instruction."""
    options = "\n".join(f"({label}) {text}" for label, text in zip(labels, texts, strict=True))
    head = f"{passage.strip()}\n\n" if passage and passage.strip() else ""
    return f"{head}Question: {question.strip()}\nAnswer choices:\n{options}\n\n{MC_INSTRUCTION}"


def numeric_prompt(question: str) -> str:
    """A zero-shot CoT prompt for a numeric answer (GSM8K, SVAMP); also the user turn of matching training rows."""
    return f"Question: {question.strip()}\n\n{NUMERIC_INSTRUCTION}"


def bbh_examples(
    task: str, data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """BBH ``task`` with its 3-shot CoT prompt prepended, as the benchmark defines it.

    Prompt: ``<cot-prompt>\\n\\nQ: <input>\\nA: Let's think step by step.`` (the canary header above the ``-----``
    line of the prompt file is dropped).
    """
    if task not in BBH_TASKS:
        raise ValueError(f"Unknown BBH task {task!r}; expected one of {', '.join(BBH_TASKS)}.")
    examples = read_bbh_examples(task, data_dir, limit)
    few_shot = read_bbh_prompt(task, data_dir)
    return [
        ReasoningExample(
            f"{few_shot}\n\nQ: {ex['input']}\n{BBH_ANSWER_PREFIX}", ex["target"], "bbh", meta={"task": task}
        )
        for ex in examples
    ]


def arc_examples(
    split: str = "test", data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """ARC-Challenge ``split`` (``train``/``dev``/``test``) as zero-shot CoT multiple choice (labels A-E or 1-4)."""
    out = []
    for row in read_arc(split, data_dir, limit):
        labels = tuple(str(c["label"]) for c in row["question"]["choices"])
        texts = tuple(c["text"] for c in row["question"]["choices"])
        prompt = mc_prompt(row["question"]["stem"], labels, texts)
        out.append(ReasoningExample(prompt, str(row["answerKey"]), "choice", labels, texts, {"id": row.get("id")}))
    return out


def agieval_examples(
    task: str, data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """AGIEval English multiple-choice ``task`` (options ``(A)...`` to ``(E)...``), zero-shot CoT."""
    if task not in AGIEVAL_TASKS:
        raise ValueError(f"Unknown AGIEval task {task!r}; expected one of {', '.join(AGIEVAL_TASKS)}.")
    out = []
    for row in read_agieval(task, data_dir, limit):
        labels, texts = [], []
        for i, option in enumerate(row["options"]):
            option = option.strip()
            label = chr(ord("A") + i)
            if option.startswith(f"({label})"):
                option = option[3:].strip()
            labels.append(label)
            texts.append(option)
        prompt = mc_prompt(row["question"], labels, texts, row.get("passage"))
        out.append(
            ReasoningExample(prompt, str(row["label"]).strip(), "choice", tuple(labels), tuple(texts), {"task": task})
        )
    return out


def gsm8k_examples(
    split: str = "test", data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """GSM8K ``split``; the gold number is what follows ``####`` in the reference solution."""
    rows = read_gsm8k(split, data_dir=data_dir, limit=limit)
    return [ReasoningExample(numeric_prompt(r["question"]), r["answer"], "numeric") for r in rows]


def svamp_examples(
    split: str = "test", data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """SVAMP ``split`` from distilling-step-by-step (JSON lines ``{input, label}``; the label is an equation)."""
    rows = read_svamp(split, data_dir=data_dir, limit=limit)
    return [
        ReasoningExample(numeric_prompt(r["question"]), r["answer"], "numeric", meta={"equation": r["equation"]})
        for r in rows
    ]


# Old private names still imported by slowed_peft/scripts (align.py, replicate.py); use the public ones instead.


def available_tasks() -> list[str]:
    """All accepted task names (``bbh`` and ``agieval`` expand to every sub-task)."""
    return (
        ["gsm8k", "svamp", "arc", "bbh", "agieval"]
        + [f"bbh:{t}" for t in BBH_TASKS]
        + [f"agieval:{t}" for t in AGIEVAL_TASKS]
    )


def expand_tasks(tasks: Sequence[str]) -> list[str]:
    """Validate task names and expand the ``bbh``/``agieval`` groups (``ValueError`` listing accepted names)."""
    out: list[str] = []
    for task in tasks:
        if task == "bbh":
            out += [f"bbh:{t}" for t in BBH_TASKS]
        elif task == "agieval":
            out += [f"agieval:{t}" for t in AGIEVAL_TASKS]
        elif task in available_tasks():
            out.append(task)
        else:
            raise ValueError(f"Unknown reasoning task {task!r}. Accepted: {', '.join(available_tasks())}.")
    return list(dict.fromkeys(out))


def load_task(
    task: str, data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[ReasoningExample]:
    """Examples of one task name (see :func:`available_tasks`; not the ``bbh``/``agieval`` group names)."""
    if task in ("bbh", "agieval") or task not in available_tasks():
        raise ValueError(f"Unknown reasoning task {task!r}. Accepted: {', '.join(available_tasks())}.")
    family, _, sub = task.partition(":")
    if family == "bbh":
        return bbh_examples(sub, data_dir, limit)
    if family == "agieval":
        return agieval_examples(sub, data_dir, limit)
    loader = {"gsm8k": gsm8k_examples, "svamp": svamp_examples, "arc": arc_examples}[family]
    return loader("test", data_dir, limit)
