"""lm-evaluation-harness task definitions over the local GSM8K, ARC-Challenge and BBH files (``$SLOWED_DATA_DIR``).

The Hub is not needed: each YAML builds its dataset with ``custom_dataset: !function utils.*_splits`` from the files
under ``$SLOWED_DATA_DIR`` (``gsm8k/{train,test}.jsonl``, ``arc/ARC-Challenge-{Train,Dev,Test}.jsonl``,
``bbh/bbh/<task>.json`` and ``bbh/cot-prompts/<task>.txt``), read by :mod:`slowed_peft.data.readers` as every other
loader reads them (a bad file is named, with its line and column). Point lm-eval at this folder with ``--include_path``;
``python -m slowed_peft.lm_eval_tasks`` prints it::

    lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --include_path "$(python -m slowed_peft.lm_eval_tasks)" \
        --tasks slowed_gsm8k,slowed_arc_challenge,slowed_bbh_cot_fewshot

Task names, each lm-eval 0.4.13's task of the same name without ``slowed_`` (prompt, few-shot, generation settings,
filters, metrics): ``slowed_gsm8k`` (5-shot, ``exact_match`` under ``strict-match`` / ``flexible-extract``),
``slowed_arc_challenge`` (log-likelihood of each choice, ``acc`` / ``acc_norm``), ``slowed_arc_challenge_chat``
(the answer letter generated after "The best answer is"), and the group ``slowed_bbh_cot_fewshot`` of the 27
``slowed_bbh_cot_fewshot_<task>`` (3-shot chain of thought, ``exact_match`` under ``get-answer``; folder ``bbh/``).
:mod:`slowed_peft.lm_eval_tasks.crosscheck` compares our own scorers with lm-eval's on the same generations.
"""

from __future__ import annotations

import os

from ..eval.tasks import BBH_TASKS


TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
TASK_NAMES = ("slowed_gsm8k", "slowed_arc_challenge", "slowed_arc_challenge_chat")  # the YAMLs of this folder
BBH_GROUP = "slowed_bbh_cot_fewshot"
BBH_TASK_NAMES = tuple(f"{BBH_GROUP}_{task}" for task in BBH_TASKS)  # the 27 BBH tasks of slowed_peft.eval.tasks

__all__ = ["BBH_GROUP", "BBH_TASK_NAMES", "TASKS_DIR", "TASK_NAMES"]
