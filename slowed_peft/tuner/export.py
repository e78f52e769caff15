"""`export_as_lora`: turn a SLowED adapter into a plain PEFT LoRA that loads without this package.

Each ΔW is factored by SVD (``B = U_r·S_r``, ``A = V_rᵀ``, LoRA scaling 1, as ``peft``'s ``save_as_lora``). Ranks
come from a fixed rank, a kept singular-value energy, or a **byte budget** (``max_bytes``): rank-one components are
taken greedily by relative squared error removed per byte, across all layers, until the budget is spent. Whatever
was asked, the export is **never larger than the SLowED adapter it replaces** (its trainable tensors, in bytes).
The report gives the weight error ``‖ΔW − B·A‖_F / ‖ΔW‖_F`` per module and, given ``eval_input_ids``, the error in
output space: the KL divergence from the SLowED model's next-token distribution and top-1 agreement with it.

The lossless route for users without this package is ``model.merge_and_unload()`` (full weights, exact).
"""

from __future__ import annotations

import heapq
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from safetensors.torch import save_file
from torch import nn

from .layer import SLowEDLayer
from .registration import short_name


DEFAULT_DENSE_ENERGY = 0.99  # kept singular-value energy for dense adapters when no rank / budget is given


@dataclass
class LoraExportReport:
    """What the exported LoRA costs and how far it is from the SLowED adapter.

    ``rel_error`` / ``rank`` per module; ``nbytes`` of the LoRA tensors vs. ``adapter_nbytes`` of the SLowED adapter
    (``nbytes <= adapter_nbytes`` always); with ``eval_input_ids``: ``logit_kl`` = mean over tokens of
    KL(p_SLowED ‖ p_LoRA) in nats, ``top1_agreement`` = fraction of tokens whose argmax agrees, and ``base_kl`` =
    KL(p_SLowED ‖ p_base) for scale (what dropping the adapter entirely would cost)."""

    out_dir: str
    rel_error: dict[str, float] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    adapter_nbytes: int = 0
    logit_kl: Optional[float] = None
    top1_agreement: Optional[float] = None
    base_kl: Optional[float] = None

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error.values(), default=0.0)

    @property
    def mean_rel_error(self) -> float:
        return sum(self.rel_error.values()) / max(len(self.rel_error), 1)

    @property
    def size_ratio(self) -> float:
        """``nbytes / adapter_nbytes`` (≤ 1)."""
        return self.nbytes / max(self.adapter_nbytes, 1)

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "max_rel_error": self.max_rel_error,
            "mean_rel_error": self.mean_rel_error,
            "nbytes": self.nbytes,
            "adapter_nbytes": self.adapter_nbytes,
            "size_ratio": self.size_ratio,
            "logit_kl": self.logit_kl,
            "top1_agreement": self.top1_agreement,
            "base_kl": self.base_kl,
            "rel_error": self.rel_error,
            "rank": self.rank,
        }


def _load_peft_model(path: str, base_model: Optional[Union[str, nn.Module]]) -> nn.Module:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    config = PeftConfig.from_pretrained(path)
    base = base_model if base_model is not None else config.base_model_name_or_path
    if base is None:
        raise ValueError(
            f"export_as_lora: {path!r} has no base_model_name_or_path in adapter_config.json; pass base_model=..."
        )
    if isinstance(base, str):
        base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(base, path)


def _adapter_nbytes(layer: SLowEDLayer, adapter_name: str) -> int:
    params = [d[adapter_name] for d in (layer.slowed_delta, layer.slowed_A, layer.slowed_B) if adapter_name in d]
    return sum(p.numel() * p.element_size() for p in params)


