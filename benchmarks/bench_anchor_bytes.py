"""Bytes of the safety anchor's bases in a saved adapter, and what bf16 storage costs in logits (issue 33, point 2).

    python benchmarks/bench_anchor_bytes.py            # bytes for 4 shapes + logit error on 2 models (~11 min CPU, 6 GB)
    python benchmarks/bench_anchor_bytes.py --quick    # bytes only from shapes + the tiny model's logit error

1. **Bytes from shapes** (no weights): per wrapped layer (``target_modules="all-linear"``, LM head excluded) a basis
   of ``in_features × k`` entries; before this change every layer stored its own, now one per group of layers reading
   the same input (q/k/v, gate/up; BLOOM's fused ``query_key_value`` and its MLP read four different tensors, so
   nothing is shared there). For the demo's model (SmolLM2-135M: 30 layers, hidden 576, MLP 1536) and the paper's
   students (Qwen2.5-1.5B, Llama-3.2-1B, BLOOM-1.1B; configs ``_common.PAPER_SHAPES``, counts
   ``_common.paper_shape_counts``), against a PEFT LoRA r = 16 adapter on the same layers (float32, as PEFT saves it).
2. **Bytes of real files** (demo shape, random weights): a low-rank (r = 16) anchored SLowED adapter with bases from
   ``fit_anchor`` saved per layer (the old layout, rebuilt from the new file), shared fp32, shared bf16; a PEFT LoRA
   r = 16 adapter; the bases' share read from each file's safetensors header.
3. **Logit error of bf16 storage**: an anchored dense adapter is fitted, trained a few AdamW steps on other tokens,
   saved with ``anchor_save_dtype="fp32"`` and ``"bf16"``, and both files are loaded onto the base. Reported: max
   |logit change| between the two on the anchor prompts and on other prompts (next to what training changed there),
   the largest principal angle between the fp32 and the re-orthonormalised bf16 bases, ``|QᵀQ − I|`` of the bf16
   values before and after re-orthonormalisation, and ``max |ΔW Q| / max |ΔW|`` with the loaded bases (the guarantee
   ``ΔW·x = 0`` on span(Q)). Settings: a tiny Llama (hidden 64) with a full-span anchor (``anchor_energy=1``, 20
   tokens: the fp32 adapter keeps the anchor logits exactly, so any change is bf16's), and the SmolLM2-135M shape at
   k = 64, once with 48 anchor tokens (full span) and once demo-like (80 prompts × 32 tokens: the anchor covers part
   of the prompts' inputs, so fp32 itself lets some change through).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig


sys.path.insert(0, os.path.dirname(__file__))
from _common import PAPER_SHAPES, _input_group, machine, paper_shape_counts, smollm2_config, write_json  # noqa: E402

from slowed_peft import SLowEDConfig, SLowEDLayer, fit_anchor  # noqa: E402


FILE = "adapter_model.safetensors"
MB = 1e6


# --------------------------------------------------------------------------------------------------- bytes from shapes
def shape_entries(model: torch.nn.Module, anchor_rank: int, lora_rank: int) -> dict:
    """Basis entries per layer and per input group, and LoRA entries, of the layers ``all-linear`` wraps."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    groups = {_input_group(n): m.in_features for n, m in linears}
    return {
        "wrapped_layers": len(linears),
        "stored_bases_before": len(linears),
        "stored_bases_now": len(groups),
        "bases_per_layer": anchor_rank * sum(m.in_features for _, m in linears),
        "bases_shared": anchor_rank * sum(groups.values()),
        "lora": lora_rank * sum(m.in_features + m.out_features for _, m in linears),
    }


def bytes_row(entries: dict) -> dict:
    row = {
        "fp32_per_layer_MB": 4 * entries["bases_per_layer"] / MB,
        "fp32_shared_MB": 4 * entries["bases_shared"] / MB,
        "bf16_shared_MB": 2 * entries["bases_shared"] / MB,
        "lora_r16_MB": 4 * entries["lora"] / MB,
    }
    row["bf16_shared / lora"] = row["bf16_shared_MB"] / row["lora_r16_MB"]
    row["fp32_shared / lora"] = row["fp32_shared_MB"] / row["lora_r16_MB"]
    return row


def shapes_table(anchor_rank: int, lora_rank: int) -> dict:
    with torch.device("meta"):
        demo = AutoModelForCausalLM.from_config(smollm2_config(30))
    table = {"smollm2-135m (demo)": {**shape_entries(demo, anchor_rank, lora_rank)}}
    for name in PAPER_SHAPES:
        counts = paper_shape_counts(name, rank=lora_rank, anchor_rank=anchor_rank)
        table[name] = {k: counts[k] for k in ("bases_per_layer", "bases_shared", "lora")}
    for entries in table.values():
        entries.update(bytes_row(entries))
    return table


