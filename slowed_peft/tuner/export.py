"""`export_as_lora`: turn a SLowED adapter into a plain PEFT LoRA that loads without this package."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from safetensors.torch import load_file
from torch import nn

from .layer import SLowEDLayer


@dataclass
class LoraExportReport:
    """Approximation error of the exported LoRA: ``‖ΔW − B·A‖_F / ‖ΔW‖_F`` per module, with rank used."""

    out_dir: str
    rel_error: dict[str, float] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error.values(), default=0.0)

    @property
    def mean_rel_error(self) -> float:
        return sum(self.rel_error.values()) / max(len(self.rel_error), 1)

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "max_rel_error": self.max_rel_error,
            "mean_rel_error": self.mean_rel_error,
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


def export_as_lora(
    model_or_path: Union[nn.Module, str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    rank: Optional[Union[int, float]] = None,
    adapter_name: str = "default",
    base_model: Optional[Union[str, nn.Module]] = None,
) -> LoraExportReport:
    """Write ``out_dir`` as a vanilla LoRA (SVD of each ΔW via ``peft``'s ``save_as_lora``) and report its error.

    Args:
        model_or_path: a SLowED ``PeftModel`` or the folder of a saved SLowED adapter.
        rank: int = fixed LoRA rank; float in (0, 1] = singular-value energy kept per layer. Default: the adapter's
            own rank for low-rank SLowED (exact), 0.99 energy for dense SLowED.
        base_model: base model (or id/path) when ``model_or_path`` is a folder whose config lacks it.
    """
    from peft.tuners.lora.conversion import save_as_lora

    model = model_or_path if isinstance(model_or_path, nn.Module) else _load_peft_model(str(model_or_path), base_model)
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer) and adapter_name in m._adapter_names()
    }
    if not layers:
        raise ValueError(f"export_as_lora: the model has no SLowED layers with adapter {adapter_name!r}.")
    if rank is None:
        ranks = {m.r[adapter_name] for m in layers.values()}
        rank = ranks.pop() if len(ranks) == 1 and None not in ranks else 0.99
    if (
        isinstance(rank, bool)
        or not isinstance(rank, (int, float))
        or rank <= 0
        or (isinstance(rank, float) and rank > 1)
    ):
        raise ValueError(f"export_as_lora: rank must be an int >= 1 or a float in (0, 1]; got rank={rank!r}.")
    if isinstance(rank, int):
        for name, m in layers.items():
            if rank > min(m.in_features, m.out_features):
                raise ValueError(
                    f"export_as_lora: rank={rank} exceeds the smaller dimension of module {name!r} "
                    f"({m.out_features}x{m.in_features}); pass a smaller int or an energy fraction such as 0.99."
                )
    out_dir = str(out_dir)
    with torch.no_grad():
        save_as_lora(out_dir, model, rank=rank, adapter_name=adapter_name)
    return _measure(layers, adapter_name, out_dir)


@torch.no_grad()
def _measure(layers: dict[str, SLowEDLayer], adapter_name: str, out_dir: str) -> LoraExportReport:
    state = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    report = LoraExportReport(out_dir=out_dir)
    for name, layer in layers.items():
        key = name.removeprefix("base_model.model.")
        a = state[f"base_model.model.{key}.lora_A.weight"].float()
        b = state[f"base_model.model.{key}.lora_B.weight"].float()
        r = a.shape[0]
        alpha = cfg.get("alpha_pattern", {}).get(key, cfg["lora_alpha"])
        approx = (b @ a) * (alpha / r)
        delta = layer.get_delta_weight(adapter_name).float()
        if layer.is_conv1d:
            delta = delta.T
        report.rel_error[key] = float((delta - approx).norm() / delta.norm().clamp_min(1e-30))
        report.rank[key] = r
    return report
