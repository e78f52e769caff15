"""Building blocks of ``bench_paper_shapes.py``: a paper student's real-width trunk, the five adapter arms, AdamW
steps, the real-vocabulary LM head on its own, random-token anchor prompts, and the fresh-process memory probe."""

from __future__ import annotations

import copy
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


sys.path.insert(0, os.path.dirname(__file__))
from _common import RssSampler, _input_group, paper_config  # noqa: E402

from slowed_peft import SLowEDConfig, SLowEDLayer  # noqa: E402
from slowed_peft.tuner.anchor import install_anchor  # noqa: E402


TRUNK_VOCAB = 256


def build_trunk(name: str, layers: int, dtype: torch.dtype = torch.float32):
    """``layers`` real-width decoder layers of student ``name`` with a tiny vocabulary, random weights (seed 0)."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(paper_config(name, layers=layers, vocab=TRUNK_VOCAB)).to(dtype)


def make_arm(base, arm: str, anchor_rank: int, copy_base: bool = True, slow_tuning: bool = False):
    """A PEFT model of ``arm`` on a copy of ``base`` (or on ``base`` itself); anchored arms get random orthonormal
    bases, one per group of layers reading one input."""
    common = dict(target_modules="all-linear", slow_factor=0.1 if slow_tuning else 1.0)
    common["max_drift"] = 0.05 if slow_tuning else None
    config = {
        "lora": LoraConfig(target_modules="all-linear", r=16, lora_alpha=16),
        "lowrank": SLowEDConfig(**common, r=16),
        "lowrank_anchored": SLowEDConfig(**common, r=16, anchor_rank=anchor_rank),
        "dense": SLowEDConfig(**common, save_precision="4bit"),
        "dense_anchored": SLowEDConfig(**common, anchor_rank=anchor_rank),
    }[arm]
    model = get_peft_model(copy.deepcopy(base) if copy_base else base, config)
    if arm.endswith("anchored"):
        g, bases = torch.Generator().manual_seed(0), {}
        for name, module in model.named_modules():
            if isinstance(module, SLowEDLayer):
                group = _input_group(name)
                if group not in bases:
                    bases[group] = torch.linalg.qr(torch.randn(module.in_features, anchor_rank, generator=g))[0]
                install_anchor(module, "default", bases[group])
    return model


def make_step(model, batch: torch.Tensor, autocast: bool = False):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class Head(torch.nn.Module):
    """The student's real-vocabulary LM head alone: final norm, tied embedding as the output matrix, cross-entropy.

    Frozen in every arm, so its step is a forward and the gradient for its input (no weight gradient)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        config = paper_config(name)
        torch.manual_seed(1)
        self.norm = torch.nn.LayerNorm(config.hidden_size)
        self.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.hidden_size) * 0.02, requires_grad=False)
        self.norm.requires_grad_(False)

    def step_fn(self, tokens: int):
        hidden = torch.randn(tokens, self.weight.shape[1], requires_grad=True)
        labels = torch.randint(0, self.weight.shape[0], (tokens,), generator=torch.Generator().manual_seed(2))

        def step() -> None:
            torch.nn.functional.cross_entropy(self.norm(hidden) @ self.weight.T, labels).backward()
            hidden.grad = None

        return step

    def forward_fn(self, rows: int, width: int):
        hidden = torch.randn(rows, width, self.weight.shape[1])

        @torch.no_grad()
        def forward() -> None:
            self.norm(hidden) @ self.weight.T

        return forward


def fit_prompts(n: int, seed: int = 3) -> list[list[int]]:
    """``n`` random-token prompts of 48-80 tokens (ids from 3: below are pad/eos/unk)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(48, 81, (n,), generator=g).tolist()
    return [torch.randint(3, TRUNK_VOCAB, (k,), generator=g).tolist() for k in lengths]


def batches_of(ids: list[list[int]], size: int = 16) -> list[dict]:
    """Right-padded batches of ``size`` rows with their attention masks (what the fit and the forward both see)."""
    out = []
    for i in range(0, len(ids), size):
        chunk = ids[i : i + size]
        width = max(len(s) for s in chunk)
        out.append(
            {
                "input_ids": torch.tensor([s + [0] * (width - len(s)) for s in chunk]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk]),
            }
        )
    return out


def saved_for_backward(model, ids: torch.Tensor) -> int:
    """Bytes autograd keeps from one forward (bf16 autocast) for its backward, other than parameters and buffers:
    what piles up layer after layer without gradient checkpointing (one layer's worth with it)."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids)
    return sum(kept.values())


def memory_child(name: str, arm: str, layers: int, anchor_rank: int, batch: int, seq: int, slow_tuning: bool) -> dict:
    """In a fresh process: peak RSS above the loaded bf16 base while ``arm`` is built and trained for two steps, then
    the bytes one more forward keeps for the backward."""
    torch.set_num_threads(1)
    base = build_trunk(name, layers, torch.bfloat16)
    ids = torch.randint(3, TRUNK_VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))
    with RssSampler() as rss:
        model = make_arm(base, arm, anchor_rank, copy_base=False, slow_tuning=slow_tuning)
        step = make_step(model, ids, autocast=True)
        step()
        step()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"peak_above_base_mib": rss.peak, "trainable": trainable, "saved_bytes": saved_for_backward(model, ids)}
