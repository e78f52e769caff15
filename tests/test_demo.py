"""The demo's report helpers (fast) and the whole demo on the embedded model (slow)."""

from __future__ import annotations

import json

import pytest

from slowed_peft.eval import EvalReport
from slowed_peft.scripts.demo import format_rows, summary_rows


def test_summary_rows_and_table():
    before = EvalReport(
        "m",
        None,
        safety={
            "probes": {"refusal_ratio": 0.1, "harmful_kl": None, "n": 4},
            "benign": {"refusal_ratio": 0.25, "harmful_kl": None, "n": 4},
        },
        reasoning={"demo": {"accuracy": 0.0, "n": 8}},
    )
    after = EvalReport(
        "m",
        "a",
        safety={
            "probes": {"refusal_ratio": 0.2, "harmful_kl": 0.05, "n": 4},
            "benign": {"refusal_ratio": 0.0, "harmful_kl": None, "n": 4},
        },
        reasoning={"demo": {"accuracy": 0.5, "n": 8}},
    )
    history = [
        {"step": 1, "slowed/drift_max": 0.01, "lem/masked_fraction": 0.2},
        {"step": 2, "slowed/drift_max": 0.02, "lem/masked_fraction": 0.4},
    ]
    rows = {name: (b, a) for name, b, a in summary_rows(before, after, history)}
    assert rows["reasoning accuracy (demo, n=8)"] == (0.0, 0.5)
    assert rows["refusal ratio (probes), n=4"] == (0.1, 0.2)
    assert rows["false refusals (benign), n=4"] == (0.25, 0.0)
    assert rows["harmful_kl (probes) [nats/token]"] == (0.0, 0.05)
    assert rows["max weight drift ‖W−W0‖/‖W0‖"] == (0.0, 0.02)
    assert rows["masked fraction of label tokens (mean)"][1] == pytest.approx(0.3)
    table = format_rows(summary_rows(before, after, history))
    assert "0.500" in table and "before" in table.splitlines()[0]


@pytest.mark.slow
def test_demo_end_to_end_on_the_embedded_model(tmp_path):
    from slowed_peft.scripts.demo import run

    report = run(["--output_dir", str(tmp_path), "--max_steps", "2", "--eval_limit", "2", "--max_new_tokens", "16"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "before_after.png").exists() and (tmp_path / "adapter" / "training_curves.png").exists()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["after"]["safety"]["probes"]["harmful_kl"] >= 0 and report["arm"] == "slowed"


def test_demo_refuses_unknown_flags_before_any_work(capsys):
    from slowed_peft.scripts.demo import run

    with pytest.raises(SystemExit) as exit_info:
        run(["--no-such-flag-xyz", "1"])
    assert exit_info.value.code == 2 and "--no-such-flag-xyz" in capsys.readouterr().err
