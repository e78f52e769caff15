"""`SLowEDModel`: the PEFT tuner that injects SLowED layers into a transformers model."""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from ..utils.checks import check_adapter_name
from .anchor_storage import expand_anchor_bases, share_anchor_bases
from .config import SLowEDConfig
from .layer import SUPPORTED_LAYER_TYPES, Linear, SLowEDLayer, unsupported_layer_error
from .loading import check_keys, prepare_anchor_buffers, rebase_w0_norms
from .merge import collect_merge_losses
from .persist import compress_state_dict, decompress_state_dict, weights_file_hint
from .registration import PREFIX, short_name


class SLowEDModel(BaseTuner):
    """Slow Tuning as a PEFT method: ``W = W0 + ΔW`` with ``ΔW`` scaled by γ and bounded by ``‖ΔW‖ ≤ ρ‖W0‖``.

    Everything else (targeting, ``all-linear``, multiple adapters, ``disable_adapter``, merging, saving) is PEFT's
    ``BaseTuner`` machinery. Created by ``get_peft_model(model, SLowEDConfig(...))`` after ``import slowed_peft``.
    """

    prefix: str = PREFIX
    tuner_layer_cls = SLowEDLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()

    def inject_adapter(self, model: torch.nn.Module, adapter_name: str, *args, **kwargs) -> None:
        """PEFT's injection, after checking that ``adapter_name`` is safe as a folder name (``save_pretrained`` joins
        it to the save directory)."""
        check_adapter_name(adapter_name)
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """PEFT's merge; one warning if rounding to the base dtype lost much of ΔW (see ``tuner/merge.py``)."""
        with collect_merge_losses():
            super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        with collect_merge_losses():
            return super()._unload_and_optionally_merge(*args, **kwargs)

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

    def __init__(self, model, config, adapter_name, *args, **kwargs) -> None:
        super().__init__(model, config, adapter_name, *args, **kwargs)
        from .card import install_card_hook

        install_card_hook()  # PeftModel.save_pretrained then writes SLowED's README.md, not PEFT's template

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection of the adapter's tensors, then ``save_precision``: dense deltas compressed (``persist.py``,
        projected with the float32 bases), then the anchor bases stored once per group, in ``anchor_save_dtype``
        (``anchor_storage.py``)."""
        state = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        state = compress_state_dict(model, config, adapter_name, state)
        return share_anchor_bases(config, adapter_name, state)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """PEFT's remapping plus SLowED's load checks, each naming modules and keys.

        1. shapes: the module and both shapes (instead of torch's error);
        2. keys: every adapter tensor of the model is in the file and vice versa (``loading.check_keys``);
        3. ‖W0‖: the stored norms agree with the base in memory and are replaced by it (``loading.rebase_w0_norms``);
        4. safety anchor: each stored basis is finite and orthonormal, and sizes its layer's buffer (its rank varies).
        ``loading.lenient_load`` relaxes 2 and 3. A compressed (``save_precision="4bit"``) adapter is first turned back
        into dense deltas (``persist.decompress_state_dict``), and shared or bf16 anchor bases into one float32 basis
        per layer (``anchor_storage.expand_anchor_bases``)."""
        where = weights_file_hint(getattr(config, "_weights_folder", None))
        state_dict = decompress_state_dict(model, config, state_dict, where)
        state_dict = expand_anchor_bases(state_dict, where)
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        prepare_anchor_buffers(model, remapped, adapter_name, where)
        own = model.state_dict()
        mismatches = [
            f"module {short_name(key.rsplit('.' + PREFIX, 1)[0])!r} ({key.rsplit('.', 2)[-2]}): "
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
        source = f"base_model_name_or_path={config.base_model_name_or_path!r}"
        check_keys(own, remapped, adapter_name, source)
        rebase_w0_norms(model, remapped, adapter_name, source)
        return remapped

    def add_weighted_adapter(self, adapters, weights, adapter_name, *args, **kwargs):
        """Not supported for SLowED adapters: raises ``ValueError`` saying why and what to do instead.

        Each SLowED adapter bounds its own delta, ``‖ΔW_a‖ ≤ ρ_a‖W0‖``; a weighted sum of deltas is none of them and
        would drift up to ``Σ|w_a|·ρ_a``, and PEFT's LoRA recipe (concatenating or SVD-ing low-rank factors) has no
        trust region to keep. (Without this method PEFT would fail with a misleading ``AttributeError``.)"""
        raise ValueError(
            f"add_weighted_adapter({list(adapters) if adapters is not None else adapters!r}, ..., {adapter_name!r}) is "
            "not supported for SLowED adapters: each adapter's trust region bounds its own delta (‖ΔW‖ ≤ ρ‖W0‖), "
            "a weighted sum of deltas is no SLowED adapter and could drift up to Σ|w|·ρ. Alternatives: activate "
            "several adapters together (base_model.set_adapter([...]); their drifts add up, to at most Σρ), merge "
            "them one after another (merge_and_unload), or train one adapter on the combined data."
        )