# ----------------------------------------------------------------------------------------------- bytes of real files
def header_bytes(path: str) -> dict:
    """Total size, and the data bytes of the anchor's entries (bases and references), from the safetensors header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    anchor = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if "slowed_anchor" in k)
    return {"file_MB": os.path.getsize(path) / MB, "anchor_data_MB": anchor / MB}


def to_per_layer(folder: str) -> None:
    """Rewrite an adapter in the layout written before bases were shared: every layer's basis under its own key."""
    state = load_file(os.path.join(folder, FILE))
    for key in [k for k in state if k.endswith(".slowed_anchor_ref")]:
        owner = bytes(state.pop(key).tolist()).decode()
        state[key.removesuffix("_ref")] = state[f"{owner}.slowed_anchor"].clone()
    save_file(state, os.path.join(folder, FILE), metadata={"format": "pt"})


def random_batches(count: int, length: int, vocab: int, seed: int, batch: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (count, length), generator=g)
    return [{"input_ids": ids[i : i + batch], "attention_mask": torch.ones_like(ids[i : i + batch])}
            for i in range(0, count, batch)]  # fmt: skip


def real_files(anchor_rank: int, lora_rank: int, work: str) -> dict:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(smollm2_config(30)).eval()
    out = {}
    lora = get_peft_model(base, LoraConfig(r=lora_rank, target_modules="all-linear"))
    lora.save_pretrained(os.path.join(work, "lora"))
    out["peft lora r=16"] = header_bytes(os.path.join(work, "lora", FILE))
    base = lora.unload()
    settings = dict(target_modules="all-linear", r=lora_rank, anchor_rank=anchor_rank, init_weights=False)
    model = get_peft_model(base, SLowEDConfig(**settings))
    fit_anchor(model, random_batches(80, 32, base.config.vocab_size, seed=1), show_progress_bar=False)
    for dtype in ("fp32", "bf16"):
        model.peft_config["default"].anchor_save_dtype = dtype
        model.save_pretrained(os.path.join(work, dtype))
    to_per_layer(os.path.join(work, "fp32"))  # fp32 shared -> the old per-layer layout, measured, then shared again
    out["slowed r=16 + anchor, fp32 per layer (before)"] = header_bytes(os.path.join(work, "fp32", FILE))
    model.peft_config["default"].anchor_save_dtype = "fp32"
    model.save_pretrained(os.path.join(work, "fp32"))
    out["slowed r=16 + anchor, fp32 shared"] = header_bytes(os.path.join(work, "fp32", FILE))
    out["slowed r=16 + anchor, bf16 shared"] = header_bytes(os.path.join(work, "bf16", FILE))
    model.load_adapter(os.path.join(work, "fp32"), adapter_name="check")
    same = all(
        torch.equal(m.slowed_anchor["default"], m.slowed_anchor["check"])
        for m in model.modules()
        if isinstance(m, SLowEDLayer)
    )
    out["fp32 shared round trip bit-identical"] = same
    return out


# -------------------------------------------------------------------------------------------- logit error of bf16
def _layers(model) -> dict[str, SLowEDLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}


def _logits(model, batches: list[dict]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(input_ids=b["input_ids"]).logits for b in batches])


