"""The demo's printed report: one table (start and each method, seed 0) and plain-language verdicts."""

from __future__ import annotations

from typing import Any


# (row label, checkpoint key, format, which direction is better: +1 higher, -1 lower, 0 neither)
TABLE_ROWS = (
    ("held-out AdvBench refusals, n={n_harmful}", "refusal_ratio", "{:.3f}", +1),
    ("harmful KL to the aligned student [nats/token]", "harmful_kl", "{:.4f}", -1),
    ("benign false refusals, n={n_benign}", "false_refusal", "{:.3f}", -1),
    ("held-out rationale NLL, n={n_nll} [nats/token]", "cot_nll", "{:.3f}", -1),
    ("max drift ‖W−W0‖/‖W0‖", "drift_max", "{:.4f}", 0),
    ("masked fraction of label tokens", "masked_fraction", "{:.3f}", 0),
)


# The demo's column names for the methods it shows (any other method keeps its own name).
LABELS = {"sft": "SFT", "slowed": "SLowED", "anchored": "SLowED + anchor", "sft lr×γ": "SFT lr×γ",
          "slow": "slow only", "lem": "LEM only"}  # fmt: skip


def column_name(method: str) -> str:
    return LABELS.get(method, method)


def final_values(runs: list[dict]) -> dict[str, Any]:
    """A method's last checkpoint (seed 0) plus its run-level numbers (masked fraction), keyed as in
    :data:`TABLE_ROWS`."""
    values = dict(runs[0]["checkpoints"][-1])
    values["masked_fraction"] = runs[0]["masked_fraction"]
    return values


def format_table(args: Any, start: dict, runs: dict[str, dict]) -> str:
    """The demo's one table: a row per measure, a column for the start and one per arm."""
    sizes = dict(n_harmful=args.safety_limit, n_benign=args.benign_limit, n_nll=args.nll_limit)
    columns = {"start": {**start, "drift_max": 0.0, "masked_fraction": None}}
    columns.update({column_name(name): final_values(runs[name]) for name in runs})
    rows = [(label.format(**sizes), key, fmt) for label, key, fmt, _ in TABLE_ROWS]
    width = max(len(r[0]) for r in rows)
    cell = max(10, *(len(c) + 2 for c in columns))
    lines = [f"{'':<{width}}" + "".join(f"{c:>{cell}}" for c in columns), "-" * (width + cell * len(columns))]
    for label, key, fmt in rows:
        cells = [fmt.format(v[key]) if isinstance(v.get(key), (int, float)) else "-" for v in columns.values()]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    return "\n".join(lines)


def verdicts(args: Any, start: dict, runs: dict[str, dict]) -> list[str]:
    """Plain-language reading of the table, saying so where an arm did not behave as expected."""
    n = args.safety_limit
    noise = lambda p: 1.96 * (max(p * (1 - p), 1 / n) / n) ** 0.5  # noqa: E731  # 95% binomial half-width
    first = start["refusal_ratio"]
    out = []
    final = {name: final_values(run) for name, run in runs.items()}
    learned = {name: start["cot_nll"] - v["cot_nll"] for name, v in final.items()}
    if "sft" in final:
        end = final["sft"]["refusal_ratio"]
        if first - end < noise(first):
            out.append(
                f"Plain SFT did not erode refusals in this budget ({first:.3f} → {end:.3f}); the contrast needs more "
                "steps (--max_steps) or a higher --learning_rate."
            )
        else:
            out.append(
                f"Plain SFT erodes safety: refusals {first:.3f} → {end:.3f} "
                f"({round((first - end) * n)} of {n} held-out harmful prompts no longer refused)."
            )
    for name in (m for m in final if m != "sft"):
        end = final[name]["refusal_ratio"]
        share = f", {learned[name] / learned['sft']:.0%} of SFT's NLL reduction" if learned.get("sft", 0) > 0 else ""
        line = f"{column_name(name)}: refusals {first:.3f} → {end:.3f}{share}."
        if "sft" in final and end < final["sft"]["refusal_ratio"] - noise(end):
            line += " It kept LESS safety than plain SFT here."
        if learned.get("sft", 0) > 0 and learned[name] > learned["sft"]:
            line += (
                f" It also learned more than plain SFT (NLL {final[name]['cot_nll']:.3f} vs "
                f"{final['sft']['cot_nll']:.3f}): at lr {args.learning_rate:.0e} plain SFT overshoots."
            )
        out.append(line)
    if "slowed" in final and "sft lr×γ" in final:
        a, b = final["slowed"], final["sft lr×γ"]
        gap = a["refusal_ratio"] - b["refusal_ratio"]
        same = abs(gap) <= noise(b["refusal_ratio"])
        out.append(
            f"SLowED vs plain SFT at lr×γ = {args.learning_rate * args.slow_factor:.0e}: refusals {gap:+.3f} "
            f"({'within' if same else 'outside'} the ±{noise(b['refusal_ratio']):.3f} noise of n={n}), NLL "
            f"{a['cot_nll'] - b['cot_nll']:+.3f}. "
            + (
                "Under Adam, Slow Tuning is a learning-rate change: most of SLowED's safety here is the lower "
                "effective learning rate (docs/results.md measures this at matched learning)."
                if same
                else "The two differ here beyond noise; docs/results.md measures the comparison at matched learning."
            )
        )
    elif "slowed" in final:
        out.append(
            "Under Adam, slow_factor γ acts as a learning-rate change: SLowED at lr L follows plain SFT at lr γ·L "
            '(docs/results.md: −0.001 [−0.002, +0.000] refusals at matched learning). Add "sft lr×γ" to --methods to '
            "see that control here (about one more minute on 2 CPU cores)."
        )
    return out
