"""`SLowEDConfig`: the PEFT configuration of Slow Tuning (scaled, trust-region-bounded weight deltas)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from .anchor_storage import ANCHOR_SAVE_DTYPES
from .compress import SAVE_PRECISIONS
from .registration import PEFT_TYPE_NAME, ensure_peft_type


DRIFT_GRANULARITIES = ("matrix", "row")
ANCHOR_TOKENS = ("prompt", "prompt+response")


def _is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` in Python, but never a meaningful γ or ρ)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SLowEDConfig(PeftConfig):
    """Configures **Slow Tuning**, the weight-space half of SLowED, as a PEFT adapter (a [`SLowEDModel`]).

    Every targeted layer computes with `W = W0 + ΔW`, where `ΔW = γ·D` (`γ = slow_factor`) and `D` is a dense
    trainable matrix (`r=None`) or `B @ A` of rank `r`. With `max_drift = ρ` the delta is rescaled in the forward pass
    so that `‖ΔW‖ ≤ ρ‖W0‖` (Frobenius per matrix, or per output row) holds after every step and in merged weights.
    Low-Entropy Masking, the other half, is configured by `SLowEDSFTConfig`.

    Args:
        r (`int`, *optional*, defaults to `None`):
            `None` for a dense, full-rank delta (like full fine-tuning); an integer >= 1 for a low-rank `B @ A`.
        slow_factor (`float`, defaults to `0.1`):
            γ in (0, 1]. Under Adam this is exactly a learning-rate scale of γ (see README "Method"); the trust
            region is what really bounds the drift.
        max_drift (`float`, *optional*, defaults to `0.05`):
            ρ > 0, the hard trust region `‖W − W0‖ ≤ ρ‖W0‖`; `None` disables it.
        drift_granularity (`str`, defaults to `"matrix"`):
            `"matrix"` bounds each weight matrix, `"row"` bounds each output unit's row.
        target_modules (`Optional[Union[list[str], str]]`, defaults to `None`):
            Module names (exact or suffix match) or a regex to wrap. `"all-linear"` targets every `nn.Linear` /
            `Conv1D` except the output layer; `None` uses PEFT's per-architecture defaults (LoRA's).
        exclude_modules (`Optional[Union[list[str], str]]`, defaults to `None`):
            Module names or a regex to leave out.
        layers_to_transform (`Union[list[int], int]`, *optional*, defaults to `None`):
            Only wrap the layers with these indices.
        layers_pattern (`Optional[Union[list[str], str]]`, defaults to `None`):
            Name of the layer list (e.g. `"layers"` or `"h"`), used together with `layers_to_transform`.
        init_weights (`bool`, defaults to `True`):
            `True` starts from `ΔW = 0` (outputs equal the base model's bit for bit); `False` draws a random
            non-zero delta (testing only).
        modules_to_save (`list[str]`, *optional*, defaults to `None`):
            Modules, apart from the SLowED layers, trained in full and saved with the adapter.
        trainable_token_indices (`Union[list[int], dict[str, list[int]]]`, *optional*, defaults to `None`):
            Token ids whose embedding rows are trained, as in LoRA.
        save_precision (`str`, defaults to `"fp32"`):
            How `save_pretrained` stores a dense delta: `"fp32"` stores `D` exactly; `"4bit"` stores the effective
            `ΔW` in at most 4 bits per entry (codes + per-row scales, see `tuner/compress.py`), about 1/4 of a bf16
            base's bytes for the wrapped layers, with the trust region holding on the reconstructed delta. Loading
            recognises either format; low-rank adapters are always stored exactly.
        anchor_rank (`int`, *optional*, defaults to `None`):
            The **safety anchor**: protect (at most) this many input directions per layer. Each layer gets a frozen
            orthonormal basis `Q` of the top eigenvectors of its inputs' second moment on anchor prompts
            ([`fit_anchor`]) and computes with `ΔW = c·γ·(D − D Q Qᵀ)` (low rank: `B (A − A Q Qᵀ)`), so `ΔW·x = 0`
            for every input `x` in span(`Q`): the layer is unchanged where the anchor prompts live. `None` (and
            `anchor_energy=None`): no anchor, the tuner as without this field.
        anchor_energy (`float`, *optional*, defaults to `None`):
            In (0, 1]: per layer, the fewest directions holding this fraction of the anchor inputs' second-moment
            energy (capped by `anchor_rank` when both are set; directions with no energy are never taken).
        anchor_tokens (`str`, defaults to `"prompt"`):
            Which tokens of the anchor set count: `"prompt"` (the chat-formatted prompts) or `"prompt+response"`
            (also the model's own greedy responses to them).
        anchor_save_dtype (`str`, defaults to `"fp32"`):
            How `save_pretrained` stores the anchor bases (always once per group of layers reading the same input,
            e.g. q/k/v; see `tuner/anchor_storage.py`): `"fp32"` exactly; `"bf16"` in half the bytes, re-orthonormalised
            on load, so the guarantee holds for the loaded basis, whose span differs from the trained one by about
            2^-9 rad: outputs on the anchor prompts move slightly. The model in memory keeps float32 bases either way.

    Example:

    ```py
    >>> import slowed_peft  # registers the SLOWED PEFT type
    >>> from peft import get_peft_model
    >>> from transformers import AutoModelForCausalLM, LlamaConfig
    >>> model = AutoModelForCausalLM.from_config(LlamaConfig(
    ...     vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    >>> config = slowed_peft.SLowEDConfig(target_modules="all-linear", slow_factor=0.1, max_drift=0.05)
    >>> peft_model = get_peft_model(model, config)
    >>> peft_model.peft_config["default"].peft_type
    <PeftType.SLOWED: 'SLOWED'>
    >>> slowed_peft.weight_drift(peft_model).max  # ΔW = 0 at initialisation
    0.0
    ```
    """

    r: Optional[int] = field(default=None, metadata={"help": "None: dense delta; int: rank of B @ A."})
    slow_factor: float = field(default=0.1, metadata={"help": "Slow factor γ in (0, 1]: ΔW = γ·D."})
    max_drift: Optional[float] = field(
        default=0.05, metadata={"help": "Trust region ρ > 0: ‖W − W0‖ ≤ ρ‖W0‖ always; None disables it."}
    )
    drift_granularity: Literal["matrix", "row"] = field(
        default="matrix", metadata={"help": "Where the trust region applies: 'matrix' or 'row' (per output unit)."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names or regex to wrap; 'all-linear' for every linear layer but the output."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or regex to exclude."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only wrap layers with these indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list, used with layers_to_transform (e.g. 'layers')."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: ΔW = 0 at start. False: random non-zero delta (tests only)."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter."}
    )
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None, metadata={"help": "Token ids whose embedding rows are trained (as in LoRA)."}
    )

    save_precision: Literal["fp32", "4bit"] = field(
        default="fp32",
        metadata={"help": "Dense deltas on save: 'fp32' (exact) or '4bit' (<= 4 bits per entry, trust region kept)."},
    )

    anchor_rank: Optional[int] = field(
        default=None, metadata={"help": "Safety anchor: input directions protected per layer (None: no anchor)."}
    )
    anchor_energy: Optional[float] = field(
        default=None, metadata={"help": "Safety anchor: protect the directions holding this share of input energy."}
    )
    anchor_tokens: Literal["prompt", "prompt+response"] = field(
        default="prompt", metadata={"help": "Tokens the anchor is fitted on: 'prompt' or 'prompt+response'."}
    )
    anchor_save_dtype: Literal["fp32", "bf16"] = field(
        default="fp32", metadata={"help": "Anchor bases on save: 'fp32' (exact) or 'bf16' (half the bytes)."}
    )

    @property
    def anchored(self) -> bool:
        """Whether this adapter has a safety anchor (``anchor_rank`` or ``anchor_energy`` set)."""
        return self.anchor_rank is not None or self.anchor_energy is not None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type(PEFT_TYPE_NAME)
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, set(value))
        self._validate()

    def _validate(self) -> None:
        if self.r is not None:
            if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
                raise ValueError(f"`r` must be None (dense delta) or an integer >= 1; got r={self.r!r}.")
        if not _is_real(self.slow_factor) or not (0.0 < float(self.slow_factor) <= 1.0):
            raise ValueError(f"`slow_factor` must be a number in (0, 1]; got slow_factor={self.slow_factor!r}.")
        if self.max_drift is not None:
            if not _is_real(self.max_drift) or not (0.0 < float(self.max_drift) < math.inf):
                raise ValueError(
                    f"`max_drift` must be a finite number > 0, or None to disable the trust region; got "
                    f"max_drift={self.max_drift!r}."
                )
        if self.drift_granularity not in DRIFT_GRANULARITIES:
            raise ValueError(
                f"`drift_granularity` must be one of {DRIFT_GRANULARITIES}; got "
                f"drift_granularity={self.drift_granularity!r}."
            )
        if self.save_precision not in SAVE_PRECISIONS:
            raise ValueError(
                f"`save_precision` must be one of {SAVE_PRECISIONS}; got save_precision={self.save_precision!r}."
            )
        if self.anchor_rank is not None:
            if isinstance(self.anchor_rank, bool) or not isinstance(self.anchor_rank, int) or self.anchor_rank < 1:
                raise ValueError(
                    f"`anchor_rank` must be None or an integer >= 1; got anchor_rank={self.anchor_rank!r}."
                )
        if self.anchor_energy is not None:
            if not _is_real(self.anchor_energy) or not (0.0 < float(self.anchor_energy) <= 1.0):
                raise ValueError(
                    f"`anchor_energy` must be None or a number in (0, 1]; got anchor_energy={self.anchor_energy!r}."
                )
        if self.anchor_tokens not in ANCHOR_TOKENS:
            raise ValueError(
                f"`anchor_tokens` must be one of {ANCHOR_TOKENS}; got anchor_tokens={self.anchor_tokens!r}."
            )
        if self.anchor_save_dtype not in ANCHOR_SAVE_DTYPES:
            raise ValueError(
                f"`anchor_save_dtype` must be one of {ANCHOR_SAVE_DTYPES}; got "
                f"anchor_save_dtype={self.anchor_save_dtype!r}."
            )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str (regex).")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """PEFT's save; a base that is a local copy of a Hub model recording its id (the embedded models of
        ``slowed_peft.base_models``) is written as that Hub id, so the shared adapter does not name a local path."""
        from .persist import hub_id_of

        local = self.base_model_name_or_path
        hub_id = hub_id_of(local)
        if hub_id is None:
            return super().save_pretrained(save_directory, **kwargs)
        self.base_model_name_or_path = hub_id
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            self.base_model_name_or_path = local

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """Load the config; for a local adapter folder also check its safetensors file before PEFT reads it."""
        from ..utils.checks import check_adapter_weights_file

        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        if os.path.isdir(folder):
            check_adapter_weights_file(folder)
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if os.path.isdir(folder):
            config._weights_folder = folder  # not a field: never saved; names the file in load errors
        return config
