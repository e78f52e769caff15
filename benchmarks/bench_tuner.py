"""Step time of SLowED against its baselines, alternating in one process (this machine is noisy).

    python benchmarks/bench_tuner.py                       # Llama-like, hidden 384, 4 layers, batch 4x256
    python benchmarks/bench_tuner.py --hidden 256 --seq 128 --repeats 9 --out benchmarks/results/tuner.json

Comparisons (medians over alternating steps after warm-up):
  dense SLowED (r=None), with and without max_drift  vs  plain full fine-tuning of the same weights
  low-rank SLowED (r=16)                              vs  PEFT LoRA r=16 on the same targets
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from _common import alternate, machine, median, write_json  # noqa: E402

import slowed_peft  # noqa: E402,F401
from slowed_peft import SLowEDConfig  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_step(model, batch, lr=1e-4):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def full_finetune(base):
    model = copy.deepcopy(base)
    for n, p in model.named_parameters():
        p.requires_grad_(any(f".{t}." in n for t in TARGETS))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/tuner.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(1, args.hidden // 128))
    base = LlamaForCausalLM(cfg)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))

    dense_cfg = dict(target_modules=TARGETS, r=None, slow_factor=0.1)
    models = {
        "full_ft": full_finetune(base),
        "slowed_dense": get_peft_model(copy.deepcopy(base), SLowEDConfig(**dense_cfg, max_drift=None)),
        "slowed_dense_drift": get_peft_model(copy.deepcopy(base), SLowEDConfig(**dense_cfg, max_drift=0.05)),
        "lora": get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=TARGETS, r=args.rank, lora_alpha=16)),
        "slowed_lowrank": get_peft_model(
            copy.deepcopy(base), SLowEDConfig(target_modules=TARGETS, r=args.rank, slow_factor=0.1, max_drift=0.05)
        ),
    }
    steps = {k: make_step(m, batch) for k, m in models.items()}
    times = alternate(steps, repeats=args.repeats)
    med = {k: median(v) for k, v in times.items()}
    ratios = {
        "slowed_dense / full_ft": med["slowed_dense"] / med["full_ft"],
        "slowed_dense(max_drift) / full_ft": med["slowed_dense_drift"] / med["full_ft"],
        "slowed_lowrank / lora": med["slowed_lowrank"] / med["lora"],
    }
    print(f"{'arm':<22}{'median step (s)':>16}")
    for k, v in med.items():
        print(f"{k:<22}{v:>16.4f}")
    print()
    for k, v in ratios.items():
        print(f"{k:<36}{v:>8.3f}")
    write_json(args.out, {"args": vars(args), "machine": machine(), "median_s": med, "ratios": ratios,
                          "times_s": times})


if __name__ == "__main__":
    main()
