"""Dataclass arguments of the SLowED scripts and the arms: the one place that says what each arm trains.

An arm is a row of :data:`ARMS` — which adapter wraps the model (or none), whether Slow Tuning bounds it, whether
Low-Entropy Masking drops tokens. :func:`peft_config_for_arm` and :func:`apply_arm_to_training_args` read that row, and
:func:`slowed_peft.scripts.training.train_arm` trains it; adding an arm is adding a row (and, for a new kind of adapter,
its builder in :data:`ADAPTERS`).

    sft     plain CoT distillation: γ = 1, no trust region, no masking   (= full fine-tuning of the targeted layers)
    slow    Slow Tuning only:       γ = slow_factor, ρ = max_drift, no masking
    lem     Low-Entropy Masking only: γ = 1, no trust region, masking
    slowed  SLowED:                 Slow Tuning + Low-Entropy Masking
    full    every weight, no adapter, no masking (how ``slowed-align`` builds the aligned student)

and the baselines a user would pick instead of Slow Tuning (``slowed-frontier`` compares them at matched learning):

    lora    PEFT LoRA, no masking: TRL's ``lora_r`` / ``lora_alpha`` / ``lora_dropout`` / ``lora_target_modules``
            in the recipe (TRL's ``ModelConfig``), else r = 16, alpha = 32, no dropout, all-linear
    ema     sft, evaluated and saved as the parameter-space EMA of its weights (decay ema_decay)
    l2sp    sft with decoupled weight decay ``l2sp_strength`` on the dense delta D (pulls W toward W0)
    replay  sft with ``replay_fraction`` of refusal rows (AdvBench train part) mixed into the distillation data
    corda   PEFT LoRA initialised with CorDA's knowledge-preserved mode (KPM) on the anchor prompts

and the safety anchor (Slow Tuning *where it matters*):

    anchored  sft (γ = 1, SFT's own learning rate) with the delta kept out of the input directions of anchor
              prompts (``anchor_source``: benign requests, harmful prompts, the training prompts, the bare chat
              template, or random directions as a control), ``anchor_rank`` / ``anchor_energy`` per layer

All but ``full`` and ``lora`` train the same dense delta on the same layers, so they are comparable under one budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft import PeftConfig
from transformers.utils import logging
from trl import ModelConfig, ScriptArguments

from ..masking.config import SLowEDSFTConfig
from ..tuner.config import SLowEDConfig


logger = logging.get_logger(__name__)

DEFAULT_ENTROPY_THRESHOLD = 0.5  # nats; used when a masking arm is chosen without threshold or quantile


@dataclass(frozen=True)
class Arm:
    """What an arm trains: ``adapter`` (a key of :data:`ADAPTERS`; None: all weights), ``slow``, ``masks``."""

    help: str
    adapter: Optional[str] = "slowed"
    slow: bool = False
    masks: bool = False
    ema: bool = False
    l2sp: bool = False
    anchor: bool = False
    replay: bool = False
    corda: bool = False


ARMS: dict[str, Arm] = {
    "sft": Arm("plain distillation (γ = 1, no trust region, no masking)"),
    "slow": Arm("Slow Tuning only (γ = slow_factor, ρ = max_drift)", slow=True),
    "lem": Arm("Low-Entropy Masking only", masks=True),
    "slowed": Arm("Slow Tuning + Low-Entropy Masking", slow=True, masks=True),
    "full": Arm("all weights, no adapter, no masking", adapter=None),
    "lora": Arm("PEFT LoRA (TRL's lora_r, lora_alpha, ...), no masking", adapter="lora"),
    "ema": Arm("plain distillation, the parameter-space EMA of the weights evaluated and saved", ema=True),
    "l2sp": Arm("plain distillation with weight decay l2sp_strength on the delta (toward W0)", l2sp=True),
    "anchored": Arm(
        "plain distillation with the safety anchor (delta kept out of the anchor prompts' inputs)", anchor=True
    ),
    "replay": Arm("plain distillation with replay_fraction refusal rows mixed into the data", replay=True),
    "corda": Arm(
        "PEFT LoRA with CorDA knowledge-preserved (KPM) initialisation on the anchor prompts", "lora", corda=True
    ),
}
ANCHOR_SOURCES = ("benign", "harmful", "train", "template", "random")
ArmName = Literal[tuple(ARMS)]  # type: ignore[valid-type]  # the CLI choices of --arm are the rows of ARMS


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

    arm: ArmName = field(
        default="anchored",
        metadata={
            "help": "What to train. Default: anchored (the recommended path: plain distillation with the safety "
            "anchor); slowed: the paper's SLowED (Slow Tuning + Low-Entropy Masking). "
            + " | ".join(f"{name}: {arm.help}" for name, arm in ARMS.items())
            + "."
        },
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
    ema_decay: float = field(default=0.95, metadata={"help": "EMA decay per optimizer step, in [0, 1) (ema arm)."})
    l2sp_strength: float = field(
        default=400.0, metadata={"help": "Decoupled weight decay on the delta (l2sp arm): W → W0 at lr·this per step."}
    )
    anchor_rank: Optional[int] = field(
        default=64, metadata={"help": "Safety anchor (anchored arm): input directions protected per layer."}
    )
    anchor_energy: Optional[float] = field(
        default=None, metadata={"help": "Safety anchor: protect the directions holding this share of input energy."}
    )
    anchor_tokens: Literal["prompt", "prompt+response"] = field(
        default="prompt", metadata={"help": "Anchor tokens: 'prompt' or 'prompt+response' (the model's own answers)."}
    )
    anchor_source: str = field(
        default="benign",
        metadata={
            "help": "Anchor prompts (anchored and corda arms): benign (generic requests, never the evaluated ones) | "
            "harmful (AdvBench train part) | train (the distillation prompts: no extra data) | template (the chat "
            "template around one-word user turns: no data at all) | random (control: random directions of the same "
            "rank)."
        },
    )
    anchor_limit: int = field(default=80, metadata={"help": "How many anchor prompts to use."})
    anchor_cache_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "A safetensors file of fitted anchor bases: reused when it matches the model and the anchor "
            "settings (refused, naming the key, when not), else fitted and written there (as CorDA's cache_file)."
        },
    )
    anchor_split_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the AdvBench / benign train–held-out split that anchor and replay prompts come from (the "
            "alignment's, 0 by default), so the held-out prompts that are evaluated are never used."
        },
    )
    replay_fraction: float = field(
        default=0.05, metadata={"help": "Refusal rows added, as a share of the training rows (replay arm)."}
    )

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"`arm` must be one of {tuple(ARMS)}; got arm={self.arm!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1); got ema_decay={self.ema_decay!r}.")
        if not (self.l2sp_strength >= 0.0 and self.l2sp_strength < float("inf")):
            raise ValueError(f"`l2sp_strength` must be finite and >= 0; got l2sp_strength={self.l2sp_strength!r}.")
        if self.anchor_source not in ANCHOR_SOURCES:
            raise ValueError(
                f"`anchor_source` must be one of {ANCHOR_SOURCES}; got anchor_source={self.anchor_source!r}."
            )
        if self.anchor_limit < 1:
            raise ValueError(f"`anchor_limit` must be >= 1; got anchor_limit={self.anchor_limit!r}.")
        if not 0.0 < self.replay_fraction <= 1.0:
            raise ValueError(f"`replay_fraction` must be in (0, 1]; got replay_fraction={self.replay_fraction!r}.")
        if ARMS[self.arm].anchor and self.anchor_rank is None and self.anchor_energy is None:
            raise ValueError("arm=anchored needs `anchor_rank` and/or `anchor_energy`.")


def slowed_adapter(args: SLowEDArguments, model_config: Optional[ModelConfig] = None) -> SLowEDConfig:
    """The dense (or rank-``slowed_r``) SLowED delta: bounded (γ, ρ) for Slow Tuning arms, else γ = 1, ρ = None."""
    arm = ARMS[args.arm]
    slow, anchor = arm.slow, arm.anchor
    return SLowEDConfig(
        r=args.slowed_r,
        slow_factor=args.slow_factor if slow else 1.0,
        max_drift=args.max_drift if slow else None,
        drift_granularity=args.drift_granularity,
        target_modules=_targets(args.slowed_target_modules),
        task_type="CAUSAL_LM",
        anchor_rank=args.anchor_rank if anchor else None,
        anchor_energy=args.anchor_energy if anchor else None,
        anchor_tokens=args.anchor_tokens,
    )


def lora_adapter(args: SLowEDArguments, model_config: Optional[ModelConfig] = None) -> PeftConfig:
    """PEFT LoRA, the "learns less, forgets less" baseline: TRL's LoRA fields when the recipe has them (a
    ``ModelConfig``), else r = 16, alpha = 32, no dropout, on the layers SLowED wraps."""
    from peft import LoraConfig

    if ARMS[args.arm].corda:
        from peft.tuners.lora.config import CordaConfig

        return LoraConfig(
            r=16,
            lora_alpha=16,  # CorDA's initial factors carry the singular values: alpha = r keeps their scale
            lora_dropout=0.0,
            target_modules=_targets(args.slowed_target_modules),
            task_type="CAUSAL_LM",
            init_lora_weights="corda",
            corda_config=CordaConfig(corda_method="kpm"),
        )
    if model_config is not None:
        targets = model_config.lora_target_modules or args.slowed_target_modules
        return LoraConfig(
            r=model_config.lora_r,
            lora_alpha=model_config.lora_alpha,
            lora_dropout=model_config.lora_dropout,
            target_modules=_targets(targets),
            task_type="CAUSAL_LM",
        )
    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=_targets(args.slowed_target_modules),
        task_type="CAUSAL_LM",
    )


def _targets(targets: Union[str, list[str]]) -> Union[str, list[str]]:
    """PEFT's ``target_modules``: 'all-linear' or a regex as is, names as a list — also one plain name, which TRL's
    ``ModelConfig`` turns from ``[q_proj]`` into ``"q_proj"`` (a regex PEFT would match against the full path)."""
    if isinstance(targets, str):
        return [targets] if targets != "all-linear" and targets.replace("_", "").isalnum() else targets
    return "all-linear" if list(targets) == ["all-linear"] else list(targets)


ADAPTERS: dict[str, Callable[[SLowEDArguments, Optional[ModelConfig]], PeftConfig]] = {
    "slowed": slowed_adapter,
    "lora": lora_adapter,
}


def peft_config_for_arm(args: SLowEDArguments, model_config: Optional[ModelConfig] = None) -> Optional[PeftConfig]:
    """The adapter an arm trains (None: the arm fine-tunes every weight of the model itself); ``model_config``
    (TRL's ``ModelConfig`` of a recipe) supplies the LoRA settings of the ``lora`` arm."""
    adapter = ARMS[args.arm].adapter
    return None if adapter is None else ADAPTERS[adapter](args, model_config)


def apply_arm_to_training_args(args: SLowEDArguments, training_args: SLowEDSFTConfig) -> SLowEDSFTConfig:
    """Switch Low-Entropy Masking on (masking arms) or off (the others), and L2-SP's weight decay on (l2sp arm), in
    the trainer config, in place."""
    if ARMS[args.arm].l2sp:
        training_args.weight_decay = args.l2sp_strength
    masks = ARMS[args.arm].masks
    if masks and not training_args.masking_enabled:
        logger.info(f"arm={args.arm}: no entropy_threshold/quantile given, using {DEFAULT_ENTROPY_THRESHOLD} nats.")
        training_args.entropy_threshold = DEFAULT_ENTROPY_THRESHOLD
    if not masks and training_args.masking_enabled:
        logger.warning(f"arm={args.arm} trains without Low-Entropy Masking; ignoring entropy_threshold/quantile.")
        training_args.entropy_threshold = training_args.entropy_quantile = None
    return training_args
