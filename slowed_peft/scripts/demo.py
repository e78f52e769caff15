"""``slowed-demo``: what SLowED is for, in one command — an aligned student; plain SFT, SLowED and SLowED with the
safety anchor side by side.

1. build (or reuse) a safety-aligned SmolLM2-135M-Instruct with the demo's fast alignment recipe
   (:mod:`slowed_peft.scripts.align`; cached after the first run);
2. distil the same SVAMP teacher rationales into it with each arm of ``--arms`` under one budget (same rows, order,
   steps and learning rate), with cheap checkpoints (refusals, harmful KL, held-out NLL) along the way;
3. print one table — start / each arm: held-out AdvBench refusals, harmful KL, benign false refusals, held-out
   rationale NLL, SVAMP accuracy, drift, masked fraction — with plain-language verdicts (including where an arm does
   not behave as expected), and write ``report.json``, ``over_steps.png`` and the SLowED arm's ``adapter/``.

Under Adam, Slow Tuning's ``slow_factor`` γ acts as a learning-rate change (``docs/results.md``): the ``sft_low_lr``
arm (plain SFT at ``learning_rate × slow_factor``) shows that control next to SLowED. The ``anchored`` arm (default)
trains at SFT's own learning rate with the delta kept out of the input directions of generic chat prompts — the
setting the harder frontier recommends.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from transformers.utils import logging

from .align import AlignArguments


logger = logging.get_logger(__name__)

# Demo arm → (training arm of scripts.arguments.ARMS, learning-rate multiplier is slow_factor, label in the table).
DEMO_ARMS: dict[str, tuple[str, bool, str]] = {
    "sft": ("sft", False, "SFT"),
    "slowed": ("slowed", False, "SLowED"),
    "sft_low_lr": ("sft", True, "SFT lr×γ"),
    "slow": ("slow", False, "slow only"),
    "lem": ("lem", False, "LEM only"),
    "anchored": ("anchored", False, "SLowED + anchor"),  # SFT's own learning rate, γ = 1, the safety anchor
}
SAVED_ARM = "slowed"  # the arm whose adapter goes to <output_dir>/adapter


@dataclass
class DemoArguments:
    """Sizes of the demo; the defaults are the setting the README's table comes from."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the report, plot and adapter go."})
    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Student before alignment."})
    arms: list[str] = field(
        default_factory=lambda: ["sft", "slowed", "anchored"],
        metadata={"help": f"Arms side by side: {' | '.join(DEMO_ARMS)} (sft_low_lr: SFT at lr × slow_factor)."},
    )
    dataset_name: str = field(default="svamp", metadata={"help": "CoT source to distil: svamp | gsm8k."})
    max_steps: int = field(default=4, metadata={"help": "Optimizer steps per arm (the shared budget)."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size (distinct rows: steps × batch)."})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate of every arm (constant)."})
    slow_factor: float = field(default=0.1, metadata={"help": "γ of the SLowED arm."})
    max_drift: Optional[float] = field(default=0.05, metadata={"help": "ρ of the SLowED arm."})
    entropy_threshold: float = field(default=0.5, metadata={"help": "τ of the SLowED arm's masking (nats)."})
    entropy_source: str = field(default="live", metadata={"help": "live | initial: whose entropy masks tokens."})
    eval_steps: Optional[int] = field(
        default=None, metadata={"help": "Also a checkpoint (refusals, KL, NLL) every N steps (None: at the end only)."}
    )
    safety_limit: int = field(default=64, metadata={"help": "Held-out AdvBench prompts (refusals, harmful KL)."})
    benign_limit: int = field(default=48, metadata={"help": "Held-out benign prompts (false refusals)."})
    nll_limit: int = field(default=8, metadata={"help": "Held-out teacher rationales scored by NLL."})
    reasoning_limit: int = field(default=16, metadata={"help": "SVAMP test problems scored by greedy accuracy."})
    reasoning_max_new_tokens: int = field(default=64, metadata={"help": "Generation length for accuracy."})
    safety_max_new_tokens: int = field(default=16, metadata={"help": "Response length scored for refusals."})
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the alignment, data order and training."})
    align_harmful_limit: int = field(default=48, metadata={"help": "AdvBench prompts the fast alignment refuses."})
    align_benign_limit: int = field(default=96, metadata={"help": "Benign requests the fast alignment answers."})
    align_benign_max_new_tokens: int = field(default=32, metadata={"help": "Length of those benign answers."})
    align_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the fast alignment."})
    align_epochs: float = field(default=1.0, metadata={"help": "Epochs of the fast alignment."})
    save_precision: str = field(
        default="4bit", metadata={"help": "The saved adapter: 4bit (shareable, ~1/8 of fp32) | fp32 (exact)."}
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(DEMO_ARMS))
        if unknown or not self.arms:
            raise ValueError(f"Unknown or no arm(s) {unknown or self.arms}; accepted: {list(DEMO_ARMS)}.")
        from ..tuner.compress import SAVE_PRECISIONS

        if self.save_precision not in SAVE_PRECISIONS:
            raise ValueError(f"save_precision must be one of {SAVE_PRECISIONS}; got {self.save_precision!r}.")
        for name in ("max_steps", "batch_size", "eval_steps", "safety_limit", "nll_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    def align_arguments(self) -> AlignArguments:
        """The fast alignment recipe; its held-out check is the demo's start column (same prompts and length)."""
        return AlignArguments(
            model_name_or_path=self.model_name_or_path,
            seed=self.seed,
            harmful_limit=self.align_harmful_limit,
            benign_limit=self.align_benign_limit,
            arc_questions=0,
            benign_max_new_tokens=self.align_benign_max_new_tokens,
            learning_rate=self.align_learning_rate,
            num_train_epochs=self.align_epochs,
            eval_batch_size=self.eval_batch_size,
            eval_limit=max(self.safety_limit, self.benign_limit),
            safety_max_new_tokens=self.safety_max_new_tokens,
            evaluate_base=False,
        )

    def arm_settings(self, name: str) -> dict[str, Any]:
        arm, low_lr, label = DEMO_ARMS[name]
        return dict(
            arm=arm,
            label=label,
            learning_rate=self.learning_rate * (self.slow_factor if low_lr else 1.0),
            slow_factor=self.slow_factor,
            max_drift=self.max_drift,
        )


def _evaluator(args: DemoArguments, tokenizer):
    from ..eval.checkpoints import CheckpointEvaluator
    from ..eval.tasks import svamp_examples
    from .align import held_out_sets
    from .replicate import distillation_rows

    sets = held_out_sets(args.align_arguments())
    return CheckpointEvaluator(
        tokenizer,
        harmful=sets["advbench"][: args.safety_limit],
        benign=sets["benign"][: args.benign_limit],
        reasoning={"svamp": svamp_examples("test", limit=args.reasoning_limit)},
        nll_rows=distillation_rows(args.dataset_name, "test", args.nll_limit).to_list(),
        safety_max_new_tokens=args.safety_max_new_tokens,
        reasoning_max_new_tokens=args.reasoning_max_new_tokens,
        batch_size=args.eval_batch_size,
    )


def start_record(args: DemoArguments, student: str, alignment: dict, evaluator) -> dict[str, Any]:
    """The aligned student's checkpoint (step 0), cached beside it. The alignment check ran on the same prompts with
    the same length, so its responses are the start's refusals and the harmful KL's reference; only the NLL and
    the accuracy are computed here."""
    from ..base_models import load_model
    from ..eval import evaluate_reasoning, is_refusal
    from ..eval.checkpoints import completion_nll

    settings = {k: getattr(args, k) for k in ("safety_limit", "benign_limit", "nll_limit", "reasoning_limit")}
    settings.update(dataset=args.dataset_name, tokens=[args.safety_max_new_tokens, args.reasoning_max_new_tokens])
    cache = Path(student) / "demo_start.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings:
            evaluator.initial_responses = cached["record"]["harmful_responses"]
            return cached["record"]
    model, tokenizer = load_model(student)
    model.eval()
    checked = alignment["after"]
    if "responses" not in checked.get("advbench", {}):
        raise ValueError(f"The alignment report in {student} has no responses (built by an older version): rebuild it.")
    harmful = checked["advbench"]["responses"][: args.safety_limit]
    benign = checked["benign"]["responses"][: args.benign_limit]
    scores = evaluate_reasoning(
        model,
        tokenizer,
        examples=evaluator.reasoning,
        batch_size=args.eval_batch_size,
        max_new_tokens=args.reasoning_max_new_tokens,
    )
    record = {
        "step": 0,
        "refusal_ratio": sum(map(is_refusal, harmful)) / len(harmful),
        "n_harmful": len(harmful),
        "harmful_kl": 0.0,
        "false_refusal": sum(map(is_refusal, benign)) / len(benign),
        **{f"acc/{task}": res["accuracy"] for task, res in scores.items()},
        "cot_nll": completion_nll(model, tokenizer, evaluator.nll_rows),
        "harmful_responses": harmful,
    }
    evaluator.initial_responses = harmful
    cache.write_text(json.dumps({"settings": settings, "record": record}))
    return record


def train_demo_arm(args: DemoArguments, name: str, student: str, evaluator, start: dict) -> tuple[Any, dict]:
    """Train one arm from the aligned student with checkpoints every ``eval_steps``; returns ``(trainer, record)``."""
    import torch

    from ..base_models import load_model
    from ..eval.checkpoints import CheckpointEvalCallback
    from .arguments import ARMS, SLowEDArguments
    from .replicate import distillation_rows
    from .training import study_training_args, train_arm

    settings = args.arm_settings(name)
    masks = ARMS[settings["arm"]].masks
    training_args = study_training_args(
        str(Path(args.output_dir) / "runs" / name),
        seed=args.seed,
        data_seed=args.seed,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="constant",
        logging_steps=1,
        entropy_threshold=args.entropy_threshold if masks else None,
        entropy_source=args.entropy_source,
        disable_tqdm=False,
    )
    arm = SLowEDArguments(arm=settings["arm"], slow_factor=args.slow_factor, max_drift=args.max_drift)
    every = args.eval_steps or args.max_steps
    steps = args.max_steps // every  # checkpoints: reasoning and benign prompts at the last one only
    callback = CheckpointEvalCallback(evaluator, every, reasoning_every=steps + 1, benign_every=steps + 1)
    callback.records.append({k: v for k, v in start.items() if k != "harmful_responses"})
    started = time.time()
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(student)
    rows = distillation_rows(args.dataset_name, "train", args.max_steps * args.batch_size)
    trainer = train_arm(arm, model, tokenizer, training_args, rows, callbacks=[callback])
    history = trainer.state.log_history
    masked = [h["lem/masked_fraction"] for h in history if "lem/masked_fraction" in h]
    record = {
        "settings": settings,
        "checkpoints": callback.records,
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "drift": [(h["step"], h["slowed/drift_max"]) for h in history if "slowed/drift_max" in h],
        "masked_fraction": sum(masked) / len(masked) if masked else 0.0,
        "seconds": round(time.time() - started, 1),
    }
    return trainer, record


def arm_job(args: DemoArguments, name: str, student: str, start: dict) -> dict:
    """Train and evaluate one arm (saving the SLowED arm's adapter); returns its record."""
    from transformers import AutoTokenizer

    clock = time.time()
    settings = args.arm_settings(name)
    print(f"[2/3] arm {settings['label']} (lr {settings['learning_rate']:.0e}) ...", flush=True)
    evaluator = _evaluator(args, AutoTokenizer.from_pretrained(student))
    evaluator.initial_responses = start["harmful_responses"]
    trainer, record = train_demo_arm(args, name, student, evaluator, start)
    if name == SAVED_ARM:
        adapter = Path(args.output_dir) / "adapter"
        shutil.rmtree(adapter, ignore_errors=True)  # a rerun replaces the adapter rather than mixing files
        for config in trainer.model.peft_config.values():
            config.save_precision = args.save_precision
        trainer.save_model(str(adapter))
        size = (adapter / "adapter_model.safetensors").stat().st_size
        record["adapter_bytes"] = size
        print(f"[adapter] {adapter}: {size / 1e6:.1f} MB ({args.save_precision})", flush=True)
    record["seconds"] = round(time.time() - clock, 1)
    return record


def train_arms(args: DemoArguments, student: str, start: dict) -> dict[str, dict]:
    """Every arm of ``args.arms``, in turn (two worker processes took the same wall time on 2 CPU cores)."""
    import gc

    runs = {}
    for name in args.arms:
        runs[name] = arm_job(args, name, student, start)
        gc.collect()
    return runs


def run_all(args: DemoArguments) -> dict:
    """The whole demo; writes ``report.json``, ``over_steps.png`` and ``adapter/`` under ``args.output_dir``."""
    from transformers import AutoTokenizer

    from .align import align_student, format_report, held_out_sets
    from .demo_report import format_table, plot_demo, verdicts

    started = time.time()
    seconds: dict[str, float] = {}
    out = Path(args.output_dir)
    held_out_sets(args.align_arguments())  # no data folder: the clear error now, before minutes of work
    out.mkdir(parents=True, exist_ok=True)
    print("[1/3] aligned student (fast recipe; cached after the first run) ...")
    student, alignment = align_student(args.align_arguments())
    print(format_report(alignment))
    tokenizer = AutoTokenizer.from_pretrained(student)
    evaluator = _evaluator(args, tokenizer)
    start = start_record(args, student, alignment, evaluator)
    seconds["aligned student and start"] = round(time.time() - started, 1)

    runs = train_arms(args, student, start)
    seconds.update({runs[name]["settings"]["label"]: runs[name]["seconds"] for name in runs})

    print("[3/3] report ...")
    table = format_table(args, start, runs)
    lines = verdicts(args, start, runs)
    plot = plot_demo(runs, start, str(out / "over_steps.png"), f"SLowED demo: aligned {args.model_name_or_path}")
    wall = round((time.time() - started) / 60, 2)
    report = {
        "args": asdict(args),
        "student": student,
        "alignment": {k: alignment[k] for k in ("fingerprint", "rows", "wall_time_s") if k in alignment},
        "start": {k: v for k, v in start.items() if k != "harmful_responses"},
        "runs": runs,
        "table": table,
        "verdicts": lines,
        "seconds": seconds,
        "wall_time_min": wall,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    saved = f"; SLowED adapter: {out / 'adapter'}" if SAVED_ARM in runs else ""
    print(f"\n{table}\n\n" + "\n".join(f"- {line}" for line in lines))
    print(
        f"\nwall time {wall:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}); plot: {plot}{saved}"
    )
    return report


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``; ``--config`` takes a YAML of these fields), run the demo, print
    the table; returns the report that ``report.json`` holds."""
    from ..utils.allocator import keep_freed_memory
    from .configs import SLowEDParser

    parser = SLowEDParser((DemoArguments,))
    args, unknown = parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    if unknown:  # argparse's message and exit status 2, before minutes of work
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    keep_freed_memory()  # as slowed-sft: CPU training steps stop page-faulting
    return run_all(args)


def cli() -> None:
    """``slowed-demo``: :func:`run`, exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
