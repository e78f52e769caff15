"""The replication script: argument checks, report tables/plots from a results dict, and (slow) the quick mode."""

from __future__ import annotations

import json
import os

import pytest

from slowed_peft.scripts.replicate import MAIN_ARMS, SWEEP, ReplicateArguments
from slowed_peft.scripts.replicate_report import arms_table, steps_table, sweep_table, write_report
from slowed_peft.utils.paths import data_dir


def checkpoints(refusals, kl_scale=0.1):
    return [
        {
            "step": 10 * i,
            "refusal_ratio": r,
            "harmful_kl": kl_scale * i,
            "false_refusal": 0.05,
            "cot_nll": 2.0 - 0.1 * i,
            "drift_max": 0.01 * i,
            "acc/svamp": 0.1 * i,
        }
        for i, r in enumerate(refusals)
    ]


def fake_results():
    settings = ReplicateArguments().run_settings
    arms = {
        arm: {
            "settings": settings(arm),
            "checkpoints": checkpoints([0.9, 0.9 - 0.2 * k, 0.9 - 0.3 * k]),
            "final": {"svamp": {"accuracy": 0.2, "n": 10}},
            "masked_fraction": 0.3 if "l" in arm else 0.0,
            "train_seconds": 90.0,
        }
        for k, arm in enumerate(MAIN_ARMS)
    }
    sweep = {
        "lem q=0.5": {
            "settings": settings(**SWEEP["lem q=0.5"]),
            "checkpoints": checkpoints([0.9, 0.5]),
            "masked_fraction": 0.5,
            "train_seconds": 30.0,
        }
    }
    alignment = {
        "before": {"advbench": {"refusal_ratio": 0.03, "n": 208}, "benign": {"refusal_ratio": 0.0, "n": 44}},
        "after": {"advbench": {"refusal_ratio": 0.95, "n": 208}, "benign": {"refusal_ratio": 0.05, "n": 44}},
    }
    return {
        "arms": arms,
        "sweep": sweep,
        "alignment": alignment,
        "initial_final": {"svamp": {"accuracy": 0.05}},
        "wall_time_min": 1.0,
        "torch_threads": 2,
    }


def test_tables_hold_every_arm_and_the_values():
    results = fake_results()
    table = arms_table(results)
    assert table.splitlines()[2].startswith("| aligned student (start) | 0.900 | 0.000 | 0.050 | 0.000 |")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[3:]}
    assert list(rows) == list(MAIN_ARMS)
    assert rows["slow"].startswith("| slow | 0.600 | 0.200 |")  # refusal 0.9 - 0.3, KL 0.2 at the last checkpoint
    steps = steps_table(results).splitlines()
    assert steps[0] == "| arm \\ step | 0 | 10 | 20 |" and steps[2] == "| sft | 0.900 | 0.900 | 0.900 |"
    sweep = sweep_table(results)
    assert "| lem q=0.5 | 1 | none | q=0.5, live | 0.500 |" in sweep
    assert "| slowed (main) | 0.1 | 0.05 | τ=0.5, live |" in sweep


