"""`SLowEDModel`: the PEFT tuner that injects SLowED layers into a transformers model."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .config import SLowEDConfig
from .layer import SUPPORTED_LAYER_TYPES, Linear, SLowEDLayer, unsupported_layer_error
from .registration import PREFIX


class SLowEDModel(BaseTuner):
    """Slow Tuning as a PEFT method: ``W = W0 + ΔW`` with ``ΔW`` scaled by γ and bounded by ``‖ΔW‖ ≤ ρ‖W0‖``.

    Everything else (targeting, ``all-linear``, multiple adapters, ``disable_adapter``, merging, saving) is PEFT's
    ``BaseTuner`` machinery. Created by ``get_peft_model(model, SLowEDConfig(...))`` after ``import slowed_peft``.
    """

    prefix: str = PREFIX
    tuner_layer_cls = SLowEDLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()

    def _create_and_replace(
        self,
        config: SLowEDConfig,
        adapter_name: str,
        target: torch.nn.Module,
        target_name: str,
        parent: torch.nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        if current_key is None:
            raise ValueError("Current key shouldn't be `None`.")
        if isinstance(target, SLowEDLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = self._create_new_module(config, adapter_name, target, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trainable until set_adapter
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: SLowEDConfig, adapter_name: str, target: torch.nn.Module, key: str = ""):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, SUPPORTED_LAYER_TYPES):
            err = unsupported_layer_error(base)
            raise ValueError(f"Module {key!r}: {err}") from None
        return Linear(target, adapter_name, config)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """PEFT's remapping plus a shape check that names the module and both shapes (instead of torch's error)."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        own = model.state_dict()
        mismatches = [
            f"module {key.rsplit('.' + PREFIX, 1)[0].removeprefix('base_model.model.')!r} ({key.rsplit('.', 2)[-2]}): "
            f"{tuple(remapped[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the model"
            for key, tensor in own.items()
            if key in remapped and tuple(remapped[key].shape) != tuple(tensor.shape)
        ]
        if mismatches:
            more = f" (and {len(mismatches) - 3} more)" if len(mismatches) > 3 else ""
            raise ValueError(
                "The adapter does not fit this base model: " + "; ".join(mismatches[:3]) + more + ". Was it trained "
                f"on another base model (adapter_config.json: base_model_name_or_path="
                f"{config.base_model_name_or_path!r})?"
            )
        return remapped
