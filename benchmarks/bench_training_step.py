"""CPU training step of the replication: gradient checkpointing and glibc's allocator settings.

    python benchmarks/bench_training_step.py                  # embedded SmolLM2-135M-Instruct, sft arm
    python benchmarks/bench_training_step.py --model PATH --arm slowed --repeats 3

Each configuration trains ``--steps`` optimizer steps (batch 4 of SVAMP PaLM rationales, as ``recipes/replicate.py``)
in a fresh child process — the allocator settings are per process — and the children alternate over ``--repeats``
rounds. Reported: median seconds per step after the first step, minor page faults per step, and the training losses
(equal across configurations: neither setting changes the arithmetic). Needs the data folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, write_json  # noqa: E402


CONFIGS = {
    "checkpointing (TRL default)": {"gradient_checkpointing": True, "keep_freed_memory": False},
    "no checkpointing": {"gradient_checkpointing": False, "keep_freed_memory": False},
    "no checkpointing + keep_freed_memory": {"gradient_checkpointing": False, "keep_freed_memory": True},
}


def child(model_path: str, arm: str, steps: int, config: dict) -> dict:
    """Train ``steps`` steps in this process; per-step seconds, page faults and losses."""
    if config["keep_freed_memory"]:
        from slowed_peft.utils.allocator import keep_freed_memory

        assert keep_freed_memory(), "keep_freed_memory() did not apply on this platform"
    import resource
    import time

    import torch
    from transformers import TrainerCallback

    from slowed_peft.base_models import load_model
    from slowed_peft.scripts.arguments import SLowEDArguments
    from slowed_peft.scripts.training import distillation_rows, study_training_args, train_arm

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.faults: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t, self.f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.t)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.f)

    torch.manual_seed(0)
    model, tokenizer = load_model(model_path)
    masks = arm in ("lem", "slowed")
    training_args = study_training_args(
        "/tmp/bench_training_step",
        seed=0,
        data_seed=0,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=config["gradient_checkpointing"],
        entropy_threshold=0.5 if masks else None,
        entropy_source="live",
    )
    timer = Timer()
    trainer = train_arm(
        SLowEDArguments(arm=arm),
        model,
        tokenizer,
        training_args,
        distillation_rows("svamp", "train", steps * 4),
        callbacks=[timer],
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": timer.seconds, "faults": timer.faults, "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--arm", default="sft", choices=["sft", "slow", "lem", "slowed"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/training_step.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.model, args.arm, args.steps, CONFIGS[args.child])), flush=True)
        return

    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    for i in range(args.repeats):
        for name in CONFIGS if i % 2 == 0 else reversed(CONFIGS):
            cmd = [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--arm",
                args.arm,
                "--steps",
                str(args.steps),
                "--child",
                name,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            runs[name].append(json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))))
    base = None
    rows = []
    for name, results in runs.items():
        per_step = median([s for r in results for s in r["seconds"][1:]])
        faults = median([f for r in results for f in r["faults"][1:]])
        base = base or per_step
        rows.append(
            {
                "config": name,
                **CONFIGS[name],
                "median_s_per_step": per_step,
                "ratio": per_step / base,
                "minor_faults_per_step": faults,
                "losses": results[0]["losses"],
            }
        )
        print(
            f"{name:<40} {per_step:6.2f} s/step  ratio {per_step / base:.2f}  {faults:>9.0f} faults/step  "
            f"losses {[round(x, 4) for x in results[0]['losses']]}",
            flush=True,
        )
    same = all(r["losses"] == rows[0]["losses"] for r in rows)
    print(f"identical losses across configurations: {same}")
    write_json(
        args.out,
        {
            "machine": machine(),
            "model": args.model,
            "arm": args.arm,
            "steps": args.steps,
            "repeats": args.repeats,
            "identical_losses": same,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
