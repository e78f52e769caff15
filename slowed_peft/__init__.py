"""slowed_peft: SLowED (Slow Tuning + Low-Entropy Masking) for safe chain-of-thought distillation, as a PEFT method.

``import slowed_peft`` registers the ``SLOWED`` PEFT type (in :mod:`slowed_peft.tuner`; the only import-time effect),
so ``get_peft_model(model, SLowEDConfig(...))``, ``PeftModel.from_pretrained`` and
``AutoPeftModelForCausalLM.from_pretrained`` work for SLowED adapters.
The TRL-facing names (collator, trainer, entropy helpers) and ``anchor_dataloader`` (data layer) load lazily, so
the import stays light for inference.
"""

from importlib import import_module
from typing import Any

from .tuner import (
    SLOWED,
    AnchorReport,
    Linear,
    SLowEDConfig,
    SLowEDLayer,
    SLowEDModel,
    fit_anchor,
    get_anchor_state_dict,
    initialize_anchor_weights,
    register_slowed,
)
from .tuner.drift import WeightDrift, weight_drift
from .tuner.export import LoraExportReport, export_as_lora


__version__ = "0.1.0"

PeftTypeSLOWED = SLOWED  # importing .tuner registered it

_LAZY = {
    "EntropyMaskingCollator": "masking",
    "SLowEDMetricsCallback": "masking",
    "SLowEDSFTConfig": "masking",
    "SLowEDTrainer": "masking",
    "add_slowed_metrics": "masking",
    "anchor_dataloader": "data.anchor_batches",
    "annotate_entropy": "masking",
    "token_entropy": "masking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slowed_peft' has no attribute {name!r}")


__all__ = [
    "AnchorReport",
    "EntropyMaskingCollator",
    "Linear",
    "LoraExportReport",
    "SLowEDConfig",
    "SLowEDLayer",
    "SLowEDMetricsCallback",
    "SLowEDModel",
    "SLowEDSFTConfig",
    "SLowEDTrainer",
    "WeightDrift",
    "add_slowed_metrics",
    "anchor_dataloader",
    "annotate_entropy",
    "export_as_lora",
    "fit_anchor",
    "get_anchor_state_dict",
    "initialize_anchor_weights",
    "register_slowed",
    "token_entropy",
    "weight_drift",
]
