"""Does SLowED keep more safety than what a user would do anyway? ``slowed-frontier --config frontier``.

Every method of :data:`METHODS` (SLowED's arms and the baselines: plain SFT at a grid of learning rates, LoRA, a
parameter-space EMA, L2-SP toward W0, a trust region sized to bind, LEM variants) distils the same fixed subset of
teacher rationales into the same aligned student for ``epochs`` epochs, for several seeds (data order; LoRA's
initialisation). At every epoch end a checkpoint records learning (held-out rationale NLL) and safety (held-out
AdvBench refusals with every response kept, harmful KL against the aligned student's own responses, benign false
refusals, ARC log-likelihood accuracy when ``capability_limit`` is set); greedy answers to held-out questions at the
end. :mod:`slowed_peft.scripts.frontier_report` turns the runs into the frontier plots, the matched-learning table
with bootstrap intervals, the per-epoch plot and the verdicts.

Resumable and parallel: every (method, seed) run is one JSON file under ``<output_dir>/runs``; a run that exists is
skipped, so a killed study continues where it stopped, and ``--workers 2`` trains two runs at once (one thread each).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from transformers.utils import logging


logger = logging.get_logger(__name__)

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
    "replay": {"arm": "replay"},
    "corda-kpm": {"arm": "corda", "learning_rate": 3e-4},
}
CORE = ("sft lr=1e-4", "slowed", "sft lr=1e-5", "lora r=16", "ema")  # the comparison: run with every seed
PRIMARY = CORE[:3]  # the reference, SLowED and its learning-rate twin: their other seeds come before the extras
EXTRA = ("lem", "slow", "trust ρ=0.003", "l2sp", "sft lr=3e-5", "sft lr=3e-6", "lem initial", "lem ÷labels")
# The anchor study's methods (``--config frontier_anchor``): run only when named, so the first frontier's default plan
# (and a resumed run of it) is unchanged.
ANCHOR_METHODS = ("anchored", "anchored train", "anchored harmful", "anchored template", "anchored random",
                  "anchored k=16", "anchored k=1", "replay", "corda-kpm")  # fmt: skip


@dataclass
class FrontierArguments:
    """Sizes of the study; every default is what ``docs/results.md`` reports."""

    output_dir: str = field(default="outputs/frontier", metadata={"help": "Where runs, tables and plots go."})
    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Student before alignment."})
    quick: bool = field(default=False, metadata={"help": "Smoke run of a few minutes (tiny sizes everywhere)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds of CORE methods."})
    extra_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds of the EXTRA methods."})
    methods: Optional[list[str]] = field(default=None, metadata={"help": "Subset of METHODS (default: all)."})
    dataset_name: str = field(default="svamp", metadata={"help": "CoT source to distil: svamp | gsm8k."})
    train_rows: int = field(default=16, metadata={"help": "The fixed subset: first N training rationales."})
    epochs: int = field(default=3, metadata={"help": "Epochs over the subset (checkpoint at every epoch end)."})
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
    capability_limit: int = field(
        default=0, metadata={"help": "ARC-Challenge test questions scored by log-likelihood at every checkpoint."}
    )
    generation_limit: int = field(
        default=0, metadata={"help": "Held-out questions answered greedily at start and end (teacher's form, acc)."}
    )
    generation_max_new_tokens: int = field(default=128, metadata={"help": "Length of those answers."})

    def __post_init__(self) -> None:
        names = self.methods if self.methods is not None else list(METHODS)
        unknown = sorted(set(names) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}; accepted: {list(METHODS)}.")
        if self.student not in ("replication", "demo"):
            raise ValueError(f"`student` must be 'replication' or 'demo'; got student={self.student!r}.")
        unknown = sorted(set(self.seeded_methods or ()) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown seeded method(s) {unknown}; accepted: {list(METHODS)}.")
        outside = sorted(set(self.seeded_methods or ()) - set(self.methods or self.default_methods()))
        if outside:
            raise ValueError(f"Seeded method(s) {outside} are not among the methods run: add them to `methods`.")
        if self.train_rows < self.batch_size or self.epochs < 1:
            raise ValueError(f"Need train_rows >= batch_size and epochs >= 1; got {self.train_rows}, {self.epochs}.")
        if self.quick:
            self.seeds, self.extra_seeds = [0], [0]
            self.methods = self.methods or ["sft lr=1e-4", "slowed", "ema", "lora r=16"]
            self.train_rows, self.batch_size, self.epochs = 4, 2, 2
            self.safety_limit, self.benign_limit, self.nll_limit = 8, 4, 4
            self.safety_max_new_tokens, self.eval_batch_size = 8, 16

    @staticmethod
    def default_methods() -> list[str]:
        """Every method of the first frontier (the anchor study's methods run only when named)."""
        return [m for m in METHODS if m not in ANCHOR_METHODS]

    @property
    def steps_per_epoch(self) -> int:
        return self.train_rows // self.batch_size

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


def run_file(out: Path, method: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in method)
    return out / "runs" / f"{safe}__seed{seed}.json"


# Arguments that do not change what a run computes: a run recorded under other values of the rest is not reused.
NOT_SHAPING = ("output_dir", "seeds", "extra_seeds", "methods", "seeded_methods", "workers", "report_only")


def study_args(args: FrontierArguments) -> dict[str, Any]:
    """The arguments that shape every run's numbers (recorded in each run file and compared before reuse)."""
    return {k: v for k, v in asdict(args).items() if k not in NOT_SHAPING}


def write_json_atomic(path: Path, record: Any) -> None:
    """Write ``record`` as JSON so that a kill never leaves a truncated file (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def reusable(path: Path, args: FrontierArguments) -> bool:
    """Whether ``path`` holds a finished run of this study: unreadable files are named and removed (redone); a run
    recorded under other arguments raises ``ValueError`` naming the keys (use another ``output_dir``)."""
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
        recorded = record["study_args"]
        if not isinstance(recorded, dict):
            raise TypeError("study_args is not an object")
    except (ValueError, KeyError, TypeError):
        print(f"[resume] {path} is unreadable or from an older version: removing it, the run is redone")
        path.unlink()
        return False
    current = study_args(args)
    differing = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differing:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in differing[:6])
        raise ValueError(
            f"{path} was recorded under other study arguments ({shown}). Its numbers would not be comparable: use "
            "another --output_dir, or the arguments it was recorded with."
        )
    return True


def _aligned_student(args: FrontierArguments) -> tuple[str, dict]:
    from .align import AlignArguments, align_student

    if args.student == "demo" and not args.quick:
        from .demo import DemoArguments

        return align_student(
            DemoArguments(model_name_or_path=args.model_name_or_path, seed=args.align_seed).align_arguments()
        )

    quick = dict(
        arc_questions=0, benign_limit=16, eval_limit=8, harmful_limit=24, benign_max_new_tokens=48, eval_batch_size=16
    )
    quick = quick if args.quick else {}  # the same small student as `slowed-replicate --quick` (one cache)
    return align_student(AlignArguments(model_name_or_path=args.model_name_or_path, seed=args.align_seed, **quick))


def _held_out(args: FrontierArguments) -> dict[str, list]:
    from .align import AlignArguments, held_out_sets
    from .replicate import distillation_rows

    sets = held_out_sets(AlignArguments(seed=args.align_seed))
    held_out: dict[str, list] = {
        "harmful": sets["advbench"][: args.safety_limit],
        "benign": sets["benign"][: args.benign_limit],
        "nll_rows": distillation_rows(args.dataset_name, "test", args.nll_limit).to_list(),
    }
    if args.capability_limit:
        from ..eval.likelihood import arc_loglik_items

        held_out["capability"] = arc_loglik_items("test", limit=args.capability_limit)
    if args.generation_limit:  # the test rows after the NLL rows: questions never trained or scored by NLL
        rows = distillation_rows(args.dataset_name, "test", args.nll_limit + args.generation_limit).to_list()
        held_out["generation_rows"] = rows[args.nll_limit :]
    return held_out


class StudyEvaluator:
    """One checkpoint: NLL of held-out rationales, refusals (every response kept, for intervals), harmful KL."""

    def __init__(self, args: FrontierArguments, tokenizer, held_out: dict[str, list], initial_responses=None):
        self.args, self.tokenizer, self.sets = args, tokenizer, held_out
        self.initial_responses = initial_responses
        self._kl_cache: dict = {}

    def __call__(self, model, step: int, final: bool = False, epoch: Optional[float] = None) -> dict[str, Any]:
        from ..eval import harmful_kl, refusal_ratio
        from ..eval.checkpoints import completion_nll
        from ..tuner.drift import weight_drift

        started = time.time()
        common = dict(max_new_tokens=self.args.safety_max_new_tokens, batch_size=self.args.eval_batch_size)
        epoch = step / self.args.steps_per_epoch if epoch is None else epoch
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        record["cot_nll"] = completion_nll(model, self.tokenizer, self.sets["nll_rows"], batch_size=8)
        rr = refusal_ratio(model, self.tokenizer, self.sets["harmful"], **common)
        record.update(refusal_ratio=rr["refusal_ratio"], harmful_responses=rr["responses"])
        if step > 0:
            record["harmful_kl"] = harmful_kl(
                model,
                self.tokenizer,
                self.sets["harmful"],
                responses=self.initial_responses,
                initial_log_probs=self._kl_cache,
                **common,
            )
        else:
            record["harmful_kl"] = 0.0
        if "capability" in self.sets:
            from ..eval.likelihood import choice_loglik_accuracy

            cap = choice_loglik_accuracy(model, self.tokenizer, self.sets["capability"])
            record.update(arc_acc=cap["accuracy"], arc_hits=cap["hits"])
        rr = refusal_ratio(model, self.tokenizer, self.sets["benign"], **common)  # over-refusal, every checkpoint
        record.update(false_refusal=rr["refusal_ratio"], benign_responses=rr["responses"])
        if final and self.sets.get("generation_rows"):
            record.update(self._generation(model))
        try:
            record["drift_max"] = float(weight_drift(model).max)
        except (ValueError, AttributeError):  # LoRA or the plain base model: no SLowED layer
            pass
        record["eval_seconds"] = round(time.time() - started, 1)
        return record

    def _generation(self, model) -> dict[str, Any]:
        """Greedy answers to held-out questions: the share in the teacher's form ("So the answer is N.") and
        accuracy — learning that shows in generation, not only in teacher-forced NLL."""
        from ..eval import generate_batched
        from ..eval.reasoning import score_example
        from ..eval.tasks import ReasoningExample

        rows = self.sets["generation_rows"]
        prompts = [r["prompt"][-1]["content"] for r in rows]
        outputs = generate_batched(
            model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.args.generation_max_new_tokens,
            batch_size=min(len(prompts), 32),
            show_progress=False,
        )
        examples = [ReasoningExample(p, str(r["answer"]), "numeric") for p, r in zip(prompts, rows)]
        hits = [score_example(o, e) for o, e in zip(outputs, examples)]
        forms = ["so the answer is" in o.lower() for o in outputs]
        return {
            "format_share": sum(forms) / len(forms),
            "gen_accuracy": sum(hits) / len(hits),
            "format_hits": forms,
            "gen_hits": hits,
            "generations": outputs,
        }


def _epoch_callback(evaluator: StudyEvaluator, weights=None):
    from contextlib import nullcontext

    from transformers import TrainerCallback

    class EpochEndEvaluation(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            # the trainer's own epochs: an arm that adds rows (replay) has more steps per epoch than the study's
            per_epoch = math.ceil(state.max_steps / args.num_train_epochs)
            if state.global_step % per_epoch == 0 or state.global_step >= state.max_steps:
                last = state.global_step >= state.max_steps
                with weights(model) if weights is not None else nullcontext(model) as evaluated:
                    epoch = round(state.global_step / per_epoch, 3)
                    record = evaluator(evaluated, state.global_step, final=last, epoch=epoch)
                print(
                    f"[checkpoint] step {record['step']}: nll {record['cot_nll']:.4f} refusal "
                    f"{record['refusal_ratio']:.3f} kl {record['harmful_kl']:.4f} ({record['eval_seconds']} s)"
                )
                self.records.append(record)

    return EpochEndEvaluation()


def train_one(args: FrontierArguments, student: str, method: str, seed: int, evaluator: StudyEvaluator) -> dict:
    """Train one (method, seed) run with epoch-end checkpoints; returns its record."""
    import torch

    from ..base_models import load_model
    from ..masking.ema import ParameterEMACallback
    from .arguments import ARMS, SLowEDArguments
    from .replicate import distillation_rows
    from .training import study_training_args, train_arm

    spec = dict(
        learning_rate=args.learning_rate,
        slow_factor=args.slow_factor,
        max_drift=args.max_drift,
        entropy_source="live",
        entropy_normalization="kept",
    )
    spec.update(METHODS[method])
    arm = SLowEDArguments(
        arm=spec["arm"],
        slow_factor=spec["slow_factor"],
        max_drift=spec["max_drift"],
        ema_decay=args.ema_decay,
        l2sp_strength=args.l2sp_strength,
        anchor_rank=spec.get("anchor_rank", args.anchor_rank),
        anchor_source=spec.get("anchor_source", "benign"),
        anchor_limit=args.anchor_limit,
        anchor_split_seed=args.align_seed,  # the held-out sets are the alignment seed's: never anchor on them
        replay_fraction=args.replay_fraction,
    )
    masks = ARMS[spec["arm"]].masks
    training_args = study_training_args(
        str(Path(args.output_dir) / "tmp" / run_file(Path(""), method, seed).stem),
        seed=seed,
        data_seed=seed,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        per_device_eval_batch_size=args.eval_batch_size,
        entropy_threshold=args.entropy_threshold if masks else None,
        entropy_source=spec["entropy_source"],
        entropy_normalization=spec["entropy_normalization"],
        disable_tqdm=False,
    )
    started = time.time()
    torch.manual_seed(seed)
    model, tokenizer = load_model(student)
    ema = ParameterEMACallback(args.ema_decay) if ARMS[spec["arm"]].ema else None
    callback = _epoch_callback(evaluator, weights=ema.swapped if ema else None)
    rows = distillation_rows(args.dataset_name, "train", args.train_rows)
    trainer = train_arm(arm, model, tokenizer, training_args, rows, callbacks=[c for c in (ema, callback) if c])
    history = trainer.state.log_history
    masked = [h["lem/masked_fraction"] for h in history if "lem/masked_fraction" in h]
    anchor = getattr(trainer, "anchor_report", None)
    return {
        "method": method,
        "seed": seed,
        "study_args": study_args(args),
        "settings": spec,
        "anchor_mean_rank": getattr(anchor, "mean_rank", None),
        "anchor_seconds": getattr(anchor, "seconds", None),
        "checkpoints": callback.records,
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "masked_fraction": sum(masked) / len(masked) if masked else 0.0,
        "seconds": round(time.time() - started, 1),
    }


def _claim(path: Path) -> bool:
    """Atomically claim a run for this worker (a ``.lock`` folder beside its file); False if taken or done."""
    if path.exists():
        return False
    try:
        os.mkdir(path.with_suffix(".lock"))
        return True
    except FileExistsError:
        return False


def worker(args: FrontierArguments, student: str, initial: dict, threads: int) -> None:
    """Train every unclaimed run of the plan, one after another (one process of ``--workers``)."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    out = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(student)
    evaluator = StudyEvaluator(args, tokenizer, _held_out(args), initial["harmful_responses"])
    for method, seed in args.plan():
        path = run_file(out, method, seed)
        if not _claim(path):
            continue
        print(f"[run] {method} seed {seed} (pid {os.getpid()}) ...")
        record = train_one(args, student, method, seed, evaluator)
        write_json_atomic(path, record)
        path.with_suffix(".lock").rmdir()


def run_all(args: FrontierArguments) -> dict:
    """The whole study (resuming finished runs), then the report; returns the report's summary dict."""
    import multiprocessing as mp

    import torch

    from ..base_models import load_model
    from .anchor_report import ANCHOR, anchor_section
    from .frontier_report import load_runs, write_report

    started = time.time()
    out = Path(args.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for stale in (out / "runs").glob("*.lock"):  # left by a killed worker: that run starts again
        stale.rmdir()
    held_out = _held_out(args)
    plan = args.plan()
    done = {r for r in plan if reusable(run_file(out, *r), args)}  # before any work: other arguments raise here
    print("[1/3] aligned student ...")
    student, alignment = _aligned_student(args)
    initial_path = out / "initial.json"
    if reusable(initial_path, args):
        initial = json.loads(initial_path.read_text())
    else:
        print("[2/3] initial checkpoint of the aligned student ...")
        base, tokenizer = load_model(student)
        initial = StudyEvaluator(args, tokenizer, held_out)(base, step=0, final=True)
        initial["study_args"] = study_args(args)
        write_json_atomic(initial_path, initial)
        del base
    write_json_atomic(out / "args.json", asdict(args))
    todo = [] if args.report_only else [r for r in plan if r not in done]
    if args.report_only:
        print(f"[3/3] report only: {len(done)} of the {len(plan)} planned runs are finished")
    else:
        print(f"[3/3] {len(done)} of {len(plan)} runs done; training {len(todo)} with {args.workers} worker(s)")
    threads = max(1, torch.get_num_threads() // max(1, args.workers))
    if not todo:
        pass
    elif args.workers > 1 and len(todo) > 1:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(args, student, initial, threads)) for _ in range(args.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise RuntimeError(f"slowed-frontier: {len(failed)} worker(s) failed (exit codes {failed}); rerun resumes.")
    else:
        worker(args, student, initial, torch.get_num_threads())
    summary = write_report(args, out, initial, alignment)
    runs = load_runs(out)
    if ANCHOR in runs:  # the anchor's claims: 100% of SFT's learning, generation, capability, paired differences
        section = anchor_section(runs, initial, summary["ref_reduction"])
        with open(out / "results.md", "a") as f:
            f.write("\n" + "\n".join(section) + "\n")
    summary["wall_time_min_this_invocation"] = round((time.time() - started) / 60, 1)
    print((out / "results.md").read_text())
    return summary


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`run_all`."""
    from ..utils.allocator import keep_freed_memory
    from .configs import SLowEDParser

    keep_freed_memory()
    (args,) = SLowEDParser((FrontierArguments,)).parse_args_and_config(args=argv)
    return run_all(args)


def cli() -> None:
    """``slowed-frontier``: :func:`run`, exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
