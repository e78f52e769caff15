"""Chain-of-thought data as TRL prompt-completion datasets (``prompt``, ``completion``, ``answer`` columns).

Every completion is the teacher rationale followed by the fixed final line ``So the answer is <answer>.``; see
:mod:`slowed_peft.data.formats` and :mod:`slowed_peft.data.answers` (the one answers module, shared with
``slowed_peft.eval``). Sources: GSM8K, SVAMP / CQA PaLM rationales (distilling-step-by-step), BBH CoT prompts, a
code-generated demo set, and any Hub id / local file through column mapping (:func:`load_cot_dataset`). Files come
from explicit paths or the folder ``$SLOWED_DATA_DIR`` names (:mod:`slowed_peft.data.readers`).
"""

from .answers import (
    ANSWER_PREFIX,
    answer_line,
    canonical_answer,
    eval_arithmetic,
    extract_answer,
    format_number,
)
from .bbh import load_bbh, parse_bbh_prompt
from .demo import demo_cot_dataset, generate_problems
from .formats import (
    PROMPT_TEMPLATE,
    from_columns,
    from_question_rationale_answer,
    to_conversational,
    to_prompt_completion,
)
from .gsm8k import gsm8k_to_prompt_completion, load_gsm8k, parse_gsm8k_answer
from .sources import cqa_question, load_cot_dataset, load_cqa, load_svamp, parse_teacher_output
from .tables import ACCEPTED_LAYOUTS, BUILTIN_SOURCES, convert_auto, load_table


__all__ = [
    "ACCEPTED_LAYOUTS",
    "ANSWER_PREFIX",
    "BUILTIN_SOURCES",
    "PROMPT_TEMPLATE",
    "answer_line",
    "canonical_answer",
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
    "parse_bbh_prompt",
    "parse_gsm8k_answer",
    "parse_teacher_output",
    "to_conversational",
    "to_prompt_completion",
]
