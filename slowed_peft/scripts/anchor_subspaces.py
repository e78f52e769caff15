"""What are the input directions the safety anchor protects? Fit the anchor on several prompt sets and compare.

For each source (benign requests, AdvBench's train part, the distillation prompts, the bare chat template around a
one-word user turn) the anchor is fitted on the aligned student; per wrapped layer we report

- ``overlap`` with the benign anchor, ``‖Q_bᵀ Q‖²_F / k`` (1: the same subspace; ``k / width`` for random directions);
- ``harmful energy``: the share of the *evaluated* AdvBench prompts' input energy ``tr(Qᵀ M Q) / tr(M)`` that the
  basis holds (analysis only: no anchor is ever fitted on evaluated prompts);
- ``top share`` and ``massive``: the top eigenvalue's share of the trace, and the largest squared coordinate of the top
  eigenvector (near 1: one "massive activation" dimension);
- ``template share``: the share of the benign prompts' input energy carried by template tokens (everything but the
  user's words).

    python -m slowed_peft.scripts.anchor_subspaces --output_dir outputs/anchor_subspaces
    python -m slowed_peft.scripts.anchor_subspaces --model_name_or_path gemma-3-270m \
        --benign_answer_model smollm2-135m-instruct --output_dir outputs/anchor_subspaces_gemma
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..data.formats import format_prompts
from ..tuner.registration import short_name
from .anchoring import TEMPLATE_TURNS


def _prompt_sets(student_tokenizer, train_rows: int, limit: int) -> dict[str, list[str]]:
    from ..data.alignment import benign_instructions
    from ..eval import load_advbench
    from .training import distillation_rows

    train = [r["prompt"][-1]["content"] for r in distillation_rows("svamp", "train", train_rows).to_list()]
    return {
        "benign": benign_instructions(seed=0)[0][:limit],
        "harmful (train part)": load_advbench(None, split="train", seed=0, train_fraction=0.6)[:limit],
        "distillation prompts": train,
        "template only": list(TEMPLATE_TURNS),
    }


def _bases(model) -> dict[str, torch.Tensor]:
    from ..tuner.layer import SLowEDLayer

    adapter = model.active_adapter
    return {
        n: m.slowed_anchor[adapter].double().clone() for n, m in model.named_modules() if isinstance(m, SLowEDLayer)
    }


@torch.no_grad()
def _second_moments(model, tokenizer, prompts: list[str], user_only: bool = False) -> dict[str, torch.Tensor]:
    """Σ x xᵀ of every SLowED layer's input over the chat-formatted prompts (all tokens, or the template's only)."""
    from ..tuner.layer import SLowEDLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}
    sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}
    keep = {}

    def hook(name):
        def pre(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()[keep["rows"]]
            sums[name].add_(x.T @ x)

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with model.disable_adapter():
            for prompt in prompts:
                (text,) = format_prompts(tokenizer, [prompt])
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                rows = torch.ones(len(ids), dtype=torch.bool)
                if user_only:  # template tokens only: drop the user's own words
                    user = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                    for start in range(len(ids) - len(user) + 1):
                        if ids[start : start + len(user)] == user:
                            rows[start : start + len(user)] = False
                            break
                keep["rows"] = rows
                model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/anchor_subspaces")
    parser.add_argument("--model_name_or_path", default="smollm2-135m-instruct", help="Student before alignment.")
    parser.add_argument(
        "--benign_answer_model", default=None, help="Who answers the alignment's benign requests (a base student)."
    )
    parser.add_argument("--anchor_rank", type=int, default=64)
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--train_rows", type=int, default=32)
    parser.add_argument("--harmful_eval", type=int, default=64, help="Evaluated AdvBench prompts for the energy share.")
    args = parser.parse_args()

    from peft import get_peft_model

    from .. import SLowEDConfig, fit_anchor
    from ..base_models import load_model
    from ..data.anchor_batches import anchor_dataloader
    from .align import AlignArguments, align_student, fast_align_arguments, held_out_sets

    started = time.time()
    student, _ = align_student(fast_align_arguments(args.model_name_or_path, 0, args.benign_answer_model))
    base, tokenizer = load_model(student)
    model = get_peft_model(base, SLowEDConfig(target_modules="all-linear", anchor_rank=args.anchor_rank))
    sets = _prompt_sets(tokenizer, args.train_rows, args.limit)
    bases = {}
    for source, prompts in sets.items():
        report = fit_anchor(model, anchor_dataloader(tokenizer, prompts), show_progress_bar=False)
        bases[source] = _bases(model)
        print(f"[fit] {source}: {len(prompts)} prompts, {report.tokens} tokens, {report.seconds} s", flush=True)
    generator = torch.Generator().manual_seed(0)
    bases["random"] = {
        n: torch.linalg.qr(torch.randn(q.shape, generator=generator, dtype=torch.float64))[0]
        for n, q in bases["benign"].items()
    }
    evaluated = held_out_sets(AlignArguments(seed=0))["advbench"][: args.harmful_eval]
    harmful = _second_moments(model, tokenizer, evaluated)
    benign_all = _second_moments(model, tokenizer, sets["benign"])
    benign_template = _second_moments(model, tokenizer, sets["benign"], user_only=True)

    layers: dict[str, dict] = {}
    for name, q_b in bases["benign"].items():
        short = short_name(name)
        values, vectors = torch.linalg.eigh(benign_all[name])
        row = {
            "width": q_b.shape[0],
            "top share": float(values[-1] / values.sum()),
            "massive": float(vectors[:, -1].pow(2).max()),
            "template share": float(torch.trace(benign_template[name]) / torch.trace(benign_all[name])),
        }
        for source, per_layer in bases.items():
            q = per_layer[name]
            row[f"overlap {source}"] = float((q_b.T @ q).pow(2).sum() / q.shape[1])
            row[f"harmful energy {source}"] = float(torch.trace(q.T @ harmful[name] @ q) / torch.trace(harmful[name]))
        layers[short] = row

    def mean(key: str, kind: str | None = None) -> float:
        chosen = [r[key] for n, r in layers.items() if kind is None or n.endswith(kind)]
        return sum(chosen) / len(chosen)

    sources = list(bases)
    lines = [
        f"Aligned demo student of {args.model_name_or_path}, k = {args.anchor_rank}, {len(layers)} layers; means over layers "
        f"({round(time.time() - started)} s).",
        "",
        "| basis | overlap with benign | evaluated harmful energy held |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {mean(f'overlap {s}'):.3f} | {mean(f'harmful energy {s}'):.3f} |" for s in sources]
    lines += [
        "",
        f"Template tokens' share of the benign prompts' input energy: {mean('template share'):.3f}; top eigenvalue's "
        f"share of the trace: {mean('top share'):.3f}; largest squared coordinate of the top eigenvector: "
        f"{mean('massive'):.3f} (per kind: "
        + ", ".join(
            f"{k} {mean('massive', k):.2f}"
            for k in ("q_proj", "o_proj", "gate_proj", "down_proj", "lm_head")
            if any(n.endswith(k) for n in layers)
        )
        + ").",
    ]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(layers, indent=1))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
