"""`SLowEDSFTConfig`: TRL's ``SFTConfig`` plus the Low-Entropy Masking settings of ``SLowEDTrainer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from trl import SFTConfig

from .selection import validate_masking_args

ENTROPY_SOURCES = ("live", "initial")


@dataclass
class SLowEDSFTConfig(SFTConfig):
    """``SFTConfig`` with Low-Entropy Masking. With neither threshold nor quantile set, no token is masked.

    Args:
        entropy_threshold: drop label tokens whose entropy is below this many nats.
        entropy_quantile: drop the lowest fraction of each (micro-)batch's label tokens by entropy.
        entropy_min_kept: never drop all labels of an example; keep this many highest-entropy ones.
        entropy_source: ``"live"`` — entropy of the model being trained, from the same forward pass (no extra
            cost); ``"initial"`` — entropy of the model before training, computed once for the prepared dataset and
            applied by ``EntropyMaskingCollator``.
        log_drift: log ``slowed/drift_max`` / ``slowed/drift_mean`` when the model carries SLowED adapters.
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
    log_drift: bool = field(default=True, metadata={"help": "Log weight drift of SLowED adapters."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.entropy_source not in ENTROPY_SOURCES:
            raise ValueError(f"`entropy_source` must be one of {ENTROPY_SOURCES}; got {self.entropy_source!r}.")
        if self.masking_enabled:
            validate_masking_args(self.entropy_threshold, self.entropy_quantile, self.entropy_min_kept,
                                  "SLowEDSFTConfig (entropy_threshold / entropy_quantile)")
        elif not isinstance(self.entropy_min_kept, int) or self.entropy_min_kept < 0:
            raise ValueError(f"`entropy_min_kept` must be an integer >= 0; got {self.entropy_min_kept!r}.")

    @property
    def masking_enabled(self) -> bool:
        return self.entropy_threshold is not None or self.entropy_quantile is not None
