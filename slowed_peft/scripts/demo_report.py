"""The demo's printed report: one table (start and each method, seed 0) and plain-language verdicts, each comparing a
method with plain SFT at matched learning (the study engine's interpolation, :func:`.report.matched`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


# (row label, checkpoint key, format, which direction is better: +1 higher, -1 lower, 0 neither)
TABLE_ROWS = (
    ("held-out AdvBench refusals, n={n_harmful}", "refusal_ratio", "{:.3f}", +1),
    ("harmful KL to the aligned student [nats/token]", "harmful_kl", "{:.4f}", -1),
    ("benign false refusals, n={n_benign}", "false_refusal", "{:.3f}", -1),
    ("held-out rationale NLL, n={n_nll} [nats/token]", "cot_nll", "{:.3f}", -1),
    ("learning: share of SFT's best NLL reduction", "learning", "{:.0%}", +1),
    ("max drift ‖W−W0‖/‖W0‖", "drift_max", "{:.4f}", 0),
    ("masked fraction of label tokens", "masked_fraction", "{:.3f}", 0),
)
REFERENCE = "sft"

# The demo's column names for the methods it shows (any other method keeps its own name).
LABELS = {"sft": "SFT", "slowed": "SLowED", "anchored": "SFT + anchor", "sft lr×γ": "SFT lr×γ",
          "slow": "slow only", "lem": "LEM only"}  # fmt: skip


def column_name(method: str) -> str:
    return LABELS.get(method, method)


def _best_reduction(start: dict, run: dict) -> float:
    """The largest held-out NLL reduction any checkpoint of ``run`` reaches (held-out NLL rises again on overfitting)."""
    return max(start["cot_nll"] - c["cot_nll"] for c in run["checkpoints"])


def final_values(runs: list[dict], start: dict, reference: Optional[float]) -> dict[str, Any]:
    """A method's last checkpoint (seed 0) plus its run-level numbers, keyed as in :data:`TABLE_ROWS`."""
    values = dict(runs[0]["checkpoints"][-1])
    values["masked_fraction"] = runs[0]["masked_fraction"]
    if reference:
        values["learning"] = _best_reduction(start, runs[0]) / reference
    return values


def format_table(args: Any, start: dict, runs: dict[str, list[dict]]) -> str:
    """The demo's one table: a row per measure, a column for the start and one per method."""
    sizes = dict(n_harmful=args.safety_limit, n_benign=args.benign_limit, n_nll=args.nll_limit)
    reference = _best_reduction(start, runs[REFERENCE][0]) if REFERENCE in runs else None
    columns = {"start": {**start, "drift_max": 0.0, "masked_fraction": None, "learning": 0.0 if reference else None}}
    columns.update({column_name(name): final_values(runs[name], start, reference) for name in runs})
    rows = [(label.format(**sizes), key, fmt) for label, key, fmt, _ in TABLE_ROWS]
    width = max(len(r[0]) for r in rows)
    cell = max(10, *(len(c) + 2 for c in columns))
    lines = [f"{'':<{width}}" + "".join(f"{c:>{cell}}" for c in columns), "-" * (width + cell * len(columns))]
    for label, key, fmt in rows:
        cells = [_cell(fmt, v.get(key)) for v in columns.values()]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    return "\n".join(lines)