@dataclass
class _Factor:
    """SVD of one module's ΔW in ``nn.Linear`` layout (out × in)."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    norm2: float
    itemsize: int

    @property
    def cost(self) -> int:  # bytes of one rank-one component (a row of A and a column of B)
        return (self.u.shape[0] + self.vh.shape[1]) * self.itemsize


def _factor(layer: SLowEDLayer, adapter_name: str) -> _Factor:
    delta = layer.get_delta_weight(adapter_name)
    itemsize = delta.element_size()
    delta = delta.detach().float()
    if layer.is_conv1d:
        delta = delta.T
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return _Factor(u, s, vh, float((s**2).sum()), itemsize)


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    cum = torch.cumsum(s.double() ** 2, 0)
    if cum[-1] <= 0:
        return 0
    return min(int(torch.searchsorted(cum / cum[-1], torch.tensor(energy, dtype=cum.dtype)).item()) + 1, len(s))


def _fit_budget(factors: dict[str, _Factor], wanted: dict[str, int], budget: int) -> dict[str, int]:
    """Largest relative-error reduction per byte first (per layer the gains only shrink, so greedy is exact up to the
    last component), never more than ``wanted`` components per layer, total bytes ≤ ``budget``."""
    ranks = dict.fromkeys(factors, 0)
    heap = []
    for name, f in factors.items():
        if wanted[name] > 0 and f.norm2 > 0:
            heap.append((-(float(f.s[0]) ** 2) / f.norm2 / f.cost, name))
    heapq.heapify(heap)
    spent = 0
    while heap:
        _, name = heapq.heappop(heap)
        f = factors[name]
        if spent + f.cost > budget:
            continue  # this layer is full; cheaper components of other layers may still fit
        spent += f.cost
        ranks[name] += 1
        k = ranks[name]
        if k < wanted[name] and k < len(f.s):
            heapq.heappush(heap, (-(float(f.s[k]) ** 2) / f.norm2 / f.cost, name))
    return ranks


def export_as_lora(
    model_or_path: Union[nn.Module, str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    rank: Optional[Union[int, float]] = None,
    adapter_name: str = "default",
    base_model: Optional[Union[str, nn.Module]] = None,
    max_bytes: Optional[int] = None,
    eval_input_ids: Optional[torch.Tensor] = None,
) -> LoraExportReport:
    """Write ``out_dir`` as a vanilla PEFT LoRA (SVD of each ΔW) and report its size and error.

    Args:
        model_or_path: a SLowED ``PeftModel`` or the folder of a saved SLowED adapter.
        rank: int = LoRA rank per module; float in (0, 1] = singular-value energy kept per module. Default: the
            adapter's own rank for low-rank SLowED (exact), 0.99 energy for dense SLowED.
        max_bytes: byte budget for the LoRA tensors; ranks are then chosen across modules by error removed per byte
            (combined with ``rank``, which caps each module). The budget is always capped at the SLowED adapter's own
            size, so the export is never larger than what it replaces.
        eval_input_ids: token ids ``[batch, seq]``; if given, the report has ``logit_kl``, ``top1_agreement`` and
            ``base_kl`` measured on them.
        base_model: base model (or id/path) when ``model_or_path`` is a folder whose config lacks it.

    The lossless alternative is ``model.merge_and_unload()`` (full weights; exact to float rounding).
    """
    from peft import LoraConfig

    model = model_or_path if isinstance(model_or_path, nn.Module) else _load_peft_model(str(model_or_path), base_model)
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer) and adapter_name in m._adapter_names()
    }
    if not layers:
        raise ValueError(f"export_as_lora: the model has no SLowED layers with adapter {adapter_name!r}.")
    if rank is not None and (
        isinstance(rank, bool)
        or not isinstance(rank, (int, float))
        or rank <= 0
        or (isinstance(rank, float) and rank > 1)
    ):
        raise ValueError(f"export_as_lora: rank must be an int >= 1 or a float in (0, 1]; got rank={rank!r}.")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"export_as_lora: max_bytes must be an int >= 0; got max_bytes={max_bytes!r}.")
    if isinstance(rank, int):
        for name, m in layers.items():
            if rank > min(m.in_features, m.out_features):
                raise ValueError(
                    f"export_as_lora: rank={rank} exceeds the smaller dimension of module {name!r} "
                    f"({m.out_features}x{m.in_features}); pass a smaller int, an energy fraction or max_bytes."
                )
    keys = {name: short_name(name) for name in layers}
    with torch.no_grad():
        factors = {name: _factor(m, adapter_name) for name, m in layers.items()}
    wanted = {}
    for name, m in layers.items():
        own = m.r[adapter_name]
        spec = rank if rank is not None else (own if own is not None else DEFAULT_DENSE_ENERGY)
        if max_bytes is not None and rank is None:
            spec = len(factors[name].s)  # a pure byte budget: any rank may be used
        wanted[name] = spec if isinstance(spec, int) else _energy_rank(factors[name].s, spec)
    adapter_nbytes = sum(_adapter_nbytes(m, adapter_name) for m in layers.values())
    budget = adapter_nbytes if max_bytes is None else min(max_bytes, adapter_nbytes)
    ranks = _fit_budget(factors, wanted, budget)

    state, rank_pattern = {}, {}
    dtypes = {name: layers[name].get_base_layer().weight.dtype for name in layers}
    for name, k in ranks.items():
        if k == 0:
            continue
        f = factors[name]
        b = (f.u[:, :k] * f.s[:k]).contiguous()
        a = f.vh[:k].contiguous()
        store = _store_dtype(layers[name], adapter_name, dtypes[name])
        state[f"base_model.model.{keys[name]}.lora_A.weight"] = a.to(store)
        state[f"base_model.model.{keys[name]}.lora_B.weight"] = b.to(store)
        rank_pattern[keys[name]] = k
    if not state:
        raise ValueError(f"export_as_lora: max_bytes={max_bytes} is smaller than one rank-one component of any module.")
    peft_config = model.peft_config[adapter_name]
    config = LoraConfig(
        r=max(rank_pattern.values()),
        lora_alpha=max(rank_pattern.values()),
        target_modules=sorted(rank_pattern),
        rank_pattern=dict(rank_pattern),
        alpha_pattern=dict(rank_pattern),  # alpha == r: scaling 1, the singular values live in B
        lora_dropout=0.0,
        bias="none",
        base_model_name_or_path=peft_config.base_model_name_or_path,
        task_type=peft_config.task_type,
        fan_in_fan_out=any(m.is_conv1d for m in layers.values()),
    )
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(state, os.path.join(out_dir, "adapter_model.safetensors"))

    report = LoraExportReport(out_dir=out_dir, adapter_nbytes=adapter_nbytes)
    report.nbytes = sum(t.numel() * t.element_size() for t in state.values())
    for name, k in ranks.items():
        f = factors[name]
        rest = float((f.s[k:] ** 2).sum())
        report.rel_error[keys[name]] = (rest / f.norm2) ** 0.5 if f.norm2 > 0 else 0.0
        report.rank[keys[name]] = k
    if eval_input_ids is not None:
        _output_error(model, layers, factors, ranks, eval_input_ids, report)
    return report


def _store_dtype(layer: SLowEDLayer, adapter_name: str, base_dtype: torch.dtype) -> torch.dtype:
    """The adapter's own dtype (fp32 for an fp32 adapter on a bf16 base)."""
    for d in (layer.slowed_delta, layer.slowed_A):
        if adapter_name in d:
            return d[adapter_name].dtype
    return base_dtype


