"""Our answer scorers vs lm-evaluation-harness on the same generations of a real model (issue 18 point 2).

    python benchmarks/bench_lm_eval_agreement.py                          # embedded SmolLM2-135M-Instruct, 16 each
    python benchmarks/bench_lm_eval_agreement.py --model PATH --limit 64  # e.g. an aligned student

lm-eval (``lm_eval.simple_evaluate``, ``HFLM`` over the loaded model, greedy) runs ``slowed_gsm8k`` (5-shot),
``slowed_arc_challenge_chat`` (0-shot, letter after "The best answer is") and BBH 3-shot CoT (boolean_expressions,
date_understanding and snarks by default, any ``slowed_bbh_cot_fewshot_<task>`` with ``--tasks``) on the first
``--limit`` test documents with ``log_samples``; :func:`slowed_peft.lm_eval_tasks.crosscheck.cross_check` then scores
every logged raw response with our scorer and counts, per task and lm-eval filter, the examples on which the two
verdicts agree. The generation is the one both scorers read, so ``--max_gen_toks`` (a CPU budget) changes what is
compared, not whether it is compared fairly. Needs the ``eval`` extra and ``$SLOWED_DATA_DIR``. Writes counts only (no
data text, no generations) to ``--out``; disagreeing responses are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402


DEFAULT_TASKS = (
    "slowed_gsm8k",
    "slowed_arc_challenge_chat",
    "slowed_bbh_cot_fewshot_boolean_expressions",
    "slowed_bbh_cot_fewshot_date_understanding",
    "slowed_bbh_cot_fewshot_snarks",
)  # any task of slowed_peft/lm_eval_tasks that generates works: --tasks slowed_bbh_cot_fewshot_date_understanding,...


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--limit", type=int, default=16, help="first N test documents per task")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_gen_toks", type=int, default=256, help="cap on every task's generation length")
    ap.add_argument("--apply_chat_template", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/lm_eval_agreement.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    from slowed_peft.base_models import load_model
    from slowed_peft.lm_eval_tasks.crosscheck import cross_check

    model, tokenizer = load_model(args.model)
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = HFLM(pretrained=model.to(device), tokenizer=tokenizer, batch_size=args.batch_size, device=device)
    tasks = [t for t in args.tasks.split(",") if t]
    payload = {
        "machine": machine(),
        "model": args.model,
        "settings": {
            "limit": args.limit,
            "max_gen_toks": args.max_gen_toks,
            "batch_size": args.batch_size,
            "apply_chat_template": args.apply_chat_template,
            "decoding": "greedy (the tasks' do_sample: false)",
        },
        "seconds": {},
        "rows": [],
    }
    print(f"{'task':<46} {'filter':<18} {'n':>3} {'lm-eval':>7} {'ours':>5} {'agree':>5}")
    for task in tasks:  # one task at a time, the JSON rewritten after each: a run cut short keeps what it finished
        t0 = time.perf_counter()
        _, agreements = cross_check(
            lm,
            [task],
            limit=args.limit,
            gen_kwargs={"max_gen_toks": args.max_gen_toks},
            apply_chat_template=args.apply_chat_template,
        )
        payload["seconds"][task] = time.perf_counter() - t0
        for i, agreement in enumerate(agreements[task]):
            a = agreement.to_dict()
            disagreements = a.pop("disagreements")
            payload["rows"].append({**a, "reference": i == 0, "disagree_doc_ids": [d["doc_id"] for d in disagreements]})
            mark = "" if i == 0 else "  (not the reference filter)"
            print(
                f"{task:<46} {a['filter']:<18} {a['n']:>3} {a['lm_eval_correct']:>7} {a['ours_correct']:>5} "
                f"{a['agree']:>5}{mark}",
                flush=True,
            )
            if i == 0:
                for d in disagreements:
                    print(f"    doc {d['doc_id']}: gold {d['gold']!r}, lm-eval read {d['lm_eval_extracted']!r} "
                          f"-> {d['lm_eval']}, ours -> {d['ours']}; response {d['response'][-160:]!r}")  # fmt: skip
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
