"""`SLowEDSFTConfig`: TRL's ``SFTConfig`` plus the Low-Entropy Masking settings of ``SLowEDTrainer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from trl import SFTConfig

from .selection import validate_masking_args


ENTROPY_SOURCES = ("live", "initial")
ENTROPY_NORMALIZATIONS = ("kept", "labels")


@dataclass
class SLowEDSFTConfig(SFTConfig):
    """Configures **Low-Entropy Masking**, the data half of SLowED, on top of TRL's [`~trl.SFTConfig`].

    Label tokens that the student already predicts with low entropy are dropped from the loss by
    [`SLowEDTrainer`]. With neither `entropy_threshold` nor `entropy_quantile` set, no token is masked (plain SFT,
    still with drift logs). Slow Tuning, the weight-space half, is configured by `SLowEDConfig` (`peft_config=`).
    Every other argument is `SFTConfig`'s.

    Args:
        entropy_threshold (`float`, *optional*, defaults to `None`):
            Drop label tokens whose entropy is below this many nats (finite, >= 0). Exactly one of threshold /
            quantile.
        entropy_quantile (`float`, *optional*, defaults to `None`):
            Drop the lowest fraction, in (0, 1), of each (micro-)batch's label tokens by entropy.
        entropy_min_kept (`int`, defaults to `1`):
            Never drop all labels of an example: keep this many of its highest-entropy ones.
        entropy_source (`str`, defaults to `"live"`):
            `"live"`: entropy of the model being trained, from the same forward pass (no extra cost).
            `"initial"`: entropy of the model before training, computed once for the prepared dataset and applied
            by [`EntropyMaskingCollator`].
        entropy_normalization (`str`, defaults to `"kept"`):
            What the masked loss is divided by: `"kept"`, the number of kept label tokens (the mean over kept tokens),
            or `"labels"`, the number of all label tokens (masked tokens only leave the gradient, the rest keep their
            weight). `"labels"` needs `entropy_source="live"`.
        log_drift (`bool`, defaults to `True`):
            Log `slowed/drift_max` / `slowed/drift_mean` when the model carries SLowED adapters.

    Example:

    ```py
    >>> from slowed_peft import SLowEDSFTConfig
    >>> args = SLowEDSFTConfig(output_dir="out", entropy_quantile=0.3, use_cpu=True, bf16=False)
    >>> args.masking_enabled, args.entropy_source
    (True, 'live')
    ```
    """

    entropy_threshold: Optional[float] = field(
        default=None, metadata={"help": "Low-Entropy Masking: drop label tokens with entropy < this (nats)."}
    )
    entropy_quantile: Optional[float] = field(
        default=None, metadata={"help": "Low-Entropy Masking: drop this lowest fraction of label tokens by entropy."}
    )
    entropy_min_kept: int = field(
        default=1, metadata={"help": "Keep at least this many (highest-entropy) labels per example."}
    )
    entropy_source: Literal["live", "initial"] = field(
        default="live", metadata={"help": "Whose entropy masks: 'live' (current model) or 'initial' (before training)."}
    )
    entropy_normalization: Literal["kept", "labels"] = field(
        default="kept", metadata={"help": "Divide the masked loss by the kept ('kept') or all ('labels') label tokens."}
    )
    log_drift: bool = field(default=True, metadata={"help": "Log weight drift of SLowED adapters."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.entropy_source not in ENTROPY_SOURCES:
            raise ValueError(f"`entropy_source` must be one of {ENTROPY_SOURCES}; got {self.entropy_source!r}.")
        if self.entropy_normalization not in ENTROPY_NORMALIZATIONS:
            raise ValueError(
                f"`entropy_normalization` must be one of {ENTROPY_NORMALIZATIONS}; got {self.entropy_normalization!r}."
            )
        if self.entropy_normalization == "labels" and self.entropy_source != "live":
            raise ValueError(
                "entropy_normalization='labels' needs entropy_source='live' (the 'initial' collator removes the "
                "masked labels before the loss can count them)."
            )
        if self.masking_enabled:
            validate_masking_args(
                self.entropy_threshold,
                self.entropy_quantile,
                self.entropy_min_kept,
                "SLowEDSFTConfig (entropy_threshold / entropy_quantile)",
            )
        elif not isinstance(self.entropy_min_kept, int) or self.entropy_min_kept < 0:
            raise ValueError(f"`entropy_min_kept` must be an integer >= 0; got {self.entropy_min_kept!r}.")

    @property
    def masking_enabled(self) -> bool:
        """Whether a threshold or a quantile is set, i.e. whether any token can be masked."""
        return self.entropy_threshold is not None or self.entropy_quantile is not None
