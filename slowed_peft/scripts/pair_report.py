"""The pairs a study names (``--comparisons "A vs B"``), each compared where it matters: A minus B in refusals at the
highest level of SFT's learning both reach (paired bootstrap over the same prompts, seeds apart) and at the end of
training, under the marker and the strict judge, with one verdict line per pair.

The anchor section compares ``anchored`` with everything; this is for the other questions a study asks — the
low-rank anchor against LoRA at its own learning rate, one learning rate of a grid against another.
"""

from __future__ import annotations

from .anchor_report import JUDGE_NAMES, judge_cells, judged_tables, matched_difference
from .report import REFERENCE
from .study_config import parse_comparison


__all__ = ["comparison_section", "pair_verdict"]


def pair_verdict(levels: dict, rows: dict, a: str, b: str) -> str:
    """``a`` against ``b`` at matched learning (marker judge): above, below or not separated (the interval holds 0);
    where the two share no level of SFT's learning, the line says how far each got."""
    from ..eval.report import format_value as f

    m = matched_difference(levels, a, b)
    if m is None:
        return (
            f"**{a} vs {b}: no shared level of SFT's learning** — best learning {f(rows[a]['learning_best'])} vs "
            f"{f(rows[b]['learning_best'])}; compare at the end only."
        )
    level, d, lo, hi = m
    word = "above" if lo > 0 else "below" if hi < 0 else "not separated from"
    return f"**{a} {word} {b}** at {level:.0%} of SFT's learning (marker judge): {d:+.3f} [{lo:+.3f}, {hi:+.3f}]."


def comparison_section(
    runs: dict[str, list[dict]], initial: dict, ref_reduction: float, pairs: list[str], reference: str = REFERENCE
) -> list[str]:
    """Markdown lines: a table of the named pairs (learning, refusal differences under both judges, harmful KL and
    attack success at the end) and their verdicts; a pair with a method not yet run says so."""
    from ..eval.report import format_value as f

    judged = judged_tables(runs, initial, ref_reduction, reference)
    rows, levels = judged["marker"]
    lines = [
        "## Paired comparisons",
        "",
        "A minus B, 95% paired bootstrap over the same prompts (seeds apart): refusal at the highest level of SFT's "
        "learning both reach, then at the end of training, under the marker judge and the strict judge.",
        "",
        "| A − B | seeds | learning best, A / B | marker: matched learning | marker: end | strict: matched learning | "
        "strict: end | harmful KL end, A / B | attack success end, A / B |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    said = []
    for text in pairs:
        a, b = parse_comparison(text)
        missing = [m for m in (a, b) if m not in runs]
        if missing:
            said.append(f"{a} vs {b}: not measured ({', '.join(missing)} not run yet).")
            continue
        cells = judge_cells(runs, judged, b, JUDGE_NAMES, anchor=a)
        ra, rb = rows[a], rows[b]
        lines.append(
            f"| {a} − {b} | {ra['seeds']} / {rb['seeds']} | {f(ra['learning_best'])} / {f(rb['learning_best'])} | "
            f"{' | '.join(cells)} | {f(ra['kl_end'])} / {f(rb['kl_end'])} | {f(ra['asr_end'])} / {f(rb['asr_end'])} |"
        )
        said.append(pair_verdict(levels, rows, a, b))
    return lines + ["", "Verdicts:", ""] + [f"- {v}" for v in said]
