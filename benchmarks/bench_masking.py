"""Low-Entropy Masking overheads, alternating A/B in one process (medians), plus peak memory in subprocesses.

    python benchmarks/bench_masking.py                     # SmolLM2-135M shape (vocab 49152), random weights
    python benchmarks/bench_masking.py --layers 4 --repeats 5 --out benchmarks/results/masking.json

Comparisons:
  live LEM training step (SLowEDTrainer, entropy_quantile)  vs  plain SFT step (same trainer class, no masking)
  live LEM step on full logits (the TRL < 1.15 route)       vs  live LEM step on TRL's fused head
  collator LEM step (EntropyMaskingCollator batch)           vs  plain SFT step (TRL collator batch)
  annotate_entropy tokens/s                                  vs  a plain no-grad forward (full logits) on the same batches
  peak RSS: annotate_entropy (fused, chunked head)           vs  plain forward + token_entropy on materialised logits
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402


sys.path.insert(0, os.path.dirname(__file__))
from _common import RssSampler, alternate, machine, median, smollm2_config, tiny_tokenizer, write_json  # noqa: E402


def rows(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (seq,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (seq // 4) + ids[seq // 4 :]})
    return out


def bench_steps(args) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from slowed_peft import EntropyMaskingCollator, SLowEDConfig, SLowEDSFTConfig, SLowEDTrainer, annotate_entropy
    from slowed_peft.masking import fused
    from slowed_peft.masking.entropy import HAS_FUSED_HEAD

    torch.manual_seed(0)
    base = LlamaForCausalLM(smollm2_config(args.layers))
    data = Dataset.from_list(rows(args.batch, args.seq, base.config.vocab_size))
    common = dict(
        output_dir="/tmp/bench_masking",
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=args.batch,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    peft = SLowEDConfig(target_modules="all-linear", r=16, slow_factor=1.0, max_drift=0.05, task_type="CAUSAL_LM")
    tok = tiny_tokenizer()
    plain = SLowEDTrainer(
        model=base, args=SLowEDSFTConfig(**common), train_dataset=data, peft_config=peft, processing_class=tok
    )
    live = SLowEDTrainer(
        model=plain.model,
        args=SLowEDSFTConfig(**common, entropy_quantile=0.3),
        train_dataset=data,
        peft_config=None,
        processing_class=tok,
    )
    model = plain.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    examples = [data[i] for i in range(args.batch)]
    annotated = annotate_entropy(data, model, batch_size=args.batch)
    lem_collator = EntropyMaskingCollator(pad_token_id=0, quantile=0.3)

    def step(trainer, batch_fn, fused_head=True):
        def run():
            fused.HAS_FUSED_HEAD = fused_head and HAS_FUSED_HEAD  # False: masking/fused.py's full-logits route
            batch = batch_fn()
            trainer.training_step(model, batch, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
            live._rescale_to_kept_tokens(model) if trainer is live else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            fused.HAS_FUSED_HEAD = HAS_FUSED_HEAD

        return run

    steps = {
        "plain_sft": step(plain, lambda: DataCollatorForLanguageModeling(pad_token_id=0)(examples)),
        "live_lem": step(live, lambda: DataCollatorForLanguageModeling(pad_token_id=0)(examples)),
        "live_lem_full_logits": step(
            live, lambda: DataCollatorForLanguageModeling(pad_token_id=0)(examples), fused_head=False
        ),
        "collator_lem": step(plain, lambda: lem_collator([annotated[i] for i in range(args.batch)])),
    }
    times = alternate(steps, repeats=args.repeats)
    med = {k: median(v) for k, v in times.items()}
    return {
        "median_s": med,
        "times_s": times,
        "ratios": {
            "live_lem / plain_sft": med["live_lem"] / med["plain_sft"],
            "collator_lem / plain_sft": med["collator_lem"] / med["plain_sft"],
            "live_lem_full_logits / live_lem": med["live_lem_full_logits"] / med["live_lem"],
        },
    }


def bench_annotate(args) -> dict:
    from slowed_peft import annotate_entropy

    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_config(args.layers)).eval()
    n = args.batch * 4
    data = Dataset.from_list(rows(n, args.seq, model.config.vocab_size))
    ids = torch.tensor(data["input_ids"])
    state = {"i": 0}

    def plain_forward():
        with torch.no_grad():
            for s in range(0, n, args.batch):
                model(input_ids=ids[s : s + args.batch]).logits.sum()

    def annotate():
        state["i"] += 1  # fresh fingerprint each call: measure compute, not the cache
        annotate_entropy(
            data.map(lambda r: r, new_fingerprint=f"bench-{state['i']}"), model, batch_size=args.batch, desc="annotate"
        )

    times = alternate({"plain_forward": plain_forward, "annotate_entropy": annotate}, repeats=args.repeats, warmup=1)
    med = {k: median(v) for k, v in times.items()}
    tokens = n * args.seq
    return {
        "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "ratios": {"annotate tokens/s / plain forward tokens/s": med["plain_forward"] / med["annotate_entropy"]},
    }


def memory_child(mode: str, layers: int, batch: int, seq: int) -> None:
    """Run one variant in a fresh process and print its peak RSS increase over the loaded model (MiB)."""
    from slowed_peft import annotate_entropy, token_entropy

    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_config(layers)).eval()
    data = Dataset.from_list(rows(batch, seq, model.config.vocab_size))
    ids = torch.tensor(data["input_ids"])
    with torch.no_grad():
        model.model(input_ids=ids[:1, :8])  # warm up allocator and kernels outside the measurement
    with RssSampler() as mem:
        if mode == "materialised":
            with torch.no_grad():
                token_entropy(model(input_ids=ids).logits)
        else:
            annotate_entropy(data, model, batch_size=batch)
    print(json.dumps({"mode": mode, "peak_increase_mib": mem.peak}))


def bench_memory(args) -> dict:
    out = {}
    for mode in ("materialised", "annotate_entropy"):
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                mode,
                "--layers",
                str(args.layers),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.mem_seq),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])["peak_increase_mib"]
    out["ratio annotate / materialised"] = out["annotate_entropy"] / max(out["materialised"], 1e-9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30, help="30 = SmolLM2-135M's depth")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--mem-seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--out", default="benchmarks/results/masking.json")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.layers, args.batch, args.seq)
        return
    result = {
        "args": vars(args),
        "machine": machine(),
        "steps": bench_steps(args),
        "annotate": bench_annotate(args),
        "memory_mib": bench_memory(args),
    }
    print("\nstep time ratios (median):")
    for k, v in result["steps"]["ratios"].items():
        print(f"  {k:<32}{v:8.3f}")
    print("annotate_entropy:")
    for k, v in result["annotate"]["ratios"].items():
        print(f"  {k:<44}{v:8.3f}")
    mem = result["memory_mib"]
    print(
        f"peak RSS increase at vocab 49152, batch {args.batch}x{args.mem_seq}: materialised "
        f"{mem['materialised']:.0f} MiB, annotate_entropy {mem['annotate_entropy']:.0f} MiB "
        f"(ratio {mem['ratio annotate / materialised']:.2f})"
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
