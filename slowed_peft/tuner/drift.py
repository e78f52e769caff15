"""`weight_drift`: how far the SLowED-adapted weights are from the initial weights, ‖W − W0‖ / ‖W0‖."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layer import SLowEDLayer, full_tensor
from .registration import short_name


class WeightDrift(dict):
    """``{module_name: ‖W − W0‖_F / ‖W0‖_F}`` with aggregates ``.max``, ``.mean`` and ``.argmax``.

    ``.row_max`` is the largest per-row relative drift (what a ``drift_granularity="row"`` trust region bounds).
    """

    max: float
    mean: float
    argmax: Optional[str]
    row_max: float

    def as_metrics(self, prefix: str = "slowed/") -> dict[str, float]:
        """Flat metrics for trainer logs: ``{prefix}drift_max``, ``{prefix}drift_mean``, ``{prefix}drift_row_max``."""
        return {
            f"{prefix}drift_max": self.max,
            f"{prefix}drift_mean": self.mean,
            f"{prefix}drift_row_max": self.row_max,
        }


@torch.no_grad()
def weight_drift(model: nn.Module, adapter_name: Optional[str] = None) -> WeightDrift:
    """Relative drift of every SLowED-wrapped weight for ``adapter_name`` (default: the active adapter).

    Works on a ``PeftModel``, on its ``base_model`` or on a model with injected SLowED layers. Raises ``ValueError``
    if the model carries no SLowED layer, so a wrong model is never reported as "no drift".
    """
    result = WeightDrift()
    rows = []
    found_layer = False
    for name, module in model.named_modules():
        if not isinstance(module, SLowEDLayer):
            continue
        found_layer = True
        names = [adapter_name] if adapter_name is not None else list(module.active_adapters)
        delta = None
        for a in names:
            if a in module._adapter_names():
                d = module.get_delta_weight(a).float()
                delta = d if delta is None else delta + d
        if delta is None:
            continue
        w = full_tensor(module.get_base_layer().weight).float()
        if module.merged:  # the base weight currently holds W0 + ΔW
            w = w - delta
        row_dim = 0 if module.is_conv1d else 1
        w0_norm = w.norm().clamp_min(1e-30)
        result[short_name(name)] = float(delta.norm() / w0_norm)
        rows.append(float((delta.norm(dim=row_dim) / w.norm(dim=row_dim).clamp_min(1e-30)).max()))
    if not found_layer:
        raise ValueError(
            f"weight_drift: {type(model).__name__} has no SLowED layers; wrap it with "
            "get_peft_model(model, SLowEDConfig(...)) first."
        )
    if not result:
        raise ValueError(f"weight_drift: no SLowED layer holds adapter {adapter_name!r}.")
    values = list(result.values())
    result.max = max(values)
    result.mean = sum(values) / len(values)
    result.argmax = max(result, key=result.get)
    result.row_max = max(rows)
    return result