def logit_error(build, config: SLowEDConfig, anchor: list[dict], other: list[dict], steps: int, lr: float, work: str):
    """Fit, train ``steps`` AdamW steps on ``other``, save fp32 and bf16 bases, load both and compare."""
    torch.manual_seed(0)
    model = get_peft_model(build(), config)
    report = fit_anchor(model, anchor, show_progress_bar=False)
    with model.disable_adapter():
        base_anchor, base_other = _logits(model, anchor), _logits(model, other)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        batch = other[step % len(other)]
        model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    for dtype in ("fp32", "bf16"):
        model.peft_config["default"].anchor_save_dtype = dtype
        model.save_pretrained(os.path.join(work, dtype))
    stored = load_file(os.path.join(work, "bf16", FILE))
    stored_err = max(
        float((q.double().T @ q.double() - torch.eye(q.shape[1], dtype=torch.float64)).abs().max())
        for k, q in stored.items()
        if k.endswith(".slowed_anchor")
    )
    del model, opt, stored
    results = {}
    for dtype in ("fp32", "bf16"):
        loaded = PeftModel.from_pretrained(build(), os.path.join(work, dtype))
        results[dtype] = (_logits(loaded, anchor), _logits(loaded, other), {
            n: (m.slowed_anchor["default"].clone(), m.get_delta_weight("default").detach()) for n, m in _layers(loaded).items()
        })  # fmt: skip
        del loaded
    (fa, fo, fl), (ba, bo, bl) = results["fp32"], results["bf16"]
    angle, orth, leak = 0.0, 0.0, 0.0
    for name, (q32, _) in fl.items():
        q16, delta = bl[name]
        cosines = torch.linalg.svdvals(q32.double().T @ q16.double()).clamp(max=1.0)
        angle = max(angle, float(torch.arccos(cosines.min())))
        eye = torch.eye(q16.shape[1], dtype=torch.float64)
        orth = max(orth, float((q16.double().T @ q16.double() - eye).abs().max()))
        leak = max(leak, float((delta @ q16).abs().max() / delta.abs().max().clamp_min(1e-30)))
    return {
        "anchor_tokens": int(sum(int(b["attention_mask"].sum()) for b in anchor)),
        "mean_rank": report.mean_rank,
        "train: max |Δlogit| other (fp32 vs base)": float((fo - base_other).abs().max()),
        "train: max |Δlogit| anchor (fp32 vs base)": float((fa - base_anchor).abs().max()),
        "bf16 vs fp32: max |Δlogit| anchor": float((ba - fa).abs().max()),
        "bf16 vs fp32: max |Δlogit| other": float((bo - fo).abs().max()),
        "max principal angle fp32 vs bf16 bases (rad)": angle,
        "max |QᵀQ − I| stored bf16 values": stored_err,
        "max |QᵀQ − I| loaded (re-orthonormalised)": orth,
        "max |ΔW Q| / max |ΔW| with loaded bf16 bases": leak,
    }


def tiny_llama():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
    ).eval()  # fmt: skip


def smollm2():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(smollm2_config(30)).eval()


def logit_table(quick: bool, work: str) -> dict:
    common = dict(target_modules="all-linear", slow_factor=1.0, max_drift=0.05)
    table = {}
    table["tiny llama, full span (anchor_energy=1)"] = logit_error(
        tiny_llama, SLowEDConfig(**common, anchor_energy=1.0), random_batches(1, 20, 96, seed=1),
        random_batches(8, 24, 96, seed=2, batch=4), steps=6, lr=1e-2, work=os.path.join(work, "tiny"),
    )  # fmt: skip
    if quick:
        return table
    vocab = 49152
    table["smollm2-135m shape, k=64, full span (48 tokens)"] = logit_error(
        smollm2, SLowEDConfig(**common, anchor_rank=64), random_batches(2, 24, vocab, seed=1),
        random_batches(8, 32, vocab, seed=2, batch=4), steps=3, lr=1e-3, work=os.path.join(work, "smol_full"),
    )  # fmt: skip
    table["smollm2-135m shape, k=64, demo-like (80 prompts x 32 tokens)"] = logit_error(
        smollm2, SLowEDConfig(**common, anchor_rank=64), random_batches(80, 32, vocab, seed=1),
        random_batches(8, 32, vocab, seed=2, batch=4), steps=3, lr=1e-3, work=os.path.join(work, "smol_demo"),
    )  # fmt: skip
    return table


def _print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    for name, row in rows.items():
        if not isinstance(row, dict):
            print(f"  {name}: {row}")
            continue
        cells = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print(f"  {name}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor_rank", type=int, default=64)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="shapes and the tiny model only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "anchor_bytes.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    payload = {"machine": machine(), "anchor_rank": args.anchor_rank, "lora_rank": args.lora_rank}
    payload["shapes"] = shapes_table(args.anchor_rank, args.lora_rank)
    print(f"Bases at k = {args.anchor_rank} (MB = 1e6 bytes) against PEFT LoRA r = {args.lora_rank}, all-linear:")
    print(f"{'model':<22} {'fp32 per layer':>14} {'fp32 shared':>11} {'bf16 shared':>11} {'LoRA':>8} "
          f"{'fp32 sh/LoRA':>12} {'bf16 sh/LoRA':>12}")  # fmt: skip
    for name, row in payload["shapes"].items():
        print(
            f"{name:<22} {row['fp32_per_layer_MB']:>14.2f} {row['fp32_shared_MB']:>11.2f} {row['bf16_shared_MB']:>11.2f} "
            f"{row['lora_r16_MB']:>8.2f} {row['fp32_shared / lora']:>12.2f} {row['bf16_shared / lora']:>12.2f}"
        )
    with tempfile.TemporaryDirectory() as work:
        if not args.quick:
            payload["files"] = real_files(args.anchor_rank, args.lora_rank, work)
            _print_table("Real files, SmolLM2-135M shape (random weights):", payload["files"])
        payload["logit_error"] = logit_table(args.quick, work)
        _print_table("Logit error of bf16 bases (each loaded from its file):", payload["logit_error"])
    write_json(args.out, payload)
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
