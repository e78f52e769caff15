"""What an anchored run costs at the paper's shapes: Qwen2.5-1.5B, Llama-3.2-1B and BLOOM-1.1B (issue 33, point 1).

    python benchmarks/bench_paper_shapes.py --repeats 7    # the three students: about 10 min of CPU on one thread
    python benchmarks/bench_paper_shapes.py --slow_tuning --parts steps memory --out ...  # the slowed arm's settings
    python benchmarks/bench_paper_shapes.py --quick        # smoke run: few tokens, one repeat, no memory children

What is built. Full depth does not fit this machine (fp32 weights of a 1.5B model are 6 GB before gradients and Adam,
and a training step would take minutes), so each student is measured as ``--layers`` decoder layers of its real
width (config from ``_common.PAPER_SHAPES``, random weights) with a 256-token vocabulary — the *trunk* — plus, apart,
its real-vocabulary LM head (the tied embedding, the final norm and cross-entropy; frozen and unwrapped in every arm).
Every decoder layer of a student is identical, so full depth is extrapolated per layer, and the output says so::

    cost at depth L = head + L × (trunk cost / --layers)

Measured in one process (one thread, ``--threads``; glibc set to keep freed memory as the recipes do, see
``slowed_peft.utils.allocator``; ``--glibc_default`` to time without), each figure a ratio of medians over
alternating calls (``_common.alternate``); step pairs also as the median of per-round ratios (``paired``):

1. **fit**: ``fit_anchor`` (k = ``--anchor_rank``) on ``--prompts`` random-token prompts of 48-80 tokens against one
   forward pass of the initial model over the same batches (16 rows, right-padded, as the fit batches them);
2. **step**: AdamW steps on one batch for five arms — PEFT LoRA r = 16, low-rank SLowED r = 16 without and with the
   anchor, dense SLowED without and with the anchor, all-linear. The SLowED arms train as ``slowed-sft --arm sft`` /
   ``--arm anchored`` do (γ = 1, no trust region; ``anchored`` is what the paper-student configs run by default), or
   with ``--slow_tuning`` as ``--arm slowed`` does (γ = 0.1, ρ = 0.05);
   anchored arms get random orthonormal bases (one per group of layers reading one input, as the fit makes them):
   the step's cost does not depend on which directions are protected;
3. **memory** (skipped by ``--quick``): each arm in a fresh subprocess, the way the paper configs run it on a GPU
   (bf16 base, float32 adapter, bf16 autocast): peak resident memory above the loaded base model over two steps,
   sampled from /proc (``_common.RssSampler``), per decoder layer; and the bytes autograd keeps from one forward for
   the backward (``_paper_shapes.saved_for_backward``): what piles up over the layers without gradient checkpointing;
4. **bytes**: ``save_pretrained`` of the trunk's adapters (per layer, exact: the file grows linearly with depth):
   LoRA r = 16, dense ``save_precision="4bit"``, and the anchor's bases as the difference between the anchored and
   the plain low-rank adapter, in fp32 and (where ``anchor_save_dtype`` exists) bf16.

The GPU plan (``gpu`` in the JSON) is analytic, from the full-depth parameter counts (``_common.paper_shape_counts``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile

import torch


sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    PAPER_SHAPES,
    alternate,
    machine,
    median,
    paper_config,
    paper_shape_counts,
    write_json,
)
from _paper_shapes import (  # noqa: E402
    TRUNK_VOCAB,
    Head,
    batches_of,
    build_trunk,
    fit_prompts,
    make_arm,
    make_step,
    memory_child,
)

from slowed_peft import SLowEDLayer, fit_anchor  # noqa: E402
from slowed_peft.utils.allocator import keep_freed_memory  # noqa: E402


FIT_PARAMS = inspect.signature(fit_anchor).parameters
# Alternation order: each anchored arm runs next to its baselines (see the paired ratios in ``measure_steps``).
ARMS = ("lowrank", "lowrank_anchored", "lora", "dense", "dense_anchored")
PARTS = ("fit", "steps", "bytes", "memory")
PAIRS = {  # (arm, baseline, goal)
    "lowrank_anchored / lora": ("lowrank_anchored", "lora", 1.03),
    "lowrank_anchored / lowrank": ("lowrank_anchored", "lowrank", None),
    "dense_anchored / dense": ("dense_anchored", "dense", 1.03),
}
GIB = 2**30


def run_fit(model, ids: list[list[int]]):
    """``fit_anchor(model, batches)`` on token ids (re-fitting an unchanged adapter's anchor each call)."""
    extra = {k: v for k, v in (("show_progress_bar", False), ("overwrite", True)) if k in FIT_PARAMS}
    return fit_anchor(model, batches_of(ids), **extra)


def measure_fit(name: str, args, head: Head) -> dict:
    base = build_trunk(name, args.layers)
    model = make_arm(base, "dense_anchored", args.anchor_rank)
    ids = fit_prompts(args.prompts)
    batches = batches_of(ids)
    padded = sum(b["input_ids"].numel() for b in batches)

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        with model.disable_adapter():
            for b in batches:
                model(**b, use_cache=False)

    first = batches[0]["input_ids"].shape
    report = {}
    times = alternate(
        {
            "forward": forward,
            "fit": lambda: report.update(r=run_fit(model, ids)),
            "head_forward": head.forward_fn(*first),
        },
        args.fit_repeats,
        warmup=0,
    )
    groups = {}  # distinct bases the fit installed: how the layers share them
    for module in model.modules():
        if isinstance(module, SLowEDLayer):
            q = module.slowed_anchor["default"]
            groups[q.data_ptr()] = q.numel()
    per_layer = {k: median(v) / args.layers for k, v in times.items() if k != "head_forward"}
    head_forward = median(times["head_forward"]) * padded / first.numel()  # GEMM cost is linear in tokens
    depth = paper_config(name).num_hidden_layers
    return {
        "tokens": report["r"].tokens,
        "padded_tokens": padded,
        "seconds": {k: median(v) for k, v in times.items()},
        "per_layer_seconds": per_layer,
        "head_forward_seconds_all_tokens": head_forward,
        "fit_over_forward_per_layer": per_layer["fit"] / per_layer["forward"],
        "fit_over_forward_full_depth": depth * per_layer["fit"] / (head_forward + depth * per_layer["forward"]),
        "min_energy": report["r"].min_energy,
        "mean_rank": report["r"].mean_rank,
        "distinct_bases_per_layer": len(groups) / args.layers,
        "basis_entries_per_layer": sum(groups.values()) / args.layers,
    }


def measure_steps(name: str, args, head: Head) -> tuple[dict, dict]:
    """Step seconds per arm and the pairs' ratios: per layer and at full depth (head + depth × per layer).

    ``paired``: the median over rounds of each round's ratio (the two arms ran next to each other), steadier than the
    ratio of medians when the machine's speed drifts between rounds."""
    base = build_trunk(name, args.layers)
    batch = torch.randint(3, TRUNK_VOCAB, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    models = {arm: make_arm(base, arm, args.anchor_rank, slow_tuning=args.slow_tuning) for arm in args.arms}
    steps = {arm: make_step(m, batch) for arm, m in models.items()}
    head_tokens = min(args.batch * args.seq, 128)
    steps["head"] = head.step_fn(head_tokens)
    times = alternate(steps, args.repeats, warmup=args.warmup)
    depth = paper_config(name).num_hidden_layers
    head_step = median(times["head"]) * args.batch * args.seq / head_tokens  # GEMM cost is linear in tokens
    layer = {arm: median(times[arm]) / args.layers for arm in args.arms}
    full = {arm: head_step + depth * layer[arm] for arm in args.arms}
    pairs = {k: (a, b) for k, (a, b, _) in PAIRS.items() if a in models and b in models}
    at_depth = {arm: [head_step + depth * t / args.layers for t in times[arm]] for arm in args.arms}
    out = {
        "tokens_per_step": args.batch * args.seq,
        "per_layer_seconds": layer,
        "head_step_seconds": head_step,
        "head_measured_tokens": head_tokens,
        "full_depth_seconds_extrapolated": full,
        "ratios_per_layer": {k: layer[a] / layer[b] for k, (a, b) in pairs.items()},
        "ratios_full_depth": {k: full[a] / full[b] for k, (a, b) in pairs.items()},
        "paired_ratios_per_layer": {
            k: median([x / y for x, y in zip(times[a], times[b])]) for k, (a, b) in pairs.items()
        },
        "paired_ratios_full_depth": {
            k: median([x / y for x, y in zip(at_depth[a], at_depth[b])]) for k, (a, b) in pairs.items()
        },
        "all_seconds": times,
    }
    return out, models


def measure_bytes(models: dict, layers: int, depth: int) -> dict:
    """Adapter file bytes of the trunk's arms, per decoder layer and at full depth (files grow linearly)."""

    def size(model) -> int:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            return os.path.getsize(os.path.join(d, "adapter_model.safetensors"))

    out = {"lora_r16": size(models["lora"]), "dense_4bit": size(models["dense"])}
    plain = size(models["lowrank"])
    anchored = models["lowrank_anchored"]
    out["bases_fp32"] = size(anchored) - plain
    config = anchored.peft_config["default"]
    if hasattr(config, "anchor_save_dtype"):
        config.anchor_save_dtype = "bf16"
        out["bases_bf16"] = size(anchored) - plain
        config.anchor_save_dtype = "fp32"
    return {
        "per_layer": {k: v / layers for k, v in out.items()},
        "full_depth": {k: v * depth / layers for k, v in out.items()},
    }


def measure_memory(name: str, args) -> dict:
    out = {}
    for arm in args.arms:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            json.dumps([name, arm, args.layers, args.anchor_rank, args.batch, args.seq, args.slow_tuning]),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"memory child {name}/{arm} failed:\n{res.stderr[-3000:]}")
        child = json.loads(res.stdout.strip().splitlines()[-1])
        out[arm] = {
            "peak_per_layer_mib": child["peak_above_base_mib"] / args.layers,
            "saved_for_backward_per_layer_mib": child["saved_bytes"] / args.layers / 2**20,
            "trainable_per_layer": child["trainable"] / args.layers,
        }
    for key, (a, b, _) in PAIRS.items():
        if a in out and b in out:
            out[key] = {
                "peak": out[a]["peak_per_layer_mib"] / out[b]["peak_per_layer_mib"],
                "saved_extra_mib": out[a]["saved_for_backward_per_layer_mib"]
                - out[b]["saved_for_backward_per_layer_mib"],
            }
    return out


def gpu_plan(name: str, anchor_rank: int) -> dict:
    """Analytic GPU memory (GiB) of the states: bf16 base (2 B/param) + trainable float32 entries × 16 B (value,
    gradient, two AdamW moments) + float32 anchor bases (one per input group); activations excluded (same in every
    arm, set by batch, length and gradient checkpointing)."""
    c = paper_shape_counts(name, rank=16, anchor_rank=anchor_rank)
    base = 2 * c["params"]
    return {
        "counts": c,
        "base_bf16_gib": base / GIB,
        "dense_gib": (base + 16 * c["linear"]) / GIB,
        "dense_anchored_gib": (base + 16 * c["linear"] + 4 * c["bases_shared"]) / GIB,
        "lora_r16_gib": (base + 16 * c["lora"]) / GIB,
        "lowrank_anchored_gib": (base + 16 * c["lora"] + 4 * c["bases_shared"]) / GIB,
        "bases_fp32_mb": 4 * c["bases_shared"] / 1e6,
        "bases_bf16_mb": 2 * c["bases_shared"] / 1e6,
        "bases_fp32_per_layer_storage_mb": 4 * c["bases_per_layer"] / 1e6,
        "lora_r16_mb": 4 * c["lora"] / 1e6,
        "dense_4bit_mb_bound": 0.5 * c["linear"] / 1e6,  # save_precision="4bit": at most 4 bits per entry
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAPER_SHAPES), choices=list(PAPER_SHAPES))
    parser.add_argument(
        "--layers", type=int, default=1, help="real-width decoder layers built (full depth extrapolated)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--glibc_default",
        action="store_true",
        help="time with glibc's default allocator settings instead of keep_freed_memory() (what the recipes call)",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--fit_repeats", type=int, default=2)
    parser.add_argument("--anchor_rank", type=int, default=64)
    parser.add_argument("--slow_tuning", action="store_true", help="SLowED arms with slow factor 0.1, max drift 0.05")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="step and memory arms")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 1x32, 8 prompts, 1 repeat, no memory")
    parser.add_argument("--out", default="benchmarks/results/paper_shapes.json")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(memory_child(*json.loads(args._child))))
        return
    if args.quick:
        args.batch, args.seq, args.repeats, args.warmup, args.fit_repeats, args.prompts = 1, 32, 1, 0, 1, 8
        args.parts = [p for p in args.parts if p != "memory"]
        args.out = args.out.replace(".json", "_quick.json")
    if "bytes" in args.parts and not {"lora", "lowrank", "lowrank_anchored", "dense"} <= set(args.arms):
        parser.error("--parts bytes needs the arms lora, lowrank, lowrank_anchored and dense")
    torch.set_num_threads(args.threads)
    # Timing as the recipes train on CPU: freed blocks reused instead of page-faulting fresh ones every step (a GPU's
    # caching allocator does the same); the anchored dense step's weight-sized temporaries otherwise cost page faults.
    args.keep_freed_memory = False if args.glibc_default else keep_freed_memory()

    results = {"machine": machine(), "args": vars(args), "models": {}}
    for name in args.models:
        depth = paper_config(name).num_hidden_layers
        print(f"== {name}: {args.layers} of {depth} layers at real width, vocab {TRUNK_VOCAB} (+ the real head apart); "
              f"full depth = head + {depth} x per layer (extrapolated)", flush=True)  # fmt: skip
        entry = results["models"][name] = {"depth": depth, "gpu": gpu_plan(name, args.anchor_rank)}
        head = Head(name) if {"fit", "steps"} & set(args.parts) else None
        if "fit" in args.parts:
            fit = entry["fit"] = measure_fit(name, args, head)
            print(f"fit ({fit['tokens']} tokens, k={args.anchor_rank}) / forward: per layer "
                  f"{fit['fit_over_forward_per_layer']:.2f}, full depth {fit['fit_over_forward_full_depth']:.2f} "
                  "(goal <= 1.5)", flush=True)  # fmt: skip
        if {"steps", "bytes"} & set(args.parts):
            steps, models = measure_steps(name, args, head)
            entry["step"] = steps
            for key, ratio in steps["ratios_per_layer"].items():
                goal = PAIRS[key][2]
                print(f"step {key}: per layer {ratio:.3f} (paired {steps['paired_ratios_per_layer'][key]:.3f}), "
                      f"full depth {steps['ratios_full_depth'][key]:.3f} (paired "
                      f"{steps['paired_ratios_full_depth'][key]:.3f})" + (f"; goal <= {goal}" if goal else ""),
                      flush=True)  # fmt: skip
            if "bytes" in args.parts:
                nbytes = entry["bytes"] = measure_bytes(models, args.layers, depth)
                fb = nbytes["full_depth"]
                sizes = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in fb.items())
                ratio = fb["bases_fp32"] / fb["lora_r16"]
                print(f"bytes at full depth (MB): {sizes}; bases fp32 / LoRA = {ratio:.2f} (goal <= 1.5)", flush=True)
            del models
        del head
        if "memory" in args.parts:
            entry["memory"] = measure_memory(name, args)
            mem = entry["memory"]
            sizes = ", ".join(
                f"{a} {mem[a]['peak_per_layer_mib']:.0f} / {mem[a]['saved_for_backward_per_layer_mib']:.0f}"
                for a in args.arms
            )
            print(f"per layer, bf16 base + autocast: peak / kept for backward (MiB): {sizes}", flush=True)
        write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