@torch.no_grad()
def _output_error(model, layers, factors, ranks, input_ids: torch.Tensor, report: LoraExportReport) -> None:
    """KL(p_SLowED ‖ p_LoRA), top-1 agreement and KL(p_SLowED ‖ p_base) on ``input_ids``, in this process."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    ref = torch.log_softmax(model(input_ids=input_ids).logits.float(), -1)
    with model.disable_adapter():
        base = torch.log_softmax(model(input_ids=input_ids).logits.float(), -1)
        with ExitStack() as stack:
            for name, layer in layers.items():
                k = ranks[name]
                if k == 0:
                    continue
                f = factors[name]
                a, b = f.vh[:k].to(device), (f.u[:, :k] * f.s[:k]).to(device)

                def add_lora(_module, args, output, a=a, b=b):
                    x = args[0]
                    return output + ((x.float() @ a.T) @ b.T).to(output.dtype)

                stack.enter_context(layer.get_base_layer().register_forward_hook(add_lora))
            approx = torch.log_softmax(model(input_ids=input_ids).logits.float(), -1)
    model.train(was_training)

    def kl(logq: torch.Tensor) -> float:
        return float((ref.exp() * (ref - logq)).sum(-1).mean())

    report.logit_kl = kl(approx)
    report.base_kl = kl(base)
    report.top1_agreement = float((ref.argmax(-1) == approx.argmax(-1)).float().mean())
