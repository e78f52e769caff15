"""What the safety anchor costs: training step time and fitting time, as ratios against baselines in one process.

    python benchmarks/bench_anchor.py                          # SmolLM2-135M shape (hidden 576, 30 layers), batch 4x256
    python benchmarks/bench_anchor.py --layers 4 --repeats 9 --prompts 312 --out benchmarks/results/anchor.json

1. step: anchored dense SLowED (k = 64 random orthonormal directions per layer, trust region on) vs the same adapter
   without the anchor — medians over alternating AdamW steps after warm-up;
2. fitting: ``fit_anchor`` on ``--prompts`` chat-formatted prompts (``anchor_dataloader``, batches of 16) vs one plain
   forward pass of the model over the same batches (alternating), so the ratio says how many forward passes fitting
   costs.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from peft import get_peft_model
from transformers import LlamaForCausalLM


sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _common import alternate, machine, median, smollm2_config, write_json  # noqa: E402

from slowed_peft import SLowEDConfig, anchor_dataloader, fit_anchor  # noqa: E402
from slowed_peft.tuner.anchor import install_anchor  # noqa: E402
from slowed_peft.tuner.layer import SLowEDLayer  # noqa: E402

from testing_utils import build_char_tokenizer  # noqa: E402


def smollm_like(layers: int, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(smollm2_config(layers, vocab))


def adapter(base, anchored: bool, rank: int):
    config = dict(target_modules="all-linear", slow_factor=0.1, max_drift=0.05)
    model = get_peft_model(copy.deepcopy(base), SLowEDConfig(**config, anchor_rank=rank if anchored else None))
    if anchored:  # random bases: the step cost does not depend on which directions are protected
        g = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, SLowEDLayer):
                q, _ = torch.linalg.qr(torch.randn(module.in_features, rank, generator=g))
                install_anchor(module, "default", q)
    return model


def make_step(model, batch):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=312)
    parser.add_argument("--fit_repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/anchor.json")
    args = parser.parse_args()

    base = smollm_like(args.layers, args.vocab)
    batch = torch.randint(3, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    steps = {
        "dense": make_step(adapter(base, False, args.rank), batch),
        "anchored": make_step(adapter(base, True, args.rank), batch),
    }
    times = alternate(steps, args.repeats)
    step_ratio = median(times["anchored"]) / median(times["dense"])
    print(f"step: anchored / dense SLowED = {step_ratio:.3f} (medians {median(times['anchored']):.3f} s / "
          f"{median(times['dense']):.3f} s, {args.repeats} alternating steps)")  # fmt: skip

    # fitting vs one forward pass over the same prompts (a char tokenizer: ~40-80 tokens per chat-formatted prompt)
    tok = build_char_tokenizer()
    prompts = [f"Please write a short note number {i} about topic {i % 17} for a friend." for i in range(args.prompts)]
    model = adapter(base, False, args.rank)
    anchored = get_peft_model(copy.deepcopy(base), SLowEDConfig(target_modules="all-linear", anchor_rank=args.rank))
    loader = anchor_dataloader(tok, prompts, batch_size=16)  # the same batches for both

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        for batch in loader:
            model(**batch)

    report = {}
    fit_times = alternate(
        {"forward": forward, "fit": lambda: report.update(r=fit_anchor(anchored, loader, show_progress_bar=False))},
        args.fit_repeats,
        warmup=0,
    )
    fit_ratio = median(fit_times["fit"]) / median(fit_times["forward"])
    print(f"fitting on {args.prompts} prompts ({report['r'].tokens} tokens): fit / one forward = {fit_ratio:.2f} "
          f"({median(fit_times['fit']):.1f} s / {median(fit_times['forward']):.1f} s); mean rank "
          f"{report['r'].mean_rank:.0f}, min energy {report['r'].min_energy:.3f}")  # fmt: skip
    write_json(
        args.out,
        {
            "machine": machine(),
            "args": vars(args),
            "step_ratio_anchored_over_dense": step_ratio,
            "step_seconds": {k: median(v) for k, v in times.items()},
            "fit_over_forward": fit_ratio,
            "fit_seconds": median(fit_times["fit"]),
            "forward_seconds": median(fit_times["forward"]),
            "tokens": report["r"].tokens,
        },
    )


if __name__ == "__main__":
    main()
