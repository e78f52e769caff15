"""Low-Entropy Masking: entropy math, dataset annotation, an SFTTrainer collator, and a live-entropy trainer."""

from .annotate import ENTROPY_COLUMN, annotate_entropy, tokenize_like_trl, weights_fingerprint
from .callbacks import SLowEDMetricsCallback, add_slowed_metrics, slowed_metrics
from .collator import EntropyMaskingCollator, MaskingStats
from .config import SLowEDSFTConfig
from .ema import ParameterEMACallback
from .entropy import fused_entropy_head, model_token_entropy, token_entropy
from .selection import low_entropy_mask
from .trainer import SLowEDTrainer


__all__ = [
    "ENTROPY_COLUMN",
    "EntropyMaskingCollator",
    "MaskingStats",
    "ParameterEMACallback",
    "SLowEDMetricsCallback",
    "SLowEDSFTConfig",
    "SLowEDTrainer",
    "add_slowed_metrics",
    "annotate_entropy",
    "fused_entropy_head",
    "low_entropy_mask",
    "model_token_entropy",
    "slowed_metrics",
    "token_entropy",
    "tokenize_like_trl",
    "weights_fingerprint",
]
