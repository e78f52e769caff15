"""The study engine: ``slowed-frontier``, ``slowed-replicate`` and ``slowed-demo`` are configs of it.

Every method of :data:`METHODS` (SLowED's arms, the safety anchor and the baselines: plain SFT at a grid of learning
rates, LoRA, a parameter-space EMA, L2-SP toward W0, a binding trust region, LEM variants, refusal replay, CorDA-KPM)
distils the same teacher rationales into the same aligned student — ``epochs`` epochs over the first ``train_rows``
rationales, or ``max_steps`` steps — for several seeds (data order; LoRA's initialisation). One evaluator
(:class:`slowed_peft.eval.checkpoints.CheckpointEvaluator`) measures the aligned student (``initial.json``) and every
checkpoint — at each epoch end, or every ``eval_steps`` steps: learning (held-out rationale NLL) and safety (held-out
AdvBench refusals with every response kept, harmful KL against the aligned student's own responses, benign false
refusals, ARC log-likelihood accuracy when ``capability_limit`` is set); greedy answers to held-out questions at the
start and the end. :mod:`slowed_peft.scripts.report` turns the runs into tables, intervals, plots and verdicts.

Resumable and parallel (:mod:`slowed_peft.scripts.runs`): every (method, seed) run is one JSON file under
``<output_dir>/runs``, reused only when recorded under the same arguments, so a killed study continues where it
stopped, and ``--workers 2`` trains two runs at once (one thread each).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from transformers.utils import logging

from .runs import claim, load_runs, reusable, run_file, study_args, write_json_atomic
from .study_config import StudyArguments, method_settings


logger = logging.get_logger(__name__)


def _aligned_student(args: StudyArguments) -> tuple[str, dict]:
    """The one aligned student of the study (built or reused): the demo's fast recipe or the replication's, with the
    benign answers of ``args.benign_answer_model`` when the student is a base model that cannot answer them."""
    from .align import AlignArguments, align_student

    if args.student == "demo" and not args.quick:
        from .align import fast_align_arguments

        return align_student(
            fast_align_arguments(args.model_name_or_path, args.align_seed, benign_answer_model=args.benign_answer_model)
        )

    quick = dict(
        arc_questions=0, benign_limit=16, eval_limit=8, harmful_limit=24, benign_max_new_tokens=48, eval_batch_size=16
    )
    quick = quick if args.quick else {}  # the same small student as `slowed-replicate --quick` (one cache)
    return align_student(
        AlignArguments(
            model_name_or_path=args.model_name_or_path,
            seed=args.align_seed,
            benign_answer_model=args.benign_answer_model,
            **quick,
        )
    )


def _held_out(args: StudyArguments) -> dict[str, list]:
    from .align import AlignArguments, held_out_sets
    from .training import distillation_rows

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
        held_out["generation"] = [
            {"prompt": r["prompt"][-1]["content"], "answer": str(r["answer"]), "kind": "numeric"}
            for r in rows[args.nll_limit :]
        ]
    return held_out


def make_evaluator(args: StudyArguments, tokenizer, held_out: dict[str, list]):
    """The study's one :class:`~slowed_peft.eval.checkpoints.CheckpointEvaluator` (every response kept)."""
    from ..eval.checkpoints import CheckpointEvaluator

    return CheckpointEvaluator(
        tokenizer,
        harmful=held_out["harmful"],
        benign=held_out["benign"],
        nll_rows=held_out["nll_rows"],
        capability=held_out.get("capability", ()),
        generation=held_out.get("generation", ()),
        safety_max_new_tokens=args.safety_max_new_tokens,
        generation_max_new_tokens=args.generation_max_new_tokens,
        batch_size=args.eval_batch_size,
        keep_responses=True,
    )


def training_arguments(args: StudyArguments, method: str, seed: int):
    """The trainer settings of one (method, seed) run: the same for every method but its learning rate and masking."""
    from .arguments import ARMS
    from .training import study_training_args

    spec = method_settings(args, method)
    masks = ARMS[spec["arm"]].masks
    length = dict(max_steps=args.max_steps) if args.max_steps else dict(num_train_epochs=args.epochs)
    return study_training_args(
        str(Path(args.output_dir) / "tmp" / run_file(Path(""), method, seed).stem),
        seed=seed,
        data_seed=seed,
        **length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        per_device_eval_batch_size=args.eval_batch_size,
        entropy_threshold=args.entropy_threshold if masks else None,
        entropy_source=spec["entropy_source"],
        entropy_normalization=spec["entropy_normalization"],
        disable_tqdm=False,
    )


