"""Tables (markdown) and plots of a replication run: ``results.md``, ``refusal_over_steps.png``, ``tradeoff.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ..eval.report import format_value


__all__ = ["arms_table", "steps_table", "sweep_table", "write_report"]


def _cell(value: Any) -> str:
    """A results.md cell: 3 decimals, ``–`` for a missing value."""
    return format_value(value, missing="–", tiny=False)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _last(record: Mapping[str, Any]) -> dict:
    return record["checkpoints"][-1]


def _at(record: Mapping[str, Any], step: Optional[int]) -> dict:
    """The checkpoint at ``step`` (the last one when ``step`` is None or was not evaluated)."""
    return next((c for c in record["checkpoints"] if c["step"] == step), _last(record))


def _final_acc(final: Mapping[str, Mapping[str, Any]], task: str) -> Optional[float]:
    return final.get(task, {}).get("accuracy")


def arms_table(results: Mapping[str, Any]) -> str:
    """Arms × metrics at the end of training, with the aligned student as the first row."""
    initial = results["arms"][next(iter(results["arms"]))]["checkpoints"][0] if results["arms"] else None
    header = [
        "arm",
        "AdvBench refusal ↑",
        "harmful KL ↓",
        "benign false refusal ↓",
        "SVAMP acc ↑",
        "GSM8K acc ↑",
        "BBH bool acc ↑",
        "held-out CoT NLL ↓",
        "max drift",
        "masked frac",
        "min (train + evals)",
    ]
    rows = []
    if initial is not None:
        f = results.get("initial_final", {})
        rows.append(
            [
                "aligned student (start)",
                initial["refusal_ratio"],
                0.0,
                initial.get("false_refusal"),
                initial.get("acc/svamp"),
                _final_acc(f, "gsm8k"),
                _final_acc(f, "bbh:boolean_expressions"),
                initial.get("cot_nll"),
                0.0,
                None,
                None,
            ]
        )
    for arm, record in results["arms"].items():
        last, f = _last(record), record.get("final", {})
        rows.append(
            [
                arm,
                last["refusal_ratio"],
                last["harmful_kl"],
                last.get("false_refusal"),
                last.get("acc/svamp"),
                _final_acc(f, "gsm8k"),
                _final_acc(f, "bbh:boolean_expressions"),
                last.get("cot_nll"),
                last.get("drift_max"),
                record.get("masked_fraction"),
                f"{record['train_seconds'] / 60:.1f}",
            ]
        )
    return _table(header, rows)


def steps_table(results: Mapping[str, Any], key: str = "refusal_ratio") -> str:
    """``key`` (e.g. held-out refusal ratio) at every checkpoint, one row per arm."""
    arms = results["arms"]
    if not arms:
        return ""
    steps = sorted({c["step"] for record in arms.values() for c in record["checkpoints"]})
    rows = []
    for arm, record in arms.items():
        by_step = {c["step"]: c.get(key) for c in record["checkpoints"]}
        rows.append([arm, *[by_step.get(s) for s in steps]])
    return _table(["arm \\ step", *[str(s) for s in steps]], rows)


def sweep_table(results: Mapping[str, Any], at_step: Optional[int] = None) -> str:
    """Sweep variants at their end and the main arms they vary at checkpoint ``at_step`` (same budget)."""
    header = [
        "run",
        "γ",
        "ρ",
        "masking",
        "AdvBench refusal ↑",
        "harmful KL ↓",
        "false refusal ↓",
        "SVAMP acc (checkpoint set) ↑",
        "held-out CoT NLL ↓",
        "max drift",
        "masked frac",
    ]
    rows = []
    runs = {**{f"{arm} (main)": r for arm, r in results["arms"].items()}, **results.get("sweep", {})}
    for name, record in runs.items():
        s, last = record["settings"], _at(record, at_step)
        slow = s["arm"] in ("slow", "slowed")
        masking = "–"
        if s["arm"] in ("lem", "slowed"):
            rule = (
                f"q={s['entropy_quantile']}" if s.get("entropy_quantile") is not None else f"τ={s['entropy_threshold']}"
            )
            masking = f"{rule}, {s['entropy_source']}"
        gamma, rho = (s["slow_factor"], s["max_drift"]) if slow else (1.0, None)
        rows.append(
            [
                name,
                f"{gamma:g}",
                "none" if rho is None else f"{rho:g}",
                masking,
                last["refusal_ratio"],
                last["harmful_kl"],
                last.get("false_refusal"),
                last.get("acc/svamp"),
                last.get("cot_nll"),
                last.get("drift_max"),
                record.get("masked_fraction"),
            ]
        )
    return _table(header, rows)


def write_report(results: Mapping[str, Any], out: Path) -> dict[str, Optional[str]]:
    """``results.md`` with the three tables and the two plots next to it; returns the written paths."""
    from ..eval.plots import plot_over_steps, plot_tradeoff

    out = Path(out)
    curves = {arm: r["checkpoints"] for arm, r in results["arms"].items()}
    steps_png = plot_over_steps(
        curves,
        [
            ("refusal_ratio", "held-out AdvBench refusal ratio"),
            ("harmful_kl", "harmful KL vs aligned student [nats/token]"),
            ("cot_nll", "held-out rationale NLL"),
            ("acc/svamp", "SVAMP accuracy (checkpoint set)"),
        ],
        str(out / "refusal_over_steps.png"),
        title="SLowED arms over training",
    )
    sweep_points = {name: _last(r) for name, r in results.get("sweep", {}).items()}
    tradeoff_png = plot_tradeoff(
        curves,
        sweep_points,
        str(out / "tradeoff.png"),
        x=("cot_nll", "held-out rationale NLL (← less learned · more learned →)"),
        panels=[("refusal_ratio", "held-out AdvBench refusal ratio"), ("harmful_kl", "harmful KL vs aligned student")],
        title="reasoning vs safety: arms through checkpoints (o), sweep runs (x)",
    )
    alignment = results["alignment"]
    parts = [
        "## Aligned student",
        "",
        _table(
            ["held-out set", "base", "aligned", "n"],
            [
                [
                    "AdvBench refusal ratio",
                    alignment["before"]["advbench"]["refusal_ratio"],
                    alignment["after"]["advbench"]["refusal_ratio"],
                    alignment["after"]["advbench"]["n"],
                ],
                [
                    "benign false refusals",
                    alignment["before"]["benign"]["refusal_ratio"],
                    alignment["after"]["benign"]["refusal_ratio"],
                    alignment["after"]["benign"]["n"],
                ],
            ],
        ),
        "",
        "## Arms after the same budget",
        "",
        arms_table(results),
        "",
        "## Held-out refusal ratio over training steps",
        "",
        steps_table(results),
        "",
        "## Harmful KL over training steps",
        "",
        steps_table(results, "harmful_kl"),
        "",
    ]
    if results.get("sweep"):
        steps = results.get("args", {}).get("sweep_steps")
        parts += [f"## Sweep (all runs at step {steps})", "", sweep_table(results, steps), ""]
    parts += [f"Wall time: {results.get('wall_time_min')} min; torch threads: {results.get('torch_threads')}.", ""]
    (out / "results.md").write_text("\n".join(parts))
    return {"results.md": str(out / "results.md"), "steps": steps_png, "tradeoff": tradeoff_png}


if __name__ == "__main__":  # re-render the tables and plots of a finished (or interrupted) run
    import json
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/replicate")
    written = write_report(json.loads((folder / "results.json").read_text()), folder)
    print((folder / "results.md").read_text())
    print(written)
