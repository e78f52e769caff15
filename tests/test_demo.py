"""The demo: its arguments, table and verdicts (fast), and the whole demo on the embedded model (slow)."""

from __future__ import annotations

import json

import pytest

from slowed_peft.scripts.demo import DemoArguments, run
from slowed_peft.scripts.demo_report import format_table, verdicts


def _run_record(label: str, refusal: float, nll: float, kl: float = 0.1, masked: float = 0.0) -> dict:
    last = {
        "step": 4,
        "refusal_ratio": refusal,
        "harmful_kl": kl,
        "false_refusal": 0.02,
        "cot_nll": nll,
        "acc/svamp": 0.125,
        "drift_max": 0.01,
    }
    return {"settings": {"label": label}, "checkpoints": [{"step": 0}, last], "masked_fraction": masked}


START = {"step": 0, "refusal_ratio": 0.844, "harmful_kl": 0.0, "false_refusal": 0.08, "cot_nll": 1.06, "acc/svamp": 0.0}


def test_table_has_a_column_per_arm_and_a_row_per_measure():
    args = DemoArguments(arms=["sft", "slowed"])
    runs = {"sft": _run_record("SFT", 0.531, 0.897), "slowed": _run_record("SLowED", 0.812, 0.752, 0.004, 0.575)}
    lines = format_table(args, START, runs).splitlines()
    assert lines[0].split() == ["start", "SFT", "SLowED"]
    rows = {line.split("  ")[0]: line.split()[-3:] for line in lines[2:]}
    assert rows["held-out AdvBench refusals, n=64"] == ["0.844", "0.531", "0.812"]
    assert rows["masked fraction of label tokens"] == ["-", "0.000", "0.575"]
    assert rows["max drift ‖W−W0‖/‖W0‖"] == ["0.0000", "0.0100", "0.0100"]
    assert len(lines) == 2 + 7


def test_verdicts_say_what_happened_including_the_unexpected():
    args = DemoArguments(arms=["sft", "slowed", "sft_low_lr"])
    runs = {
        "sft": _run_record("SFT", 0.531, 0.897),
        "slowed": _run_record("SLowED", 0.812, 0.752),
        "sft_low_lr": _run_record("SFT lr×γ", 0.812, 0.754),
    }
    text = verdicts(args, START, runs)
    assert "20 of 64 held-out harmful prompts no longer refused" in text[0]
    assert "learned more than plain SFT" in text[1] and "LESS" not in text[1]
    assert "+0.000 (within" in text[-1] and "learning-rate change" in text[-1]

    no_erosion = {"sft": _run_record("SFT", 0.83, 0.9), "slowed": _run_record("SLowED", 0.60, 0.95)}
    text = verdicts(DemoArguments(arms=["sft", "slowed"]), START, no_erosion)
    assert text[0].startswith("Plain SFT did not erode refusals")
    assert "kept LESS safety than plain SFT" in text[1]
    assert "Add sft_low_lr to --arms" in text[-1]


def test_arguments_are_checked_and_the_control_arm_runs_at_lr_times_gamma():
    with pytest.raises(ValueError, match="nope"):
        DemoArguments(arms=["sft", "nope"])
    with pytest.raises(ValueError, match="max_steps"):
        DemoArguments(max_steps=0)
    args = DemoArguments(learning_rate=5e-4, slow_factor=0.1)
    assert args.arm_settings("sft_low_lr") == {**args.arm_settings("sft"), "label": "SFT lr×γ", "learning_rate": 5e-5}
    assert args.arm_settings("slowed")["learning_rate"] == 5e-4
    align = args.align_arguments()  # its held-out check is the start column: same prompts, same length
    assert align.eval_limit >= args.safety_limit and align.safety_max_new_tokens == args.safety_max_new_tokens


def test_demo_refuses_unknown_flags_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--no-such-flag-xyz", "1"])
    assert exit_info.value.code == 2 and "--no-such-flag-xyz" in capsys.readouterr().err


def test_demo_without_data_names_the_setting_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="SLOWED_DATA_DIR"):
        run(["--output_dir", str(tmp_path / "demo")])
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_end_to_end_on_the_embedded_model(tmp_path, shared_model_cache):
    small = ["--safety_limit", "4", "--benign_limit", "4", "--nll_limit", "2", "--reasoning_limit", "2"]
    align = ["--align_harmful_limit", "8", "--align_benign_limit", "8", "--align_benign_max_new_tokens", "16"]
    steps = [
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--batch_size",
        "2",
        "--reasoning_max_new_tokens",
        "16",
    ]
    report = run(["--output_dir", str(tmp_path), "--arms", "sft", "slowed", "sft_low_lr", *small, *align, *steps])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists() and (tmp_path / "over_steps.png").exists()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["table"] == report["table"] and len(saved["verdicts"]) == 4
    checkpoints = [r["step"] for r in report["runs"]["slowed"]["checkpoints"]]
    assert checkpoints == [0, 1, 2]
    assert report["runs"]["sft_low_lr"]["settings"]["learning_rate"] == pytest.approx(5e-5)
