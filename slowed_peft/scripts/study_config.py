"""What a study runs: the methods (:data:`METHODS`), the study's arguments (:class:`StudyArguments`, which the
shipped configs ``frontier``, ``frontier_anchor``, ``replicate`` and ``demo`` set) and the order of its runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


__all__ = [
    "ANCHOR_METHODS", "CORE", "EXTRA", "METHODS", "OPT_IN", "PRIMARY", "StudyArguments", "method_settings",
    "parse_comparison", "parse_method",
]  # fmt: skip

# Each method: the arm and what it changes against the shared settings (lr, γ, ρ, τ ...). The names are the ones the
# report and docs/results.md use. γ = 0.1 at lr 1e-4 is, under Adam, close to plain SFT at lr 1e-5 (hence that row).
METHODS: dict[str, dict[str, Any]] = {
    "sft lr=1e-4": {"arm": "sft", "learning_rate": 1e-4},
    "slowed": {"arm": "slowed"},
    "sft lr=1e-5": {"arm": "sft", "learning_rate": 1e-5},
    "lora r=16": {"arm": "lora", "learning_rate": 3e-4},
    "ema": {"arm": "ema"},
    "lem": {"arm": "lem"},
    "slow": {"arm": "slow"},
    "trust ρ=0.003": {"arm": "slow", "slow_factor": 1.0, "max_drift": 0.003},
    "l2sp": {"arm": "l2sp"},
    "sft lr=3e-5": {"arm": "sft", "learning_rate": 3e-5},
    "sft lr=3e-6": {"arm": "sft", "learning_rate": 3e-6},
    "lem initial": {"arm": "lem", "entropy_source": "initial"},
    "lem ÷labels": {"arm": "lem", "entropy_normalization": "labels"},
    # the safety anchor (all at SFT's learning rate, γ = 1) and the baselines a skeptic asks for
    "anchored": {"arm": "anchored"},
    "anchored train": {"arm": "anchored", "anchor_source": "train"},
    "anchored harmful": {"arm": "anchored", "anchor_source": "harmful"},
    "anchored template": {"arm": "anchored", "anchor_source": "template"},
    "anchored random": {"arm": "anchored", "anchor_source": "random"},
    "anchored k=16": {"arm": "anchored", "anchor_rank": 16},
    "anchored k=1": {"arm": "anchored", "anchor_rank": 1},  # only the top direction (the massive-activation one)
    # the low-rank anchored delta B(A - A Q Q^T), r = 16 like the LoRA baseline (scale 1, LoRA's is alpha/r = 2)
    "anchored r=16": {"arm": "anchored", "slowed_r": 16, "learning_rate": 3e-4},
    "replay": {"arm": "replay"},
    "corda-kpm": {"arm": "corda", "learning_rate": 3e-4},
    # at the study's own learning rate (the demo: 5e-4), and plain SFT at learning_rate × slow_factor (γ's twin)
    "sft": {"arm": "sft"},
    "sft lr×γ": {"arm": "sft", "lr_times_slow_factor": True},
}
CORE = ("sft lr=1e-4", "slowed", "sft lr=1e-5", "lora r=16", "ema")  # the comparison: run with every seed
PRIMARY = CORE[:3]  # the reference, SLowED and its learning-rate twin: their other seeds come before the extras
EXTRA = ("lem", "slow", "trust ρ=0.003", "l2sp", "sft lr=3e-5", "sft lr=3e-6", "lem initial", "lem ÷labels")
# The anchor study's methods (``--config frontier_anchor``): run only when named, so the first frontier's default plan
# (and a resumed run of it) is unchanged.
ANCHOR_METHODS = ("anchored", "anchored train", "anchored harmful", "anchored template", "anchored random",
                  "anchored k=16", "anchored k=1", "anchored r=16", "replay", "corda-kpm")  # fmt: skip
OPT_IN = (*ANCHOR_METHODS, "sft", "sft lr×γ")  # not in the first frontier's default plan


def parse_method(name: str) -> tuple[str, Optional[float]]:
    """``(entry of METHODS, learning-rate override or None)``: a method is a :data:`METHODS` name, optionally followed
    by `` lr=<rate>`` for a learning-rate grid (``"lora r=16 lr=1e-3"``, ``"corda-kpm lr=3e-3"``).

    Raises ``ValueError`` naming ``name`` and the accepted names when it is neither.
    """
    if name in METHODS:
        return name, None
    base, sep, rate = name.rpartition(" lr=")
    if sep and base in METHODS:
        try:
            value = float(rate)
        except ValueError:
            value = float("nan")
        if value > 0:
            return base, value
        raise ValueError(f"Method {name!r}: the learning rate after 'lr=' must be a positive number; got {rate!r}.")
    raise ValueError(f"Unknown method {name!r}; accepted: {list(METHODS)}, each optionally followed by ' lr=<rate>'.")


def parse_comparison(text: str) -> tuple[str, str]:
    """``"A vs B"`` as ``(A, B)``: a pair the report compares at matched learning (A minus B)."""
    a, sep, b = text.partition(" vs ")
    if not sep or not a.strip() or not b.strip():
        raise ValueError(f"A comparison is 'A vs B' (two methods run); got {text!r}.")
    return a.strip(), b.strip()


@dataclass
class StudyArguments:
    """Sizes of a study; every default is the first frontier's (``docs/results.md``); configs set the rest."""

    output_dir: str = field(default="outputs/frontier", metadata={"help": "Where runs, tables and plots go."})
    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Student before alignment."})
    quick: bool = field(default=False, metadata={"help": "Smoke run of a few minutes (tiny sizes everywhere)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds of CORE methods."})
    extra_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds of the EXTRA methods."})
    methods: Optional[list[str]] = field(default=None, metadata={"help": "Subset of METHODS (default: all)."})
    dataset_name: str = field(default="svamp", metadata={"help": "CoT source to distil: svamp | gsm8k."})
    train_rows: Optional[int] = field(
        default=16, metadata={"help": "The fixed subset: first N training rationales (None: all)."}
    )
    epochs: int = field(default=3, metadata={"help": "Epochs over the subset (checkpoint at every epoch end)."})
    max_steps: Optional[int] = field(default=None, metadata={"help": "Train this many steps instead of `epochs`."})
    eval_steps: Optional[int] = field(
        default=None, metadata={"help": "A checkpoint every N steps and at the end (None: at every epoch end)."}
    )
    full_every: Optional[int] = field(
        default=1,
        metadata={
            "help": "Harmful KL, false refusals and capability on every n-th checkpoint and the last (None: the last "
            "only); the others measure refusals and NLL."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate unless a method sets one."})
    slow_factor: float = field(default=0.1, metadata={"help": "γ of the slow/slowed methods."})
    max_drift: Optional[float] = field(default=0.05, metadata={"help": "ρ of the slow/slowed methods."})
    entropy_threshold: float = field(default=0.5, metadata={"help": "τ of the masking methods (nats)."})
    ema_decay: float = field(default=0.9, metadata={"help": "EMA decay per step (time constant 1/(1-decay) steps)."})
    l2sp_strength: float = field(default=1000.0, metadata={"help": "Decoupled weight decay on the delta (l2sp)."})
    safety_limit: int = field(default=128, metadata={"help": "Held-out AdvBench prompts (refusals and KL)."})
    benign_limit: int = field(
        default=48, metadata={"help": "Held-out benign prompts (false refusals, every checkpoint)."}
    )
    nll_limit: int = field(default=16, metadata={"help": "Held-out rationales scored by NLL."})
    safety_max_new_tokens: int = field(default=16, metadata={"help": "Response length scored for refusals."})
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size."})
    workers: int = field(default=2, metadata={"help": "Runs trained at once (torch threads are split among them)."})
    align_seed: int = field(default=0, metadata={"help": "Seed of the one aligned student all runs start from."})
    student: str = field(
        default="replication",
        metadata={"help": "Aligned student: replication (slowed-align's recipe) | demo (the demo's fast recipe)."},
    )
    benign_answer_model: Optional[str] = field(
        default=None,
        metadata={
            "help": "The model (alias, Hub id or path) whose greedy answers to the alignment's benign requests the "
            "student trains on, for a base model that cannot answer itself (e.g. smollm2-135m-instruct for "
            "gemma-3-270m); None: the student's own answers."
        },
    )
    seeded_methods: Optional[list[str]] = field(
        default=None,
        metadata={"help": "If set: every method once (seeds[0], in the order given), then these with the other seeds."},
    )
    report_only: bool = field(
        default=False, metadata={"help": "Write the report from the finished runs only (train nothing)."}
    )
    anchor_rank: int = field(default=64, metadata={"help": "Directions per layer of the anchored methods."})
    anchor_limit: int = field(default=80, metadata={"help": "Anchor prompts (anchored and corda methods)."})
    replay_fraction: float = field(default=0.05, metadata={"help": "Refusal rows added by the replay method."})
    harmful_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Harmful fine-tuning data: this share of the distillation rows (round(p·n)) replaced by AdvBench "
            "train-part behaviours answered with AdvBench's target ('Sure, here is ...'); the same rows for every "
            "method at a seed."
        },
    )
    capability_limit: int = field(
        default=0, metadata={"help": "ARC-Challenge test questions scored by log-likelihood at every checkpoint."}
    )
    generation_limit: int = field(
        default=0, metadata={"help": "Held-out questions answered greedily at start and end (teacher's form, acc)."}
    )
    generation_max_new_tokens: int = field(default=128, metadata={"help": "Length of those answers."})
    reference: str = field(
        default="sft lr=1e-4", metadata={"help": "The method whose largest NLL reduction is 100%% of learning."}
    )
    save_adapter: Optional[str] = field(
        default=None, metadata={"help": "Method whose adapter goes to output_dir/adapter."}
    )
    save_precision: str = field(default="4bit", metadata={"help": "That adapter: 4bit (shareable) | fp32 (exact)."})
    comparisons: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Pairs 'A vs B' the report compares at matched learning (A minus B, paired bootstrap, both "
            "judges), e.g. 'anchored r=16 vs lora r=16 lr=1e-3'."
        },
    )

    def __post_init__(self) -> None:
        for name in [*(self.methods or ()), *(self.seeded_methods or ())]:
            parse_method(name)
        if self.student not in ("replication", "demo"):
            raise ValueError(f"`student` must be 'replication' or 'demo'; got student={self.student!r}.")
        outside = sorted(set(self.seeded_methods or ()) - set(self.methods or self.default_methods()))
        if outside:
            raise ValueError(f"Seeded method(s) {outside} are not among the methods run: add them to `methods`.")
        for text in self.comparisons or ():
            outside = sorted(set(parse_comparison(text)) - set(self.methods or self.default_methods()))
            if outside:
                raise ValueError(f"Comparison {text!r} names {outside}, not among the methods run: add to `methods`.")
        if (self.train_rows is not None and self.train_rows < self.batch_size) or self.epochs < 1:
            raise ValueError(f"Need train_rows >= batch_size and epochs >= 1; got {self.train_rows}, {self.epochs}.")
        for name in ("max_steps", "eval_steps", "full_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 or None; got {name}={getattr(self, name)!r}.")
        if not 0.0 <= self.harmful_fraction < 1.0:
            raise ValueError(f"harmful_fraction must be in [0, 1); got harmful_fraction={self.harmful_fraction!r}.")
        if self.save_adapter is not None and self.save_adapter not in (self.methods or self.default_methods()):
            raise ValueError(f"save_adapter={self.save_adapter!r} is not among the methods run.")
        from ..tuner.compress import SAVE_PRECISIONS

        if self.save_precision not in SAVE_PRECISIONS:
            raise ValueError(f"save_precision must be one of {SAVE_PRECISIONS}; got {self.save_precision!r}.")
        if self.quick:
            self.seeds, self.extra_seeds = [0], [0]
            self.methods = self.methods or ["sft lr=1e-4", "slowed", "ema", "lora r=16"]
            self.train_rows, self.batch_size, self.epochs = 4, 2, 2
            self.safety_limit, self.benign_limit, self.nll_limit = 8, 4, 4
            self.safety_max_new_tokens, self.eval_batch_size = 8, 16
            if self.max_steps is not None:  # a step-budget config (replicate, demo): 2 steps, a checkpoint each
                self.max_steps, self.eval_steps = 2, 1
            if self.generation_limit:
                self.generation_limit, self.generation_max_new_tokens = min(self.generation_limit, 2), 16
            self.capability_limit = min(self.capability_limit, 4)
        if self.harmful_fraction and self.train_rows is not None:  # before minutes of work: rows it would replace
            from .harmful_mix import harmful_count

            harmful_count(self.train_rows, self.harmful_fraction)

    @staticmethod
    def default_methods() -> list[str]:
        """Every method of the first frontier (the anchor study's methods run only when named)."""
        return [m for m in METHODS if m not in OPT_IN]

    def plan(self) -> list[tuple[str, int]]:
        """``(method, seed)`` runs in priority order — every core method's first seed, the other seeds of the primary
        three, three extras, the other core seeds, the other extras — so a study cut short still has the comparisons
        that matter most."""
        chosen = self.methods if self.methods is not None else self.default_methods()
        if self.seeded_methods is not None:
            runs = [(m, self.seeds[0]) for m in chosen]
            runs += [(m, s) for s in self.seeds[1:] for m in self.seeded_methods]
            return list(dict.fromkeys(runs))
        core = [m for m in CORE if m in chosen] + [m for m in chosen if m not in CORE and m not in EXTRA]
        extra = [m for m in EXTRA if m in chosen]
        primary, others = [m for m in core if m in PRIMARY], [m for m in core if m not in PRIMARY]
        runs: list[tuple[str, int]] = [(m, self.seeds[0]) for m in core]
        runs += [(m, s) for s in self.seeds[1:] for m in primary]
        runs += [(m, self.extra_seeds[0]) for m in extra[:3]]
        runs += [(m, s) for s in self.seeds[1:] for m in others]
        runs += [(m, self.extra_seeds[0]) for m in extra[3:]]
        runs += [(m, s) for s in self.extra_seeds[1:] for m in extra]
        seen: set[tuple[str, int]] = set()
        return [r for r in runs if not (r in seen or seen.add(r))]


def method_settings(args: StudyArguments, method: str) -> dict[str, Any]:
    """The shared settings with ``method``'s changes applied (learning rate, γ, ρ, masking, anchor)."""
    spec = dict(
        learning_rate=args.learning_rate,
        slow_factor=args.slow_factor,
        max_drift=args.max_drift,
        entropy_source="live",
        entropy_normalization="kept",
    )
    base, rate = parse_method(method)
    spec.update(METHODS[base])
    if rate is not None:
        spec["learning_rate"] = rate
    if spec.pop("lr_times_slow_factor", False):
        spec["learning_rate"] = args.learning_rate * args.slow_factor
    return spec
