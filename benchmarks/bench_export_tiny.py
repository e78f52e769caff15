"""Error against size of ``export_as_lora`` on a tiny random Llama (seconds on a CPU): the docs' table.

    python benchmarks/bench_export_tiny.py

A 4-layer, 128-wide Llama gets a dense SLowED delta from 20 AdamW steps (lr 1e-3, ρ = 0.05) on random tokens; each
export is scored on 4×64 held-out random tokens (logit KL to the SLowED model, top-1 agreement). The real-model
version is ``bench_export.py``.
"""

from __future__ import annotations

import tempfile

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

import slowed_peft


def main() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config = slowed_peft.SLowEDConfig(target_modules="all-linear", r=None, slow_factor=1.0, max_drift=0.05)
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg), config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randint(0, 96, (8, 32), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    ids = torch.randint(0, 96, (4, 64), generator=g)
    print(f"drift max {slowed_peft.weight_drift(model).max:.4f}")
    runs = [("default (0.99 energy, capped)", {}), ("rank 16", {"rank": 16})]
    runs += [(f"budget {f:g} x dense", {"max_bytes": f}) for f in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)]
    print("| export | size (KiB) | x dense | mean rel. weight error | max | logit KL | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    dense = None
    with tempfile.TemporaryDirectory() as out:
        for label, kw in runs:
            if "max_bytes" in kw:
                kw = {"max_bytes": int(kw["max_bytes"] * dense)}
            r = slowed_peft.export_as_lora(model, out, eval_input_ids=ids, **kw)
            dense = r.adapter_nbytes
            print(
                f"| {label} | {r.nbytes / 1024:.0f} | {r.size_ratio:.3f} | {r.mean_rel_error:.3f} | "
                f"{r.max_rel_error:.3f} | {r.logit_kl:.3g} | {r.top1_agreement:.4f} |"
            )
    print(f"KL(SLowED || base) {r.base_kl:.4f} nats/token; dense adapter {dense / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
