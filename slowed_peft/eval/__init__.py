"""Evaluation for SLowED: safety (refusals, harmful-prompt KL drift) and reasoning (BBH, ARC, AGIEval, GSM8K, SVAMP).

Typical use::

    from slowed_peft.eval import EvalReport, evaluate_reasoning, evaluate_safety, load_advbench

    safety = evaluate_safety(model, tok, sets={"advbench": load_advbench(split="test")})
    reasoning = evaluate_reasoning(model, tok, tasks=["gsm8k", "arc", "bbh:boolean_expressions"], limit=100)
    EvalReport("my-model", "my-adapter", safety, reasoning).save("eval.json")
"""

from .answers import (
    bbh_answer_format,
    bbh_match,
    eval_equation,
    extract_bbh_answer,
    extract_choice,
    extract_number,
    final_answer_segment,
    normalize_answer,
    numbers_match,
    parse_number,
)
from .generation import format_prompts, generate_batched, generate_ids
from .probes import BENIGN_PROMPTS, HARMFUL_PROBES, load_advbench, split_advbench
from .reasoning import evaluate_reasoning, score_example, score_outputs
from .report import EvalReport, compare_table, format_value
from .safety import GCG_REFUSAL_PREFIXES, REFUSAL_MARKERS, evaluate_safety, harmful_kl, is_refusal, refusal_ratio
from .tasks import (
    AGIEVAL_TASKS,
    BBH_TASKS,
    ReasoningExample,
    agieval_examples,
    arc_examples,
    available_tasks,
    bbh_examples,
    gsm8k_examples,
    load_task,
    svamp_examples,
)


__all__ = [
    "AGIEVAL_TASKS",
    "BBH_TASKS",
    "BENIGN_PROMPTS",
    "GCG_REFUSAL_PREFIXES",
    "HARMFUL_PROBES",
    "REFUSAL_MARKERS",
    "EvalReport",
    "ReasoningExample",
    "available_tasks",
    "bbh_answer_format",
    "bbh_match",
    "compare_table",
    "eval_equation",
    "evaluate_reasoning",
    "evaluate_safety",
    "extract_bbh_answer",
    "extract_choice",
    "extract_number",
    "final_answer_segment",
    "format_prompts",
    "format_value",
    "generate_batched",
    "generate_ids",
    "harmful_kl",
    "is_refusal",
    "load_advbench",
    "agieval_examples",
    "arc_examples",
    "bbh_examples",
    "gsm8k_examples",
    "svamp_examples",
    "load_task",
    "normalize_answer",
    "numbers_match",
    "parse_number",
    "refusal_ratio",
    "score_example",
    "score_outputs",
    "split_advbench",
]