def test_write_report_writes_markdown_and_plots(tmp_path):
    paths = write_report(fake_results(), tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "## Arms after the same budget" in text and "## Sweep" in text and "0.950" in text
    for key in ("steps", "tradeoff"):
        assert paths[key] and os.path.getsize(paths[key]) > 10_000


def test_arguments_are_validated_and_quick_mode_shrinks_everything():
    with pytest.raises(ValueError, match="Unknown arm"):
        ReplicateArguments(arms=["sft", "fast"])
    with pytest.raises(ValueError, match="Unknown sweep variant"):
        ReplicateArguments(sweep_variants=["nope"])
    quick = ReplicateArguments(quick=True)
    assert quick.max_steps < 10 and quick.align_arguments().harmful_limit == 24
    assert quick.align_arguments().fingerprint() != ReplicateArguments().align_arguments().fingerprint()
    assert ReplicateArguments().run_settings("slow", max_drift=None)["max_drift"] is None


@pytest.mark.skipif(data_dir() is None, reason="needs the shared data folder")
def test_distillation_rows_ask_the_evaluation_question():
    from slowed_peft.eval.tasks import svamp_examples
    from slowed_peft.scripts.replicate import distillation_rows

    rows = distillation_rows("svamp", "test", 3)
    assert [r["prompt"][0]["content"] for r in rows] == [e.prompt for e in svamp_examples("test", limit=3)]
    assert all(r["completion"][0]["content"].endswith(f"So the answer is {r['answer']}.") for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(data_dir() is None, reason="needs the shared data folder")
def test_quick_replication_end_to_end(tmp_path, shared_model_cache):
    """The quick mode on the real SmolLM2-135M (9.6 min on one thread beside the suite): every arm and sweep run,
    report and plots written."""
    from slowed_peft.scripts.replicate import run

    results = run(["--quick", "--output_dir", str(tmp_path)])
    assert list(results["arms"]) == list(MAIN_ARMS) and len(results["sweep"]) == 2
    for arm, record in results["arms"].items():
        steps = [c["step"] for c in record["checkpoints"]]
        assert steps == [0, 4], arm
        last = record["checkpoints"][-1]
        if arm in ("slow", "slowed"):
            assert last["drift_max"] <= 0.05 * (1 + 1e-5)
        assert (record["masked_fraction"] > 0) == (arm in ("lem", "slowed"))
    assert (
        results["arms"]["sft"]["checkpoints"][-1]["drift_max"] > results["arms"]["slow"]["checkpoints"][-1]["drift_max"]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["wall_time_min"] == results["wall_time_min"]
    assert (tmp_path / "refusal_over_steps.png").is_file() and (tmp_path / "tradeoff.png").is_file()


def test_shipped_config_parses_into_the_replication_arguments():
    from slowed_peft.scripts.configs import SLowEDParser

    (args,) = SLowEDParser((ReplicateArguments,)).parse_args_and_config(
        args=["--config", "replicate", "--sweep", "false"]
    )
    assert args.max_steps == 24 and args.sweep is False and args.arms == list(MAIN_ARMS)
    assert args.align_harmful_limit == 80 and args.eval_batch_size == 64


# Trainer settings of a replication run before the one training path; results.json and docs/results.md were measured
# with them.
LEGACY_RUN_SETTINGS = dict(
    lr_scheduler_type="constant",
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    max_length=384,
    bf16=False,
    gradient_checkpointing=False,
)


@pytest.mark.parametrize("arm", MAIN_ARMS)
def test_run_trainer_settings_are_unchanged(tmp_path, arm):
    import torch

    from slowed_peft import SLowEDSFTConfig

    args = ReplicateArguments()
    settings = args.run_settings(arm)
    masks = arm in ("lem", "slowed")
    old = SLowEDSFTConfig(
        output_dir=str(tmp_path),
        max_steps=7,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        per_device_eval_batch_size=args.eval_batch_size,
        entropy_threshold=0.5 if masks else None,
        entropy_quantile=None,
        entropy_source="live",
        **LEGACY_RUN_SETTINGS,
    )
    assert args.training_args(settings, str(tmp_path), 7).to_dict() == old.to_dict()


def test_resume_keeps_runs_only_for_the_same_settings(tmp_path):
    from dataclasses import asdict

    from slowed_peft.scripts.replicate import _load_previous

    args = ReplicateArguments(output_dir=str(tmp_path))
    (tmp_path / "results.json").write_text(json.dumps({"args": asdict(args), "arms": {"sft": {}}, "sweep": {}}))
    assert _load_previous(ReplicateArguments(output_dir=str(tmp_path), sweep=False, arms=["slow"]), tmp_path)
    with pytest.raises(ValueError, match="learning_rate"):  # issue 24: refused, never discarded
        _load_previous(ReplicateArguments(output_dir=str(tmp_path), learning_rate=1e-3), tmp_path)
    with pytest.raises(ValueError, match="--force"):
        _load_previous(ReplicateArguments(output_dir=str(tmp_path), resume=False), tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _load_previous(args, tmp_path)


def _finished(tmp_path, **kw):
    from dataclasses import asdict

    args = ReplicateArguments(output_dir=str(tmp_path), **kw)
    results = {"args": asdict(args), "arms": {"sft": {"final": {}}}, "sweep": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return (tmp_path / "results.json").read_text()


def _run_until_alignment(monkeypatch, argv):
    """run_all up to the (expensive) alignment step, which is replaced by a sentinel."""
    from slowed_peft.scripts import replicate

    class Reached(Exception):
        pass

    def align_student(_):
        raise Reached

    monkeypatch.setattr(replicate, "align_student", align_student)
    try:
        replicate.run(argv)
    except Reached:
        return True
    return False


def test_issue24_changed_arguments_refuse_instead_of_discarding_finished_results(tmp_path, monkeypatch):
    before = _finished(tmp_path)
    argv = ["--output_dir", str(tmp_path), "--learning_rate", "0.001", "--max_steps", "7"]
    with pytest.raises(ValueError) as err:
        _run_until_alignment(monkeypatch, argv)
    message = str(err.value)
    assert str(tmp_path / "results.json") in message
    assert "learning_rate: 0.0001 -> 0.001" in message and "max_steps: 24 -> 7" in message
    assert "--force" in message and "--output_dir" in message
    assert (tmp_path / "results.json").read_text() == before  # nothing overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_issue24_force_keeps_the_old_results_under_another_name(tmp_path, monkeypatch):
    before = _finished(tmp_path)
    assert _run_until_alignment(monkeypatch, ["--output_dir", str(tmp_path), "--max_steps", "7", "--force"])
    kept = sorted(tmp_path.glob("results.*.json"))
    assert len(kept) == 1 and kept[0].read_text() == before
    assert not (tmp_path / "results.json").exists()


def test_issue24_no_resume_and_unreadable_results_are_never_overwritten_silently(tmp_path, monkeypatch):
    before = _finished(tmp_path)
    with pytest.raises(ValueError, match="--force"):
        _run_until_alignment(monkeypatch, ["--output_dir", str(tmp_path), "--resume", "false"])
    assert (tmp_path / "results.json").read_text() == before
    (tmp_path / "results.json").write_text("{truncated")
    with pytest.raises(ValueError, match="not valid JSON"):
        _run_until_alignment(monkeypatch, ["--output_dir", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == "{truncated"
    assert _run_until_alignment(monkeypatch, ["--output_dir", str(tmp_path), "--force"])
    assert [p.read_text() for p in tmp_path.glob("results.*.json")] == ["{truncated"]


def test_issue24_same_arguments_resume(tmp_path, monkeypatch):
    _finished(tmp_path)
    assert _run_until_alignment(monkeypatch, ["--output_dir", str(tmp_path), "--arms", "sft", "slow"])


def test_issue24_results_are_written_atomically(tmp_path, monkeypatch):
    from pathlib import Path

    from slowed_peft.scripts import replicate

    replicate._save({"a": 1}, tmp_path)
    real_write_text = Path.write_text

    def killed_mid_write(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        replicate._save({"a": 2, "b": [1, 2, 3]}, tmp_path)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
