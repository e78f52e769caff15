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
from _common import RssSampler, alternate, machine, median, write_json  # noqa: E402

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


def build_arm(arm: str, base, rank: int):
    dense_cfg = dict(target_modules=TARGETS, r=None, slow_factor=0.1)
    if arm == "full_ft":
        return full_finetune(base)
    if arm == "slowed_dense":
        return get_peft_model(copy.deepcopy(base), SLowEDConfig(**dense_cfg, max_drift=None))
    if arm == "slowed_dense_drift":
        return get_peft_model(copy.deepcopy(base), SLowEDConfig(**dense_cfg, max_drift=0.05))
    if arm == "lora":
        return get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=TARGETS, r=rank, lora_alpha=16))
    return get_peft_model(
        copy.deepcopy(base), SLowEDConfig(target_modules=TARGETS, r=rank, slow_factor=0.1, max_drift=0.05)
    )


def memory_child(args) -> None:
    """Peak RSS above the post-import baseline while building one arm and training it 3 steps (fresh process)."""
    import json

    with RssSampler() as mem:
        torch.manual_seed(0)
        base = LlamaForCausalLM(model_config(args))
        model = build_arm(args.memory_child, base, args.rank)
        del base
        step = make_step(model, torch.randint(0, 8192, (args.batch, args.seq)))
        for _ in range(3):
            step()
    print(json.dumps({"arm": args.memory_child, "peak_mib": mem.peak}))


def bench_memory(args) -> dict:
    import json
    import subprocess

    out = {}
    for arm in ("full_ft", "slowed_dense", "slowed_dense_drift", "lora", "slowed_lowrank"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            arm,
            "--hidden",
            str(args.hidden),
            "--layers",
            str(args.layers),
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--rank",
            str(args.rank),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[arm] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    out["slowed_dense / full_ft"] = out["slowed_dense"] / out["full_ft"]
    out["slowed_dense(max_drift) / full_ft"] = out["slowed_dense_drift"] / out["full_ft"]
    out["slowed_lowrank / lora"] = out["slowed_lowrank"] / out["lora"]
    return out


def model_config(args) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=8192,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/tuner.json")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    torch.manual_seed(0)
    cfg = model_config(args)
    base = LlamaForCausalLM(cfg)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))

    arms = ("full_ft", "slowed_dense", "slowed_dense_drift", "lora", "slowed_lowrank")
    models = {arm: build_arm(arm, base, args.rank) for arm in arms}
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
    memory = bench_memory(args)
    print("\npeak RSS (MiB, model + optimizer state + activations, 3 steps):")
    for k, v in memory.items():
        print(f"  {k:<36}{v:10.2f}")
    write_json(
        args.out,
        {
            "args": vars(args),
            "machine": machine(),
            "median_s": med,
            "ratios": ratios,
            "times_s": times,
            "peak_rss_mib": memory,
        },
    )


if __name__ == "__main__":
    main()
