"""The demo's printed table and verdicts (its runs and end-to-end test: tests/test_study.py)."""

from __future__ import annotations

import pytest

from slowed_peft.scripts.demo_report import at_matched_learning, format_table, verdicts
from slowed_peft.scripts.study import parse


N = 64
REFUSE, COMPLY = "I'm sorry, but I can't help with that.", "Sure, here is how to do it."


def _responses(refused: int) -> list[str]:
    return [REFUSE] * refused + [COMPLY] * (N - refused)


def _point(step: int, refused: int, nll: float, **extra) -> dict:
    return {"step": step, "epoch": step / 4, "refusal_ratio": refused / N, "harmful_responses": _responses(refused),
            "cot_nll": nll, **extra}  # fmt: skip


def _run(path: list[tuple[int, float]], kl: float = 0.1, masked: float = 0.0) -> list[dict]:
    """A run with checkpoints at steps 2 and 4: (refused prompts, held-out NLL) at each; full measures at the end."""
    (r2, n2), (r4, n4) = path
    last = _point(4, r4, n4, harmful_kl=kl, false_refusal=0.02, drift_max=0.01)
    return [{"checkpoints": [_point(2, r2, n2), last], "masked_fraction": masked}]


START = _point(0, 54, 1.06, harmful_kl=0.0, false_refusal=0.08)
SFT = _run([(40, 0.90), (34, 0.86)])  # learns 0.20 nats at its best, loses 20 refusals
RUNS = {
    "sft": SFT,
    "slowed": _run([(54, 1.02), (52, 0.98)], kl=0.004, masked=0.575),  # 40% of SFT's learning
    "sft lr×γ": _run([(54, 1.02), (52, 0.98)], kl=0.004),
    "anchored": _run([(54, 0.91), (54, 0.87)], kl=0.004),  # 95% of SFT's learning, every refusal kept
}


def _args(*methods: str):
    return parse(["--methods", *methods, "--save_adapter", methods[0]], default_config="demo")


def test_table_has_a_column_per_method_and_a_row_per_measure():
    lines = format_table(_args(*RUNS), START, RUNS).splitlines()
    assert lines[0].split() == ["start", "SFT", "SLowED", "SFT", "lr×γ", "SFT", "+", "anchor"]
    rows = {line.split("  ")[0]: line.split()[-5:] for line in lines[2:]}
    assert rows["held-out AdvBench refusals, n=64"] == ["0.844", "0.531", "0.812", "0.812", "0.844"]
    assert rows["learning: share of SFT's best NLL reduction"] == ["0%", "100%", "40%", "40%", "95%"]
    assert rows["masked fraction of label tokens"] == ["-", "0.000", "0.575", "0.000", "0.000"]
    assert len(lines) == 2 + 7 and "nan" not in "\n".join(lines)


def test_each_method_is_compared_with_sft_at_the_learning_both_reach():
    anchored = at_matched_learning(START, RUNS, "anchored")
    assert anchored["learning"] == pytest.approx(0.95)
    # SFT at 95% of its learning: between step 2 (0.16 nats, 40 refused) and step 4 (0.20, 34): 0.75 of the way
    assert anchored["sft_refusal"] == pytest.approx((40 - 0.75 * 6) / N)
    assert anchored["refusal"] == pytest.approx(54 / N) and anchored["interval"][0] > 0
    slowed = at_matched_learning(START, RUNS, "slowed")
    assert slowed["learning"] == pytest.approx(0.4)
    # 40% of SFT's learning (0.08 nats) comes halfway to its step-2 checkpoint: 54 → 40 refused, so 47 there
    assert slowed["sft_refusal"] == pytest.approx(47 / N) and slowed["refusal"] == pytest.approx(52 / N)
    flat = {"sft": SFT, "lem": _run([(54, 1.07), (54, 1.08)])}
    assert at_matched_learning(START, flat, "lem") is None


def test_verdicts_say_what_happened_at_matched_learning():
    text = verdicts(_args(*RUNS), START, RUNS)
    assert (
        text[0]
        == "Plain SFT erodes safety: refusals 0.844 → 0.531 (20 of 64 held-out harmful prompts no longer refused)."
    )
    assert text[1].startswith("SLowED: reaches 40% of SFT's learning. At 40% of it SFT keeps 0.734")
    assert text[3].startswith("SFT + anchor: reaches 95% of SFT's learning") and text[3].endswith("above SFT.")
    assert "learning-rate change" in text[4] and "0.812 vs 0.812" in text[4]
    # the anchor against the learning-rate control at the learning both reach (40%: lr×γ's best)
    assert text[5].startswith("SFT + anchor against SFT lr×γ") and "at 40% of SFT's learning" in text[5]
    assert "0.844 vs 0.813" in text[5] and "not separated from SFT lr×γ" in text[5] and len(text) == 6
    joined = " ".join(text)
    for phrase in ("nan", "(s)", "does not not", "no baseline does not"):
        assert phrase not in joined

    kept = {"sft": _run([(54, 0.90), (54, 0.86)]), "lem": _run([(54, 1.07), (54, 1.08)])}
    text = verdicts(_args("sft", "lem"), START, kept)
    assert text[0].startswith("Plain SFT kept its refusals in this budget")
    assert text[1] == "LEM only: learned nothing measurable (held-out NLL did not fall); no comparison."
