"""Cross-check of our answer scorers (:mod:`slowed_peft.eval`) against lm-evaluation-harness on the same outputs.

lm-eval runs the generative tasks of this folder (``slowed_gsm8k``, ``slowed_arc_challenge_chat``,
``slowed_bbh_cot_fewshot_*``) with ``log_samples``; each logged raw response is then scored again by
:func:`slowed_peft.eval.reasoning.score_example` (the scorer behind ``evaluate_reasoning``), and the two verdicts
are compared example by example. Both scorers see the very same generation, so any disagreement is a difference in
answer extraction / matching, never in decoding or prompting.

Reference filter per task (the lm-eval filter closest to what our scorer does): ``flexible-extract`` for GSM8K
(the last number; ``strict-match`` needs the few-shot ``#### N`` format and is reported as well), ``get-answer``
for BBH and ``remove_whitespace`` for ARC-Challenge. Log-likelihood tasks (``slowed_arc_challenge``) have no
counterpart in our scorers: they are lm-eval's alone.

Needs the ``eval`` extra (``lm_eval``); reproduced on SmolLM2-135M by ``benchmarks/bench_lm_eval_agreement.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..data.gsm8k import parse_gsm8k_answer
from ..eval.reasoning import score_example
from ..eval.tasks import ReasoningExample
from . import TASKS_DIR


__all__ = [
    "ARC_GEN_PREFIX",
    "Agreement",
    "BBH_PREFIX",
    "compare_samples",
    "cross_check",
    "gold_answer",
    "our_verdict",
    "reference_filter",
]

BBH_PREFIX = "slowed_bbh_cot_fewshot_"
ARC_GEN_PREFIX = "The best answer is"  # gen_prefix of slowed_arc_challenge_chat.yaml: part of the model's answer
_REFERENCE_FILTERS = {"slowed_gsm8k": "flexible-extract", "slowed_arc_challenge_chat": "remove_whitespace"}


def reference_filter(task: str) -> str:
    """The lm-eval filter of ``task`` that our scorer is compared with (``ValueError`` for a task we do not score)."""
    if task.startswith(BBH_PREFIX):
        return "get-answer"
    if task in _REFERENCE_FILTERS:
        return _REFERENCE_FILTERS[task]
    raise ValueError(
        f"No scorer of ours for lm-eval task {task!r}; expected slowed_gsm8k, slowed_arc_challenge_chat "
        f"or {BBH_PREFIX}<task>."
    )


def gold_answer(task: str, doc: Mapping[str, Any]) -> str:
    """The short gold answer of ``doc``: the number after ``####`` (GSM8K), the letter lm-eval's ARC-Challenge chat
    task expects (``1``-``4`` keys as ``A``-``D``), the BBH target."""
    reference_filter(task)
    if task == "slowed_gsm8k":
        return parse_gsm8k_answer(doc["answer"])[1]
    if task == "slowed_arc_challenge_chat":
        key = str(doc["answerKey"])
        return "ABCD"[int(key) - 1] if key in ("1", "2", "3", "4") else key
    return str(doc["target"])


def our_verdict(task: str, doc: Mapping[str, Any], response: str) -> bool:
    """Whether our scorer counts ``response`` (one lm-eval generation for ``doc``) as correct on ``task``.

    GSM8K: numeric match against the number after ``####``. ARC-Challenge: the choice label extracted from
    ``"The best answer is" + response`` (the generation prefix is part of the answer the model gives), the choices
    labelled ``A``, ``B``, ... as lm-eval shows them. BBH: :func:`~slowed_peft.eval.answers.bbh_match`.
    """
    gold = gold_answer(task, doc)
    if task == "slowed_gsm8k":
        return score_example(response, ReasoningExample("", gold, "numeric"))
    if task == "slowed_arc_challenge_chat":
        texts = tuple(doc["choices"]["text"])
        example = ReasoningExample("", gold, "choice", tuple("ABCDEFGH"[: len(texts)]), texts)
        return score_example(f"{ARC_GEN_PREFIX}{response}", example)
    return score_example(response, ReasoningExample("", gold, "bbh"))


@dataclass
class Agreement:
    """Per-task verdict counts of lm-eval (under ``filter``) and of our scorer on the same ``n`` responses."""

    task: str
    filter: str
    n: int = 0
    lm_eval_correct: int = 0
    ours_correct: int = 0
    agree: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disagree(self) -> int:
        """Examples on which the two verdicts differ."""
        return self.n - self.agree

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (``disagree`` included) and the disagreeing examples."""
        return {**asdict(self), "disagree": self.disagree}


def compare_samples(task: str, samples: Iterable[Mapping[str, Any]], filter_name: Optional[str] = None) -> Agreement:
    """Compare lm-eval's ``exact_match`` under ``filter_name`` (default :func:`reference_filter`) with our verdict on
    each logged sample of ``task`` (the ``samples[task]`` list of an ``lm_eval`` run with ``log_samples``)."""
    filter_name = filter_name or reference_filter(task)
    out = Agreement(task, filter_name)
    for sample in samples:
        if sample["filter"] != filter_name:
            continue
        response = sample["resps"][0][0]
        theirs = bool(sample["exact_match"])
        ours = our_verdict(task, sample["doc"], response)
        out.n += 1
        out.lm_eval_correct += theirs
        out.ours_correct += ours
        out.agree += theirs == ours
        if theirs != ours:
            out.disagreements.append(
                {
                    "doc_id": sample["doc_id"],
                    "gold": gold_answer(task, sample["doc"]),
                    "response": response,
                    "lm_eval_extracted": sample["filtered_resps"][0],
                    "lm_eval": theirs,
                    "ours": ours,
                }
            )
    return out


def cross_check(
    model: Any,
    tasks: Sequence[str],
    limit: Optional[int] = None,
    gen_kwargs: Optional[dict[str, Any]] = None,
    task_manager: Any = None,
    **simple_evaluate_kwargs: Any,
) -> tuple[dict[str, Any], dict[str, list[Agreement]]]:
    """Run lm-eval on ``tasks`` (first ``limit`` docs each) with ``model`` (an ``lm_eval`` LM instance or a model
    name) and compare per example: ``(lm-eval results, {task: [Agreement per filter]})``, the reference filter first.

    ``gen_kwargs`` override the tasks' generation settings (e.g. ``{"max_gen_toks": 128}``); they apply to the one
    generation both scorers read. ``task_manager``: an ``lm_eval.tasks.TaskManager`` that knows this folder (one is
    made over this folder alone if ``None``). Other keyword arguments go to ``lm_eval.simple_evaluate``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    for task in tasks:
        reference_filter(task)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=list(tasks),
        limit=limit,
        gen_kwargs=gen_kwargs,
        task_manager=task_manager or TaskManager(include_path=TASKS_DIR, include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        **simple_evaluate_kwargs,
    )
    agreements: dict[str, list[Agreement]] = {}
    for task in tasks:
        samples = results["samples"][task]
        filters = list(dict.fromkeys(s["filter"] for s in samples))
        ordered = [reference_filter(task)] + [f for f in filters if f != reference_filter(task)]
        agreements[task] = [compare_samples(task, samples, f) for f in ordered]
    return results, agreements
