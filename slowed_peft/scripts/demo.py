"""``slowed-demo``: evaluate → SLowED distillation → evaluate → before/after report.

Uses the embedded SmolLM2-135M-Instruct and the built-in CoT problems, so it needs no download and no data files;
about 5 minutes on 2 CPU cores. Writes to ``--output_dir``: ``adapter/`` (safetensors), ``report.json``,
``before_after.png``, ``adapter/training_curves.png`` and the two evaluation JSONs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from transformers.utils import logging

from ..eval import EvalReport
from ..eval.plots import plot_before_after
from .configs import config_help
from .evaluate import EvalArguments, evaluate_model
from .sft import main as train_main
from .sft import make_parser


logger = logging.get_logger(__name__)

DEFAULT_CONFIG = "smollm2-135m-demo"  # shipped with the package (slowed_peft/configs/)


def _mean(history: list[dict], key: str) -> Optional[float]:
    values = [h[key] for h in history if key in h and "train_runtime" not in h]
    return sum(values) / len(values) if values else None


def _last(history: list[dict], key: str) -> Optional[float]:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def summary_rows(before: EvalReport, after: EvalReport, history: list[dict]) -> list[tuple[str, object, object]]:
    rows = []
    for task, res in before.reasoning.items():
        rows.append((f"reasoning accuracy ({task}, n={res['n']})", res["accuracy"], after.reasoning[task]["accuracy"]))
    for name, res in before.safety.items():
        label = "false refusals (benign)" if name == "benign" else f"refusal ratio ({name})"
        rows.append((f"{label}, n={res['n']}", res["refusal_ratio"], after.safety[name]["refusal_ratio"]))
        if name != "benign":
            rows.append((f"harmful_kl ({name}) [nats/token]", 0.0, after.safety[name]["harmful_kl"]))
    rows.append(("max weight drift ‖W−W0‖/‖W0‖", 0.0, _last(history, "slowed/drift_max")))
    rows.append(("masked fraction of label tokens (mean)", "-", _mean(history, "lem/masked_fraction")))
    return rows


def format_rows(rows: Sequence[tuple[str, object, object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'before':>8}  {'after':>8}", "-" * (width + 20)]
    lines += [f"{name:<{width}}  {fmt(b):>8}  {fmt(a):>8}" for name, b, a in rows]
    return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``; unknown flags go to the training step), run the demo, print the
    before/after table; returns the report that ``report.json`` holds."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_help()
    )
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="recipe config of the training step (name or YAML path)")
    ap.add_argument("--output_dir", default="outputs/demo")
    ap.add_argument("--eval_limit", type=int, default=16, help="demo test problems / prompts per set")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="generation budget for the demo problems")
    ap.add_argument("--max_steps", type=int, default=None, help="override the recipe's max_steps")
    args, extra = ap.parse_known_args(argv)
    from ..utils.allocator import keep_freed_memory

    keep_freed_memory()  # as slowed-sft: CPU training steps stop page-faulting
    started = time.time()
    out = Path(args.output_dir)
    adapter_dir = out / "adapter"
    if adapter_dir.exists():  # a rerun replaces the previous run's adapter rather than mixing with it
        shutil.rmtree(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_argv = ["--config", args.config, "--output_dir", str(adapter_dir), *extra]
    if args.max_steps is not None:
        train_argv += ["--max_steps", str(args.max_steps)]
    script_args, training_args, model_args, slowed_args, unknown = make_parser().parse_args_and_config(
        args=train_argv, return_remaining_strings=True
    )
    if unknown:  # refuse before minutes of evaluation, not after
        ap.error(f"unrecognized arguments (neither the demo's nor the training step's): {' '.join(unknown)}")
    if training_args.max_steps > 0 and training_args.logging_steps > training_args.max_steps:
        training_args.logging_steps = 1  # a short run still logs the steps its training curves are drawn from
    eval_args = EvalArguments(
        model_name_or_path=model_args.model_name_or_path,
        tasks=["demo"],
        safety_sets=["probes", "benign"],
        limit=args.eval_limit,
        batch_size=8,
        max_new_tokens=args.max_new_tokens,
    )

    from ..base_models import load_model

    print(f"[1/3] evaluating the base model {model_args.model_name_or_path} ...")
    base, tokenizer = load_model(model_args.model_name_or_path)
    base_responses: dict[str, list[str]] = {}
    before = evaluate_model(
        base.eval(), tokenizer, eval_args, name=model_args.model_name_or_path, responses_out=base_responses
    )
    before.save(str(out / "eval_before.json"))
    del base

    print(f"[2/3] SLowED distillation (arm={slowed_args.arm}) on the built-in CoT problems ...")
    trainer = train_main(script_args, training_args, model_args, slowed_args)
    history = trainer.state.log_history

    print("[3/3] evaluating the distilled model ...")
    eval_args.adapter = str(adapter_dir)
    after = evaluate_model(
        trainer.model.eval(), tokenizer, eval_args, name=model_args.model_name_or_path, initial_responses=base_responses
    )  # the base model's responses: no regeneration
    after.save(str(out / "eval_after.json"))

    rows = summary_rows(before, after, history)
    table = format_rows(rows)
    minutes = (time.time() - started) / 60
    print("\n" + table + f"\n\nwall time {minutes:.1f} min; adapter: {adapter_dir}")
    numeric = {name: (b, a) for name, b, a in rows if isinstance(b, float) and isinstance(a, float)}
    plot_before_after(numeric, str(out / "before_after.png"), title=f"SLowED demo ({model_args.model_name_or_path})")
    report = {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "arm": slowed_args.arm,
        "table": [list(r) for r in rows],
        "wall_time_min": minutes,
        "adapter": str(adapter_dir),
    }
    with open(out / "report.json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report


def cli() -> None:
    """``slowed-demo``: :func:`run`, exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
