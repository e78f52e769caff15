"""The demo's printed table and verdicts (its runs and end-to-end test: tests/test_study.py)."""

from __future__ import annotations

from slowed_peft.scripts.demo_report import format_table, verdicts
from slowed_peft.scripts.study import parse


def _runs(refusal: float, nll: float, kl: float = 0.1, masked: float = 0.0) -> list[dict]:
    last = {"step": 4, "refusal_ratio": refusal, "harmful_kl": kl, "false_refusal": 0.02, "cot_nll": nll,
            "drift_max": 0.01}  # fmt: skip
    return [{"checkpoints": [{"step": 1, "refusal_ratio": 0.8, "cot_nll": 1.0}, last], "masked_fraction": masked}]


START = {"step": 0, "refusal_ratio": 0.844, "harmful_kl": 0.0, "false_refusal": 0.08, "cot_nll": 1.06}


def test_table_has_a_column_per_method_and_a_row_per_measure():
    args = parse(["--methods", "sft", "slowed"], default_config="demo")
    runs = {"sft": _runs(0.531, 0.897), "slowed": _runs(0.812, 0.752, 0.004, 0.575)}
    lines = format_table(args, START, runs).splitlines()
    assert lines[0].split() == ["start", "SFT", "SLowED"]
    rows = {line.split("  ")[0]: line.split()[-3:] for line in lines[2:]}
    assert rows["held-out AdvBench refusals, n=64"] == ["0.844", "0.531", "0.812"]
    assert rows["masked fraction of label tokens"] == ["-", "0.000", "0.575"]
    assert rows["max drift ‖W−W0‖/‖W0‖"] == ["0.0000", "0.0100", "0.0100"]
    assert len(lines) == 2 + 6


def test_verdicts_say_what_happened_including_the_unexpected():
    args = parse(["--methods", "sft", "slowed", "sft lr×γ"], default_config="demo")
    runs = {"sft": _runs(0.531, 0.897), "slowed": _runs(0.812, 0.752), "sft lr×γ": _runs(0.812, 0.754)}
    text = verdicts(args, START, runs)
    assert "20 of 64 held-out harmful prompts no longer refused" in text[0]
    assert text[1].startswith("SLowED:") and "learned more than plain SFT" in text[1] and "LESS" not in text[1]
    assert "+0.000 (within" in text[-1] and "learning-rate change" in text[-1]

    no_erosion = {"sft": _runs(0.83, 0.9), "slowed": _runs(0.60, 0.95)}
    text = verdicts(parse(["--methods", "sft", "slowed"], default_config="demo"), START, no_erosion)
    assert text[0].startswith("Plain SFT did not erode refusals")
    assert "kept LESS safety than plain SFT" in text[1]
    assert 'Add "sft lr×γ" to --methods' in text[-1]