def _cell(fmt: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return fmt.format(value)


def at_matched_learning(
    start: dict, runs: dict[str, list[dict]], method: str, other: str = REFERENCE
) -> Optional[dict[str, Any]]:
    """``method`` against ``other`` (plain SFT unless named) at the learning both reach (the lower of their best NLL
    reductions, as a share of SFT's): each one's refusal there (interpolated per prompt between checkpoints) and the
    paired difference with its 95% bootstrap interval over the prompts; ``None`` without SFT's run (the learning
    scale), or when either learned nothing."""
    from .report import _interval, bootstrap_mean, matched, run_path

    if REFERENCE not in runs or method not in runs or other not in runs:
        return None
    nll0 = start["cot_nll"]
    ref = _best_reduction(start, runs[REFERENCE][0])
    own, theirs_best = _best_reduction(start, runs[method][0]), _best_reduction(start, runs[other][0])
    if ref <= 0 or own <= 0 or theirs_best <= 0:
        return None
    level = min(own, theirs_best) / ref * (1 - 1e-9)  # reached by both paths (each reaches its own best)
    ours = matched(run_path(runs[method][0], start), nll0, ref, level)
    theirs = matched(run_path(runs[other][0], start), nll0, ref, level)
    diff = bootstrap_mean([ours["flags"]], np.random.default_rng(0), other=[theirs["flags"]])
    lo, hi = _interval(diff)
    return {
        "learning": own / ref,
        "level": level,
        "refusal": float(ours["flags"].mean()),
        "sft_refusal": float(theirs["flags"].mean()),
        "difference": float(ours["flags"].mean() - theirs["flags"].mean()),
        "interval": (lo, hi),
    }


def _separated(interval: tuple[float, float], other: str = "SFT") -> str:
    lo, hi = interval
    return f"above {other}" if lo > 0 else f"below {other}" if hi < 0 else f"not separated from {other}"


def verdicts(args: Any, start: dict, runs: dict[str, list[dict]]) -> list[str]:
    """Plain-language reading of the table: SFT's erosion, then each method against SFT at matched learning, then
    SLowED against its learning-rate twin — saying so where a method does not behave as expected."""
    n = args.safety_limit
    first = start["refusal_ratio"]
    out = []
    if REFERENCE in runs:
        end = runs[REFERENCE][0]["checkpoints"][-1]["refusal_ratio"]
        lost = round((first - end) * n)
        if lost <= 0:
            out.append(
                f"Plain SFT kept its refusals in this budget ({first:.3f} → {end:.3f}); the contrast needs more "
                "steps (--max_steps) or a higher --learning_rate."
            )
        else:
            out.append(
                f"Plain SFT erodes safety: refusals {first:.3f} → {end:.3f} ({lost} of {n} held-out harmful prompts "
                "no longer refused)."
            )
    for method in (m for m in runs if m != REFERENCE):
        cmp = at_matched_learning(start, runs, method)
        name = column_name(method)
        if cmp is None:
            if REFERENCE in runs:
                out.append(f"{name}: learned nothing measurable (held-out NLL did not fall); no comparison.")
            continue
        lo, hi = cmp["interval"]
        out.append(
            f"{name}: reaches {cmp['learning']:.0%} of SFT's learning. At {min(cmp['learning'], 1):.0%} of it SFT "
            f"keeps {cmp['sft_refusal']:.3f} of the refusals and {name} {cmp['refusal']:.3f}: "
            f"{cmp['difference']:+.3f} [95% {lo:+.3f}, {hi:+.3f}], {_separated(cmp['interval'])}."
        )
    if "slowed" in runs and "sft lr×γ" in runs:
        a = runs["slowed"][0]["checkpoints"][-1]
        b = runs["sft lr×γ"][0]["checkpoints"][-1]
        out.append(
            f"SLowED against plain SFT at lr × γ = {args.learning_rate * args.slow_factor:.0e}: refusals "
            f"{a['refusal_ratio']:.3f} vs {b['refusal_ratio']:.3f}, held-out NLL {a['cot_nll']:.3f} vs "
            f"{b['cot_nll']:.3f}. Under Adam, Slow Tuning's γ is a learning-rate change: what SLowED keeps, it keeps "
            "by learning less (docs/results.md: −0.000 [−0.000, +0.000] at every checkpoint of the frontier)."
        )
    cmp = at_matched_learning(start, runs, "anchored", "sft lr×γ")
    if cmp is not None:
        lo, hi = cmp["interval"]
        out.append(
            f"SFT + anchor against SFT lr×γ (the safety a lower learning rate buys) at {cmp['level']:.0%} of SFT's "
            f"learning, which both reach: {cmp['refusal']:.3f} vs {cmp['sft_refusal']:.3f}, {cmp['difference']:+.3f} "
            f"[95% {lo:+.3f}, {hi:+.3f}], {_separated(cmp['interval'], 'SFT lr×γ')} at n = {n} (the frontier, 3 seeds "
            "and 128 prompts: +0.047 [+0.017, +0.082] against SFT at lr 1e-5)."
        )
    return out
