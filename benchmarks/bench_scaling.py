"""How SLowED's step-time overhead scales with sequence length and width, and on the real SmolLM2-135M.

    python benchmarks/bench_scaling.py                    # seq 128..1024 at hidden 384; hidden 256..768 at seq 256
    python benchmarks/bench_scaling.py --smollm2          # + the embedded SmolLM2-135M-Instruct (batch 1 x 256)

For every setting the four arms (full fine-tuning, dense SLowED, PEFT LoRA r=16, low-rank SLowED r=16) alternate in
one process; the table reports the median-step ratios dense/full FT and low-rank/LoRA (goal: flat or shrinking).
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import torch
from transformers import LlamaForCausalLM


sys.path.insert(0, os.path.dirname(__file__))
from _common import alternate, machine, median, write_json  # noqa: E402
from bench_tuner import build_arm, make_step, model_config  # noqa: E402


ARMS = ("full_ft", "slowed_dense", "lora", "slowed_lowrank")


def ratios_for(base, batch: torch.Tensor, repeats: int, rank: int = 16) -> dict:
    models = {arm: build_arm(arm, base, rank) for arm in ARMS}
    times = alternate({k: make_step(m, batch) for k, m in models.items()}, repeats=repeats)
    med = {k: median(v) for k, v in times.items()}
    del models
    return {
        "median_s": med,
        "dense / full_ft": med["slowed_dense"] / med["full_ft"],
        "lowrank / lora": med["slowed_lowrank"] / med["lora"],
    }


def tiny(hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(model_config(SimpleNamespace(hidden=hidden, layers=layers)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 384, 512, 768])  # multiples of 128 (GQA heads)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smollm2", action="store_true", help="also benchmark the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--out", default="benchmarks/results/scaling.json")
    args = ap.parse_args()
    rows = []
    for seq in args.seqs:
        base = tiny(384, args.layers)
        r = ratios_for(base, torch.randint(0, 8192, (args.batch, seq)), args.repeats)
        rows.append({"setting": f"hidden 384, seq {seq}", **r})
    for width in args.widths:
        base = tiny(width, args.layers)
        r = ratios_for(base, torch.randint(0, 8192, (args.batch, 256)), args.repeats)
        rows.append({"setting": f"hidden {width}, seq 256", **r})
    if args.smollm2:
        from slowed_peft.base_models import load_model

        base, _ = load_model("smollm2-135m-instruct")
        r = ratios_for(base, torch.randint(0, base.config.vocab_size, (1, 256)), args.repeats)
        rows.append({"setting": "SmolLM2-135M, batch 1 x 256", **r})
    print(f"{'setting':<32}{'full FT step (s)':>17}{'dense/full':>12}{'LoRA step (s)':>15}{'lowrank/LoRA':>14}")
    for row in rows:
        med = row["median_s"]
        print(
            f"{row['setting']:<32}{med['full_ft']:>17.4f}{row['dense / full_ft']:>12.3f}{med['lora']:>15.4f}"
            f"{row['lowrank / lora']:>14.3f}"
        )
    write_json(args.out, {"args": vars(args), "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