def train_one(args: StudyArguments, student: str, method: str, seed: int, evaluator) -> dict:
    """Train one (method, seed) run with its checkpoints; returns its run record."""
    import torch

    from ..base_models import load_model
    from ..eval.checkpoints import CheckpointEvalCallback
    from ..masking.ema import ParameterEMACallback
    from .arguments import ARMS, SLowEDArguments
    from .training import distillation_rows, train_arm

    spec = method_settings(args, method)
    arm = SLowEDArguments(
        arm=spec["arm"],
        slow_factor=spec["slow_factor"],
        max_drift=spec["max_drift"],
        ema_decay=args.ema_decay,
        l2sp_strength=args.l2sp_strength,
        slowed_r=spec.get("slowed_r"),
        anchor_rank=spec.get("anchor_rank", args.anchor_rank),
        anchor_source=spec.get("anchor_source", "benign"),
        anchor_limit=args.anchor_limit,
        anchor_split_seed=args.align_seed,  # the held-out sets are the alignment seed's: never anchor on them
        replay_fraction=args.replay_fraction,
    )
    training_args = training_arguments(args, method, seed)
    started = time.time()
    torch.manual_seed(seed)
    model, tokenizer = load_model(student)
    ema = ParameterEMACallback(args.ema_decay) if ARMS[spec["arm"]].ema else None
    callback = CheckpointEvalCallback(
        evaluator,
        eval_steps=args.eval_steps,
        reasoning_every=None,  # greedy answers at the end only (and in initial.json)
        benign_every=args.full_every,
        kl_every=args.full_every,
        at_start=False,  # the start is initial.json, shared by every run
        weights=ema.swapped if ema else None,
        log=_log_checkpoint,
    )
    rows = distillation_rows(args.dataset_name, "train", args.train_rows)
    if args.harmful_fraction:  # the same rows for every method at this seed; AdvBench's train part only
        from .harmful_mix import with_harmful_rows

        rows = with_harmful_rows(rows, args.harmful_fraction, seed=seed, split_seed=args.align_seed)
    trainer = train_arm(arm, model, tokenizer, training_args, rows, callbacks=[c for c in (ema, callback) if c])
    history = trainer.state.log_history
    masked = [h["lem/masked_fraction"] for h in history if "lem/masked_fraction" in h]
    anchor = getattr(trainer, "anchor_report", None)
    record = {
        "method": method,
        "seed": seed,
        "study_args": study_args(args),
        "settings": spec,
        "anchor_mean_rank": getattr(anchor, "mean_rank", None),
        "anchor_seconds": getattr(anchor, "seconds", None),
        "checkpoints": callback.records,
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "masked_fraction": sum(masked) / len(masked) if masked else 0.0,
    }
    if method == args.save_adapter:
        record["adapter_bytes"] = _save_adapter(trainer, Path(args.output_dir) / "adapter", args.save_precision)
    record["seconds"] = round(time.time() - started, 1)
    return record


def _log_checkpoint(line: str) -> None:
    print(line, flush=True)


def _save_adapter(trainer, adapter: Path, precision: str) -> int:
    """Save the trained adapter (a rerun replaces it rather than mixing files); returns its weights' bytes."""
    import shutil

    shutil.rmtree(adapter, ignore_errors=True)
    for config in trainer.model.peft_config.values():
        config.save_precision = precision
    trainer.save_model(str(adapter))
    size = (adapter / "adapter_model.safetensors").stat().st_size
    print(f"[adapter] {adapter}: {size / 1e6:.1f} MB ({precision})", flush=True)
    return size


def worker(args: StudyArguments, student: str, initial: dict, threads: int) -> None:
    """Train every unclaimed run of the plan, one after another (one process of ``--workers``)."""
    import gc

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    out = Path(args.output_dir)
    evaluator = make_evaluator(args, AutoTokenizer.from_pretrained(student), _held_out(args))
    evaluator.initial_responses = initial["harmful_responses"]
    for method, seed in args.plan():
        path = run_file(out, method, seed)
        if not claim(path):
            continue
        print(f"[run] {method} seed {seed} (pid {os.getpid()}) ...", flush=True)
        record = train_one(args, student, method, seed, evaluator)
        write_json_atomic(path, record)
        path.with_suffix(".lock").rmdir()
        gc.collect()


