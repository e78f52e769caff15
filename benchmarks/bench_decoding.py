"""Evaluation decoding: ``model.generate`` vs pruned greedy decoding (finished rows leave the batch), without and
with the batch's shared token prefix prefilled once.

    python benchmarks/bench_decoding.py                           # embedded SmolLM2-135M-Instruct
    python benchmarks/bench_decoding.py --model PATH              # e.g. the aligned student of recipes/replicate.py

All arms decode the same prompts in one batch, alternating in one process (medians of ``--repeats`` rounds); the
table reports time ratios and whether every continuation is token-for-token identical to ``generate``'s (to the
pruned arm's with ``--no_generate``). Sets: held-out AdvBench behaviours (32 new tokens, as the refusal checks), SVAMP
test problems (128 new tokens, as the checkpoint accuracy) and BBH boolean_expressions with its 3-shot prompt (128
new tokens, as the replication's final check). Needs the data folder in ``$SLOWED_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(__file__))
from _common import alternate, machine, median, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per set (one batch)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no_generate", action="store_true", help="skip the (slow) model.generate baseline")
    ap.add_argument("--out", default="benchmarks/results/decoding.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from slowed_peft.base_models import load_model
    from slowed_peft.eval.generation import generate_ids
    from slowed_peft.eval.tasks import load_svamp, load_task
    from slowed_peft.scripts.align import AlignArguments, held_out_sets

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model.eval()
    sets = {
        "advbench held-out, 32 tokens": (held_out_sets(AlignArguments())["advbench"][: args.prompts], 32),
        "svamp test, 128 tokens": ([e.prompt for e in load_svamp("test", limit=args.prompts)], 128),
        "bbh boolean_expressions, 128 tokens": (
            [e.prompt for e in load_task("bbh:boolean_expressions", None, min(args.prompts, 16))],
            128,
        ),
    }
    rows = []
    for name, (prompts, max_new) in sets.items():
        outputs: dict[str, list] = {}

        def run(prune: bool, share: bool, key: str, prompts=prompts, max_new=max_new, outputs=outputs):
            def step() -> None:
                outputs[key] = generate_ids(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens=max_new,
                    batch_size=len(prompts),
                    show_progress=False,
                    prune_finished=prune,
                    share_prefix=share,
                )

            return step

        arms = {"pruned": run(True, False, "pruned"), "pruned+prefix": run(True, True, "pruned+prefix")}
        if not args.no_generate:
            arms = {"generate": run(False, False, "generate"), **arms}
        times = alternate(arms, repeats=args.repeats, warmup=0)
        med = {k: median(v) for k, v in times.items()}
        reference = "pruned" if args.no_generate else "generate"
        lengths = sorted(len(c) for _, c in outputs["pruned"])
        r = {
            "set": name,
            "prompts": len(prompts),
            "median_s": med,
            "reference": reference,
            "identical": {k: outputs[k] == outputs[reference] for k in arms if k != reference},
            "prefix / pruned": med["pruned+prefix"] / med["pruned"],
            "continuation_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
        }
        if not args.no_generate:
            r["pruned / generate"] = med["pruned"] / med["generate"]
            r["prefix / generate"] = med["pruned+prefix"] / med["generate"]
        rows.append(r)
        shown = "  ".join(f"{k} {v:6.1f} s" for k, v in med.items())
        print(
            f"{name:<36} {shown}  prefix/pruned {r['prefix / pruned']:.2f}  identical {r['identical']}  "
            f"lengths {r['continuation_tokens']}",
            flush=True,
        )
    write_json(args.out, {"machine": machine(), "model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
