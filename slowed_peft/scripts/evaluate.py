"""Evaluate both sides of the trade-off: ``slowed-eval`` / ``python recipes/evaluate.py``.

Safety: refusal ratio and ``harmful_kl`` on harmful prompt sets (built-in probes, AdvBench held-out part) and the
false-refusal rate on benign prompts. Reasoning: the built-in demo test set and/or BBH, ARC, AGIEval, GSM8K, SVAMP.
Prints a one-screen table and writes ``{"model", "adapter", "safety", "reasoning"}`` JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from transformers.utils import logging

from ..data import demo_cot_dataset
from ..eval import (
    BENIGN_PROMPTS,
    HARMFUL_PROBES,
    EvalReport,
    evaluate_reasoning,
    harmful_kl,
    load_advbench,
    refusal_ratio,
)
from ..eval.answers import parse_number
from .configs import SLowEDParser


logger = logging.get_logger(__name__)

SAFETY_SETS = ("probes", "advbench", "benign")


@dataclass
class EvalArguments:
    """What to evaluate and on which sets."""

    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model (alias/id/path)."})
    adapter: Optional[str] = field(default=None, metadata={"help": "SLowED (or any PEFT) adapter folder or Hub id."})
    tasks: list[str] = field(
        default_factory=lambda: ["demo"],
        metadata={"help": "Reasoning tasks: demo, gsm8k, svamp, arc, bbh, bbh:<task>, agieval, agieval:<task>."},
    )
    safety_sets: list[str] = field(
        default_factory=lambda: ["probes", "benign"], metadata={"help": f"Any of {SAFETY_SETS}."}
    )
    limit: Optional[int] = field(default=None, metadata={"help": "First N examples per task / prompt set."})
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "Benchmark data folder (default $SLOWED_DATA_DIR)."}
    )
    advbench_path: Optional[str] = field(default=None, metadata={"help": "AdvBench CSV / folder / Hub id."})
    max_new_tokens: int = field(default=192, metadata={"help": "Generation budget for reasoning answers."})
    safety_max_new_tokens: int = field(default=64, metadata={"help": "Generation budget for safety responses."})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size (left-padded)."})
    output: Optional[str] = field(default=None, metadata={"help": "Where to write the JSON report."})


def demo_examples(limit: Optional[int] = None, seed: int = 0) -> list[dict]:
    """The built-in demo test split as scored examples (numeric answers compared numerically, others exactly)."""
    rows = demo_cot_dataset(split="test", n=limit, seed=seed, conversational=True)
    examples = []
    for row in rows:
        question = row["prompt"][0]["content"]
        kind = "numeric" if parse_number(row["answer"]) is not None else "exact"
        examples.append({"prompt": question, "answer": row["answer"], "kind": kind})
    return examples


def safety_prompt_sets(names: Sequence[str], limit: Optional[int], advbench_path: Optional[str]) -> dict:
    sets = {}
    for name in names:
        if name == "probes":
            sets[name] = list(HARMFUL_PROBES)[:limit]
        elif name == "benign":
            sets[name] = list(BENIGN_PROMPTS)[:limit]
        elif name == "advbench":
            sets[name] = load_advbench(advbench_path, limit=limit, split="test")
        else:
            raise ValueError(f"Unknown safety set {name!r}; accepted: {SAFETY_SETS}.")
    return sets


def evaluate_safety_sets(
    model,
    tokenizer,
    sets: dict[str, list[str]],
    args: EvalArguments,
    initial_responses: Optional[dict[str, list[str]]] = None,
    responses_out: Optional[dict[str, list[str]]] = None,
) -> dict[str, dict]:
    """Refusal ratio on every set; ``harmful_kl`` on the harmful ones when the model carries an adapter.

    ``initial_responses`` (the base model's responses, e.g. from an earlier evaluation of it) skip regenerating them
    for the KL; ``benign`` only measures false refusals.
    """
    from peft import PeftModel

    common = dict(max_new_tokens=args.safety_max_new_tokens, batch_size=args.batch_size)
    results = {}
    for name, prompts in sets.items():
        rr = refusal_ratio(model, tokenizer, prompts, **common)
        if responses_out is not None:
            responses_out[name] = rr["responses"]
        kl = None
        if name != "benign" and isinstance(model, PeftModel):
            kl = harmful_kl(model, tokenizer, prompts, responses=(initial_responses or {}).get(name), **common)
        results[name] = {"refusal_ratio": rr["refusal_ratio"], "harmful_kl": kl, "n": rr["n"]}
    return results


def evaluate_model(
    model,
    tokenizer,
    args: EvalArguments,
    name: Optional[str] = None,
    initial_responses: Optional[dict[str, list[str]]] = None,
    responses_out: Optional[dict[str, list[str]]] = None,
) -> EvalReport:
    """Run the safety and reasoning evaluations of ``args`` on a loaded model (a PeftModel gets ``harmful_kl``)."""
    sets = safety_prompt_sets(args.safety_sets, args.limit, args.advbench_path)
    safety = evaluate_safety_sets(model, tokenizer, sets, args, initial_responses, responses_out)
    file_tasks = [t for t in args.tasks if t != "demo"]
    examples = {"demo": demo_examples(args.limit)} if "demo" in args.tasks else None
    reasoning = evaluate_reasoning(
        model,
        tokenizer,
        tasks=file_tasks,
        limit=args.limit,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        examples=examples,
    )
    return EvalReport(model=name or args.model_name_or_path, adapter=args.adapter, safety=safety, reasoning=reasoning)


def load_for_eval(args: EvalArguments):
    """Base model + tokenizer, with the adapter attached (``import slowed_peft`` already registered SLOWED)."""
    from peft import PeftModel

    from ..base_models import load_model

    model, tokenizer = load_model(args.model_name_or_path)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    return model.eval(), tokenizer


def main(args: EvalArguments) -> EvalReport:
    """Evaluate, print the table and (with ``output``) write the JSON report; returns the report."""
    model, tokenizer = load_for_eval(args)
    report = evaluate_model(model, tokenizer, args)
    print(report.table())
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        report.save(args.output)
        print(f"report written to {args.output}")
    return report


def run(argv: Optional[Sequence[str]] = None) -> EvalReport:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`main`."""
    (args,) = SLowEDParser((EvalArguments,)).parse_args_and_config(args=argv)
    return main(args)


def cli() -> None:
    """``slowed-eval``: :func:`run`, exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
