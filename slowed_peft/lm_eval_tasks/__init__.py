"""lm-evaluation-harness task definitions over the local GSM8K and ARC-Challenge files (``$SLOWED_DATA_DIR``).

The Hub is not needed: each YAML builds its dataset with ``custom_dataset: !function utils.load_*`` from the JSONL
files under ``$SLOWED_DATA_DIR`` (``gsm8k/{train,test}.jsonl``, ``arc/ARC-Challenge-{Train,Dev,Test}.jsonl``). Point
lm-eval at this folder with ``--include_path``; ``python -m slowed_peft.lm_eval_tasks`` prints it::

    lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --include_path "$(python -m slowed_peft.lm_eval_tasks)" \
        --tasks slowed_gsm8k,slowed_arc_challenge

Task names: ``slowed_gsm8k`` (lm-eval's ``gsm8k``: prompt, 5-shot, metrics and filters) and
``slowed_arc_challenge`` (lm-eval's ``arc_challenge``: log-likelihood of each choice, ``acc`` / ``acc_norm``).
"""

from __future__ import annotations

import os


TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
TASK_NAMES = ("slowed_gsm8k", "slowed_arc_challenge")

__all__ = ["TASKS_DIR", "TASK_NAMES"]