def initial_checkpoint(args: StudyArguments, student: str, held_out: dict[str, list]) -> dict:
    """The aligned student's record (step 0; ``initial.json``), reused when recorded under the same arguments."""
    from ..base_models import load_model

    path = Path(args.output_dir) / "initial.json"
    if reusable(path, args):
        return json.loads(path.read_text())
    print("[2/3] initial checkpoint of the aligned student ...", flush=True)
    base, tokenizer = load_model(student)
    initial = make_evaluator(args, tokenizer, held_out)(base, step=0, epoch=0.0)
    initial["study_args"] = study_args(args)
    write_json_atomic(path, initial)
    return initial


def run_all(args: StudyArguments) -> dict:
    """The whole study (resuming finished runs), then the report; returns the report's summary dict."""
    import multiprocessing as mp

    import torch

    from .anchor_report import ANCHOR, anchor_section
    from .report import write_report

    started = time.time()
    out = Path(args.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for stale in (out / "runs").glob("*.lock"):  # left by a killed worker: that run starts again
        stale.rmdir()
    held_out = _held_out(args)  # no data folder: the clear error now, before minutes of work
    plan = args.plan()
    done = {r for r in plan if reusable(run_file(out, *r), args)}  # before any work: other arguments raise here
    reusable(out / "initial.json", args)
    print("[1/3] aligned student ...", flush=True)
    student, alignment = _aligned_student(args)
    initial = initial_checkpoint(args, student, held_out)
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
            raise RuntimeError(f"{len(failed)} study worker(s) failed (exit codes {failed}); rerun resumes.")
    else:
        worker(args, student, initial, torch.get_num_threads())
    runs = load_runs(out)
    summary = write_report(args, out, initial, runs)
    if ANCHOR in runs and summary.get("ref_reduction"):  # the anchor's claims: learning, generation, differences
        section = anchor_section(runs, initial, summary["ref_reduction"], args.reference)
        with open(out / "results.md", "a") as f:
            f.write("\n" + "\n".join(section) + "\n")
    if args.comparisons and summary.get("ref_reduction"):  # the pairs the study names (e.g. low-rank anchor vs LoRA)
        from .pair_report import comparison_section

        section = comparison_section(runs, initial, summary["ref_reduction"], args.comparisons, args.reference)
        with open(out / "results.md", "a") as f:
            f.write("\n" + "\n".join(section) + "\n")
    if args.save_adapter in runs and not (out / "adapter" / "adapter_model.safetensors").is_file():
        logger.warning(
            f"No adapter in {out / 'adapter'}: the {args.save_adapter!r} run was reused from an earlier invocation "
            f"that did not save it. Remove {run_file(out, args.save_adapter, args.seeds[0])} to train and save it."
        )
    summary["wall_time_min_this_invocation"] = round((time.time() - started) / 60, 1)
    return summary


def parse(argv: Optional[Sequence[str]] = None, default_config: Optional[str] = None) -> StudyArguments:
    """The study's arguments from ``argv`` (default ``sys.argv[1:]``), with ``default_config`` unless one is given."""
    import sys

    from .configs import SLowEDParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if default_config and not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", default_config, *argv]
    parser = SLowEDParser((StudyArguments,))
    args, unknown = parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    if unknown:  # argparse's message and exit status 2, before minutes of work
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def run(argv: Optional[Sequence[str]] = None, default_config: Optional[str] = None) -> dict:
    """Parse ``argv`` and :func:`run_all`; prints ``results.md``."""
    from ..utils.allocator import keep_freed_memory

    args = parse(argv, default_config)
    keep_freed_memory()  # CPU training steps stop page-faulting
    summary = run_all(args)
    print((Path(args.output_dir) / "results.md").read_text())
    return summary


def cli() -> None:
    """``slowed-frontier``: :func:`run`, exiting 0 on success."""
    run()


def replicate_cli() -> None:
    """``slowed-replicate``: the study with the shipped ``replicate`` config (the paper's four arms) by default."""
    run(default_config="replicate")


if __name__ == "__main__":
    cli()
