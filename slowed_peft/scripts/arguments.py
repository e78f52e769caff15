"""Dataclass arguments of the SLowED recipes and how an *arm* turns them into adapter and masking settings.

Arms (one flag, ``--arm``) — every arm trains the same dense delta on the same layers, so they are comparable:

    sft     plain CoT distillation: γ = 1, no trust region, no masking   (= full fine-tuning of the targeted layers)
    slow    Slow Tuning only:       γ = slow_factor, ρ = max_drift, no masking
    lem     Low-Entropy Masking only: γ = 1, no trust region, masking
    slowed  SLowED:                 Slow Tuning + Low-Entropy Masking
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from transformers.utils import logging
from trl import ScriptArguments

from ..masking.config import SLowEDSFTConfig
from ..tuner.config import SLowEDConfig

logger = logging.get_logger(__name__)

ARMS = ("sft", "slow", "lem", "slowed")
DEFAULT_ENTROPY_THRESHOLD = 0.5  # nats; used when a masking arm is chosen without threshold or quantile


@dataclass
class SLowEDScriptArguments(ScriptArguments):
    """Data arguments: ``dataset_name`` is a built-in CoT source (demo, gsm8k, svamp, cqa, bbh), a Hub id or a file."""

    dataset_name: Optional[str] = field(
        default="demo", metadata={"help": "CoT source: demo | gsm8k | svamp | cqa | bbh | Hub id | local file."}
    )
    dataset_path: Optional[str] = field(
        default=None, metadata={"help": "File or folder for gsm8k/svamp/cqa/bbh (default: $SLOWED_DATA_DIR)."}
    )
    dataset_limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N training rows."})
    eval_limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N eval rows."})
    conversational: bool = field(
        default=True, metadata={"help": "Chat-format rows (prompt/completion messages) for instruct models."}
    )


@dataclass
class SLowEDArguments:
    """Which arm to train and the Slow Tuning adapter's settings (prefixed so they never clash with TRL's fields)."""

    arm: Literal["sft", "slow", "lem", "slowed"] = field(
        default="slowed", metadata={"help": "sft | slow (Slow Tuning only) | lem (masking only) | slowed (both)."}
    )
    slowed_r: Optional[int] = field(default=None, metadata={"help": "None: dense delta; int: low-rank rank."})
    slow_factor: float = field(default=0.1, metadata={"help": "γ in (0, 1] (slow and slowed arms)."})
    max_drift: Optional[float] = field(
        default=0.05, metadata={"help": "Trust region ρ: ‖W − W0‖ ≤ ρ‖W0‖ (slow and slowed arms); None: off."}
    )
    drift_granularity: Literal["matrix", "row"] = field(default="matrix", metadata={"help": "matrix | row."})
    slowed_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to wrap ('all-linear' or names)."}
    )

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"`arm` must be one of {ARMS}; got arm={self.arm!r}.")


def peft_config_for_arm(args: SLowEDArguments) -> SLowEDConfig:
    """The adapter of an arm: bounded (γ, ρ) for slow/slowed, unconstrained (γ = 1, ρ = None) for sft/lem."""
    slow = args.arm in ("slow", "slowed")
    targets = args.slowed_target_modules
    target_modules = "all-linear" if targets in (["all-linear"], "all-linear") else list(targets)
    return SLowEDConfig(
        r=args.slowed_r,
        slow_factor=args.slow_factor if slow else 1.0,
        max_drift=args.max_drift if slow else None,
        drift_granularity=args.drift_granularity,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )


def apply_arm_to_training_args(args: SLowEDArguments, training_args: SLowEDSFTConfig) -> SLowEDSFTConfig:
    """Switch Low-Entropy Masking on (lem/slowed) or off (sft/slow) in the trainer config, in place."""
    masks = args.arm in ("lem", "slowed")
    if masks and not training_args.masking_enabled:
        logger.info(f"arm={args.arm}: no entropy_threshold/quantile given, using {DEFAULT_ENTROPY_THRESHOLD} nats.")
        training_args.entropy_threshold = DEFAULT_ENTROPY_THRESHOLD
    if not masks and training_args.masking_enabled:
        logger.warning(f"arm={args.arm} trains without Low-Entropy Masking; ignoring entropy_threshold/quantile.")
        training_args.entropy_threshold = training_args.entropy_quantile = None
    return training_args
