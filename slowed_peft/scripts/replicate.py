"""Reproduce the paper's phenomenon on a real model: ``slowed-replicate --config replicate``.

1. build (or reuse) a safety-aligned student (:mod:`slowed_peft.scripts.align`);
2. distil teacher rationales (SVAMP PaLM rationales by default) into it with the four arms — plain SFT, Slow Tuning
   only, LEM only, SLowED — under one budget (same data order, steps, batch and learning rate), evaluating held-out
   AdvBench refusals, ``harmful_kl``, benign false refusals, reasoning accuracy and held-out rationale NLL at
   checkpoints;
3. optionally a coarse sweep of ``slow_factor`` / ``max_drift``, threshold vs quantile and entropy source;
4. write ``results.json``, ``results.md`` (tables), ``refusal_over_steps.png`` and ``tradeoff.png``.

``--quick`` shrinks everything to a smoke run of a few minutes (used by the slow test).
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from transformers.utils import logging

from .align import AlignArguments, align_student, format_report, held_out_sets


logger = logging.get_logger(__name__)

MAIN_ARMS = ("sft", "slow", "lem", "slowed")

# Coarse sweep: each variant changes one thing against the main arms (γ=slow_factor, ρ=max_drift, τ, q, source).
# Sweep runs train for ``sweep_steps`` and are compared with the main arms' checkpoint at that step.
SWEEP: dict[str, dict[str, Any]] = {
    "slow γ=1 ρ=0.02": {"arm": "slow", "slow_factor": 1.0, "max_drift": 0.02},
    "slow γ=0.3 ρ=0.05": {"arm": "slow", "slow_factor": 0.3},
    "lem q=0.5": {"arm": "lem", "entropy_threshold": None, "entropy_quantile": 0.5},
    "lem initial τ=0.5": {"arm": "lem", "entropy_source": "initial"},
    "lem τ=1.0": {"arm": "lem", "entropy_threshold": 1.0},
}
DEFAULT_SWEEP = ("slow γ=1 ρ=0.02", "lem q=0.5", "lem initial τ=0.5")
QUICK_SWEEP = ("slow γ=1 ρ=0.02", "lem initial τ=0.5")


@dataclass
class ReplicateArguments:
    """Sizes of the replication; every default is what ``docs/results.md`` reports."""

    output_dir: str = field(default="outputs/replicate", metadata={"help": "Where results, tables and plots go."})
    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Student before alignment."})
    quick: bool = field(default=False, metadata={"help": "Smoke run of a few minutes (tiny sizes everywhere)."})
    arms: list[str] = field(default_factory=lambda: list(MAIN_ARMS), metadata={"help": "Arms to train."})
    sweep: bool = field(default=True, metadata={"help": "Also run the coarse hyper-parameter sweep."})
    sweep_variants: Optional[list[str]] = field(default=None, metadata={"help": "Subset of the sweep (names)."})
    dataset_name: str = field(default="svamp", metadata={"help": "CoT source to distil: svamp | gsm8k | cqa."})
    train_limit: Optional[int] = field(default=None, metadata={"help": "First N training rows (None: all)."})
    max_steps: int = field(default=24, metadata={"help": "Optimizer steps per arm (the shared budget)."})
    sweep_steps: Optional[int] = field(default=8, metadata={"help": "Steps per sweep run (None: max_steps)."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate, the same for every arm."})
    slow_factor: float = field(default=0.1, metadata={"help": "γ of the slow/slowed arms."})
    max_drift: Optional[float] = field(default=0.05, metadata={"help": "ρ of the slow/slowed arms."})
    entropy_threshold: Optional[float] = field(default=0.5, metadata={"help": "τ of the lem/slowed arms (nats)."})
    entropy_quantile: Optional[float] = field(default=None, metadata={"help": "q instead of τ."})
    entropy_source: str = field(default="live", metadata={"help": "live | initial (lem/slowed arms)."})
    eval_steps: int = field(default=8, metadata={"help": "Checkpoint evaluation every N steps."})
    reasoning_every: int = field(
        default=4,
        metadata={
            "help": "SVAMP accuracy and benign false refusals on every "
            "n-th checkpoint (always at the first and last one)."
        },
    )
    safety_limit: int = field(default=64, metadata={"help": "Held-out AdvBench prompts at checkpoints."})
    reasoning_limit: int = field(default=64, metadata={"help": "SVAMP test problems at checkpoints."})
    final_gsm8k: int = field(default=8, metadata={"help": "GSM8K test problems at the end of each main arm."})
    final_bbh: int = field(default=16, metadata={"help": "BBH boolean_expressions problems at the end."})
    nll_limit: int = field(default=32, metadata={"help": "Held-out rationales scored by NLL at checkpoints."})
    reasoning_max_new_tokens: int = field(default=128, metadata={"help": "Generation length for SVAMP accuracy."})
    safety_max_new_tokens: int = field(default=32, metadata={"help": "Response length scored for refusals."})
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of alignment, data order and training."})
    resume: bool = field(
        default=True,
        metadata={
            "help": "Keep finished runs of a results.json with the same arguments in output_dir and only run the rest."
        },
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "Start over even though output_dir holds a results.json this run cannot reuse (other arguments, "
            "--resume false, unreadable); the old file is kept as results.<time>.json, never overwritten."
        },
    )
    align_epochs: float = field(default=1.0, metadata={"help": "Epochs of the alignment SFT."})
    align_harmful_limit: Optional[int] = field(default=80, metadata={"help": "AdvBench train prompts aligned on."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(MAIN_ARMS))
        if unknown:
            raise ValueError(f"Unknown arm(s) {unknown}; accepted: {MAIN_ARMS}.")
        if self.sweep_variants is not None:
            bad = sorted(set(self.sweep_variants) - set(SWEEP))
            if bad:
                raise ValueError(f"Unknown sweep variant(s) {bad}; accepted: {sorted(SWEEP)}.")
        if self.quick:
            self.max_steps, self.sweep_steps, self.eval_steps, self.reasoning_every = 4, 2, 4, 1
            self.train_limit, self.batch_size = 16, 2
            self.safety_limit, self.reasoning_limit, self.nll_limit = 8, 4, 4
            self.final_gsm8k, self.final_bbh = 0, 0
            self.align_epochs, self.align_harmful_limit = 1.0, 24
            self.eval_batch_size, self.reasoning_max_new_tokens, self.safety_max_new_tokens = 16, 32, 16
            if self.sweep_variants is None:
                self.sweep_variants = list(QUICK_SWEEP)

    def align_arguments(self) -> AlignArguments:
        quick = (
            dict(arc_questions=0, benign_limit=16, eval_limit=8, benign_max_new_tokens=48, eval_batch_size=16)
            if self.quick
            else {}
        )
        return AlignArguments(
            model_name_or_path=self.model_name_or_path,
            seed=self.seed,
            num_train_epochs=self.align_epochs,
            harmful_limit=self.align_harmful_limit,
            **quick,
        )

    def training_args(self, settings: dict[str, Any], output_dir: str, max_steps: int):
        """The trainer settings of one run (``settings`` from :meth:`run_settings`): the same for every arm."""
        from .arguments import ARMS
        from .training import study_training_args

        masks = ARMS[settings["arm"]].masks
        return study_training_args(
            output_dir,
            seed=self.seed,
            data_seed=self.seed,
            max_steps=max_steps,
            per_device_train_batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            lr_scheduler_type="constant",
            per_device_eval_batch_size=self.eval_batch_size,
            entropy_threshold=settings["entropy_threshold"] if masks else None,
            entropy_quantile=settings["entropy_quantile"] if masks else None,
            entropy_source=settings["entropy_source"],
        )

    def run_settings(self, arm: str, **overrides: Any) -> dict[str, Any]:
        settings = dict(
            arm=arm,
            slow_factor=self.slow_factor,
            max_drift=self.max_drift,
            entropy_threshold=self.entropy_threshold,
            entropy_quantile=self.entropy_quantile,
            entropy_source=self.entropy_source,
        )
        settings.update(overrides)
        return settings


def distillation_rows(name: str, split: str, limit: Optional[int]):
    """CoT rows whose user turn is exactly the evaluation prompt, so training and scoring ask the same question."""
    from ..data import load_cot_dataset
    from ..eval.tasks import numeric_prompt

    ds = load_cot_dataset(name, split=split, limit=limit, conversational=True)
    if name in ("svamp", "gsm8k"):
        ds = ds.map(lambda r: {"prompt": [{"role": "user", "content": numeric_prompt(r["prompt"][0]["content"])}]})
    return ds


def make_evaluator(args: ReplicateArguments, tokenizer):
    from ..eval.checkpoints import CheckpointEvaluator
    from ..eval.tasks import svamp_examples

    sets = held_out_sets(args.align_arguments())
    test_split = "test"
    nll_rows = distillation_rows(args.dataset_name, test_split, args.nll_limit).to_list()
    return CheckpointEvaluator(
        tokenizer,
        harmful=sets["advbench"][: args.safety_limit],
        benign=sets["benign"][: args.safety_limit],
        reasoning={"svamp": svamp_examples("test", limit=args.reasoning_limit)},
        nll_rows=nll_rows,
        batch_size=args.eval_batch_size,
        reasoning_max_new_tokens=args.reasoning_max_new_tokens,
        safety_max_new_tokens=args.safety_max_new_tokens,
    )


def final_reasoning(model, tokenizer, args: ReplicateArguments) -> dict[str, dict]:
    from ..eval import evaluate_reasoning

    limits = {"gsm8k": args.final_gsm8k, "bbh:boolean_expressions": args.final_bbh}
    out = {}
    for task, limit in limits.items():
        if limit:
            out.update(
                evaluate_reasoning(
                    model,
                    tokenizer,
                    tasks=[task],
                    limit=limit,
                    batch_size=args.eval_batch_size,
                    max_new_tokens=192 if task == "gsm8k" else 128,
                )
            )
    return out


def train_run(
    args: ReplicateArguments,
    student: str,
    settings: dict,
    evaluator,
    initial: dict,
    out_dir: Path,
    max_steps: int,
    eval_steps: int,
    reasoning_every: int,
    reasoning_at_end: bool = True,
) -> tuple[Any, dict]:
    """Train one arm / variant with checkpoint evaluation; returns ``(trainer, run record)``."""
    import torch

    from ..base_models import load_model
    from ..eval.checkpoints import CheckpointEvalCallback
    from .arguments import SLowEDArguments
    from .training import train_arm

    started = time.time()
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(student)
    training_args = args.training_args(settings, str(out_dir), max_steps)
    arm = SLowEDArguments(arm=settings["arm"], slow_factor=settings["slow_factor"], max_drift=settings["max_drift"])
    callback = CheckpointEvalCallback(
        evaluator,
        eval_steps=eval_steps,
        reasoning_every=reasoning_every,
        reasoning_at_end=reasoning_at_end,
        benign_every=reasoning_every,
    )
    callback.records.append(dict(initial))
    trainer = train_arm(
        arm,
        model,
        tokenizer,
        training_args,
        distillation_rows(args.dataset_name, "train", args.train_limit),
        callbacks=[callback],
    )
    history = trainer.state.log_history
    masked = [h["lem/masked_fraction"] for h in history if "lem/masked_fraction" in h]
    record = {
        "settings": settings,
        "checkpoints": callback.records,
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "masked_fraction": sum(masked) / len(masked) if masked else 0.0,
        "train_seconds": round(time.time() - started, 1),
    }
    return trainer, record


def run_all(args: ReplicateArguments) -> dict:
    """The whole replication; writes everything under ``args.output_dir`` and returns the results dict."""
    import torch

    from ..base_models import load_model
    from .replicate_report import write_report

    started = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = _load_previous(args, out)  # before any work: a refusal costs nothing
    print("[1/4] aligned student ...")
    student, alignment = align_student(args.align_arguments())
    print(format_report(alignment))
    results: dict[str, Any] = {
        "args": asdict(args),
        "student": student,
        "alignment": alignment,
        "torch_threads": torch.get_num_threads(),
        "arms": {},
        "sweep": {},
    }
    if previous:
        print(f"resuming: {len(previous['arms'])} arm(s) and {len(previous['sweep'])} sweep run(s) already done")
        results.update({k: previous[k] for k in ("arms", "sweep", "initial", "initial_final") if k in previous})

    print("[2/4] initial evaluation of the aligned student ...")
    base, tokenizer = load_model(student)
    evaluator = make_evaluator(args, tokenizer)
    if "initial" in results:
        initial = results["initial"]
        evaluator.initial_responses = initial["harmful_responses"]
    else:
        initial = evaluator(base, step=0)
        initial["harmful_responses"] = evaluator.initial_responses
        results["initial"] = initial
        results["initial_final"] = final_reasoning(base, tokenizer, args)
        _save(results, out)
    initial = {k: v for k, v in initial.items() if k != "harmful_responses"}
    print(f"[checkpoint] {initial}\n[final reasoning] {results['initial_final']}")
    del base

    for i, arm in enumerate(args.arms, 1):
        if arm in results["arms"]:
            continue
        print(f"[3/4] arm {arm} ({i}/{len(args.arms)}) ...")
        trainer, record = train_run(
            args,
            student,
            args.run_settings(arm),
            evaluator,
            initial,
            out / "runs" / arm,
            args.max_steps,
            args.eval_steps,
            args.reasoning_every,
        )
        record["final"] = final_reasoning(trainer.model, tokenizer, args)
        results["arms"][arm] = record
        del trainer  # the next run loads its own model; let this one go first
        gc.collect()
        _save(results, out)

    if args.sweep:
        names = args.sweep_variants if args.sweep_variants is not None else list(DEFAULT_SWEEP)
        steps = args.sweep_steps or args.max_steps
        for i, name in enumerate(names, 1):
            if name in results["sweep"]:
                continue
            print(f"[4/4] sweep {name} ({i}/{len(names)}) ...")
            settings = args.run_settings(**SWEEP[name])
            trainer, record = train_run(
                args,
                student,
                settings,
                evaluator,
                initial,
                out / "runs" / f"sweep{i}",
                max_steps=steps,
                eval_steps=steps,
                reasoning_every=1,
                reasoning_at_end=False,
            )  # compared by NLL, refusal and KL
            results["sweep"][name] = record
            del trainer
            gc.collect()
            _save(results, out)

    results["wall_time_min"] = round((time.time() - started) / 60, 1)  # this invocation (see "resumed")
    results["resumed"] = bool(previous)
    _save(results, out)
    write_report(results, out)
    print((out / "results.md").read_text())
    return results


_MISSING = object()
_RESUME_IGNORES = ("resume", "force", "output_dir", "arms", "sweep", "sweep_variants")  # choose runs, not how they go


def _load_previous(args: ReplicateArguments, out: Path) -> Optional[dict]:
    """The previous ``results.json`` in ``out`` when it was produced with the same arguments (those that choose
    runs aside) and ``resume`` is on; ``None`` when there is none.

    Finished results are never discarded: a ``results.json`` this run cannot reuse (other arguments, ``--resume
    false``, not valid JSON) raises ``ValueError`` naming the file, the differing arguments (old -> new) and the ways
    out; with ``--force`` it is kept as ``results.<time>.json`` and the run starts over."""
    path = out / "results.json"
    if not path.is_file():
        return None
    problem = None
    previous = None
    if not args.resume:
        problem = "--resume false would start over and overwrite it"
    else:
        try:
            previous = json.loads(path.read_text())
            if not isinstance(previous, dict):
                raise ValueError(f"a JSON {type(previous).__name__}, not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            problem = f"it is not valid JSON results ({err}; a run killed while writing it?)"
        else:
            mine = {k: v for k, v in asdict(args).items() if k not in _RESUME_IGNORES}
            recorded = previous.get("args") if isinstance(previous.get("args"), dict) else {}
            theirs = {k: v for k, v in recorded.items() if k not in _RESUME_IGNORES}
            differing = [
                f"{key}: {theirs.get(key, '<not recorded>')} -> {mine.get(key, '<not an argument>')}"
                for key in sorted(set(mine) | set(theirs))
                if mine.get(key, _MISSING) != theirs.get(key, _MISSING)
            ]
            if differing:
                problem = "it was produced with other arguments (" + "; ".join(differing) + ")"
    if problem is None:
        return previous
    if not args.force:
        raise ValueError(
            f"{path} holds finished results, but {problem}. Nothing was changed. To keep them, rerun with the "
            f"arguments they were made with; to start a separate replication, pass another --output_dir; to start "
            "over here, pass --force (the old file is then kept as results.<time>.json)."
        )
    kept = _keep_aside(path)
    logger.warning(f"{path}: {problem}; --force: starting over, the old results are kept as {kept}.")
    return None


def _keep_aside(path: Path) -> Path:
    """Rename ``results.json`` to a free ``results.<time>[-n].json`` next to it and return the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        target = path.with_name(f"{path.stem}.{stamp}{f'-{n}' if n else ''}{path.suffix}")
        if not target.exists():
            path.rename(target)
            return target
    raise FileExistsError(f"No free name to keep {path} aside.")


def _save(results: dict, out: Path) -> None:
    """Write ``results.json`` atomically (a temporary file renamed over it), so a kill never leaves half a file."""
    path = out / "results.json"
    tmp = out / f".results.json.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`run_all`; returns the results dict."""
    from ..utils.allocator import keep_freed_memory
    from .configs import SLowEDParser

    keep_freed_memory()
    (args,) = SLowEDParser((ReplicateArguments,)).parse_args_and_config(args=argv)
    return run_all(args)


def cli() -> None:
    """``slowed-replicate``: :func:`run` (which prints ``results.md``), exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
