"""slowed_peft: SLowED (Slow Tuning + Low-Entropy Masking) for safe chain-of-thought distillation, as a PEFT method.

``import slowed_peft`` registers the ``SLOWED`` PEFT type, so ``get_peft_model(model, SLowEDConfig(...))``,
``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM.from_pretrained`` work for SLowED adapters.
"""

from ._registration import register_slowed
from .tuner import Linear, SLowEDConfig, SLowEDLayer, SLowEDModel
from .tuner.drift import WeightDrift, weight_drift
from .tuner.export import LoraExportReport, export_as_lora

__version__ = "0.1.0"

PeftTypeSLOWED = register_slowed()

__all__ = [
    "Linear",
    "LoraExportReport",
    "SLowEDConfig",
    "SLowEDLayer",
    "SLowEDModel",
    "WeightDrift",
    "export_as_lora",
    "register_slowed",
    "weight_drift",
]
