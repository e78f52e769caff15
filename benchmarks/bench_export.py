"""Error vs. size of the plain-LoRA export (``export_as_lora``) on a real model, in one run.

Trains a dense SLowED delta for a few Adam steps on GSM8K rationales, then exports it at several byte budgets (and
at the fixed rank 64 / the default) and prints a markdown table: size vs. the dense adapter, weight error, logit KL
and top-1 agreement with the SLowED model on held-out GSM8K text, and the KL of dropping the adapter for scale.

    SLOWED_DATA_DIR=... python benchmarks/bench_export.py [MODEL_DIR] [STEPS]

MODEL_DIR defaults to the cached SmolLM2-135M-Instruct (``slowed_peft.base_models.load_model``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import slowed_peft


def texts(split: str, n: int) -> list[str]:
    path = os.path.join(os.environ["SLOWED_DATA_DIR"], "gsm8k", f"{split}.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]


def main(model_dir: str | None = None, steps: int = 8) -> None:
    if model_dir is None:
        from slowed_peft.base_models import load_model

        model, tok = load_model("smollm2-135m-instruct")
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    cfg = slowed_peft.SLowEDConfig(target_modules="all-linear", r=None, slow_factor=1.0, max_drift=0.05)
    pm = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    train = texts("train", 4 * steps)
    pm.train()
    for i in range(steps):
        enc = tok(train[4 * i : 4 * i + 4], return_tensors="pt", padding=True, truncation=True, max_length=160)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = pm(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    pm.eval()
    print(f"trained {steps} steps, drift max {slowed_peft.weight_drift(pm).max:.4f}", file=sys.stderr)
    ids = tok(texts("test", 4), return_tensors="pt", padding=True, truncation=True, max_length=160)["input_ids"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("default (0.99 energy, capped)", {}), ("rank 64", {"rank": 64})]
        runs += [(f"budget {f:g} × dense", {"max_bytes": f}) for f in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)]
        dense = None
        for label, kw in runs:
            if "max_bytes" in kw:
                kw = {"max_bytes": int(kw["max_bytes"] * dense)}
            t = time.perf_counter()
            rep = slowed_peft.export_as_lora(pm, os.path.join(tmp, "x"), eval_input_ids=ids, **kw)
            dense = rep.adapter_nbytes
            rows.append((label, rep, time.perf_counter() - t))
    print(f"dense SLowED adapter: {dense / 2**20:.1f} MiB; KL(SLowED ‖ base) = {rows[0][1].base_kl:.4g} nats/token\n")
    print("| export | size (MiB) | × dense | mean rel. weight error | max | logit KL (nats/token) | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, rep, _ in rows:
        print(
            f"| {label} | {rep.nbytes / 2**20:.2f} | {rep.size_ratio:.3f} | {rep.mean_rel_error:.3f} | "
            f"{rep.max_rel_error:.3f} | {rep.logit_kl:.3g} | {rep.top1_agreement:.4f} |"
        )


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None, int(sys.argv[2]) if len(sys.argv) > 2 else 8
    )
