"""Chain-of-thought data as TRL prompt-completion datasets (``prompt``, ``completion``, ``answer`` columns).

Every completion is the teacher rationale followed by the fixed final line ``So the answer is <answer>.``; see
:mod:`slowed_peft.data.formats`. Sources: GSM8K, SVAMP / CQA PaLM rationales (distilling-step-by-step), BBH CoT
prompts, a code-generated demo set, and any Hub id / local file through column mapping (:func:`load_cot_dataset`).
"""

from .bbh import load_bbh, parse_bbh_prompt
from .demo import demo_cot_dataset, generate_problems
from .formats import (
    ANSWER_PREFIX,
    PROMPT_TEMPLATE,
    answer_line,
    extract_answer,
    format_number,
    from_columns,
    from_question_rationale_answer,
    normalize_answer,
    to_conversational,
    to_prompt_completion,
)
from .hub import ACCEPTED_LAYOUTS, BUILTIN_SOURCES, convert_auto, load_table
from .sources import (
    cqa_question,
    eval_arithmetic,
    gsm8k_to_prompt_completion,
    load_cot_dataset,
    load_cqa,
    load_gsm8k,
    load_svamp,
    parse_gsm8k_answer,
    parse_teacher_output,
)

__all__ = [
    "ACCEPTED_LAYOUTS",
    "ANSWER_PREFIX",
    "BUILTIN_SOURCES",
    "PROMPT_TEMPLATE",
    "answer_line",
    "convert_auto",
    "cqa_question",
    "demo_cot_dataset",
    "eval_arithmetic",
    "extract_answer",
    "format_number",
    "from_columns",
    "from_question_rationale_answer",
    "generate_problems",
    "gsm8k_to_prompt_completion",
    "load_bbh",
    "load_cot_dataset",
    "load_cqa",
    "load_gsm8k",
    "load_svamp",
    "load_table",
    "normalize_answer",
    "parse_bbh_prompt",
    "parse_gsm8k_answer",
    "parse_teacher_output",
    "to_conversational",
    "to_prompt_completion",
]
