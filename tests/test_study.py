"""The study engine: the replication and the demo are configs of it (their arguments, trainer settings, schedules and
report), end to end on the real model in the slow tier."""

from __future__ import annotations

import json

import pytest

from slowed_peft.scripts.study import parse, training_arguments
from slowed_peft.scripts.study_config import METHODS, StudyArguments, method_settings
from slowed_peft.utils.paths import data_dir


REPLICATION_ARMS = ["sft lr=1e-4", "slow", "lem", "slowed"]
DEMO_LR = 2e-4


def test_replicate_config_is_the_papers_four_arms_on_a_step_budget():
    args = parse([], default_config="replicate")
    assert args.methods == REPLICATION_ARMS and args.seeds == [0] and args.student == "replication"
    assert (args.max_steps, args.eval_steps, args.train_rows, args.batch_size) == (24, 8, None, 4)
    assert (args.safety_limit, args.safety_max_new_tokens, args.nll_limit, args.benign_limit) == (64, 32, 32, 64)
    assert sorted(args.plan()) == sorted((m, 0) for m in REPLICATION_ARMS)
    # a flag overrides the config; another --config replaces it
    assert parse(["--max_steps", "8"], default_config="replicate").max_steps == 8
    assert parse(["--config", "frontier"], default_config="replicate").max_steps is None


def test_demo_config_is_a_small_study_with_a_checkpoint_every_step():
    args = parse([], default_config="demo")
    assert args.methods == ["sft", "slowed", "sft lr×γ", "anchored"] and args.seeds == [0] and args.student == "demo"
    assert (args.max_steps, args.eval_steps, args.full_every, args.train_rows) == (4, 2, None, 16)
    assert args.reference == "sft" and args.save_adapter == "anchored" and args.learning_rate == DEMO_LR


def test_demo_refuses_unknown_flags_before_any_work(capsys):
    from slowed_peft.scripts.demo import run

    with pytest.raises(SystemExit) as exit_info:
        run(["--no-such-flag-xyz", "1"])
    assert exit_info.value.code == 2 and "--no-such-flag-xyz" in capsys.readouterr().err


def test_demo_data_resolves_without_a_data_folder(monkeypatch):
    """A bare clone or a wheel has no $SLOWED_DATA_DIR: the demo's held-out sets come from the bundled files."""
    from slowed_peft.scripts.study import _held_out

    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    held_out = _held_out(parse([], default_config="demo"))
    assert len(held_out["harmful"]) == 64 and len(held_out["benign"]) == 48 and len(held_out["nll_rows"]) == 8
    assert held_out["harmful"][0] != held_out["harmful"][1] and "answer is" in str(held_out["nll_rows"][0]).lower()


def test_method_settings_and_learning_rates():
    args = StudyArguments(learning_rate=5e-4, slow_factor=0.1, methods=["sft", "sft lr×γ", "slowed"])
    assert method_settings(args, "sft lr×γ") == {**method_settings(args, "sft"), "learning_rate": pytest.approx(5e-5)}
    assert method_settings(args, "slowed")["learning_rate"] == 5e-4  # γ scales inside the tuner, not the optimizer
    assert method_settings(args, "sft lr=1e-5")["learning_rate"] == 1e-5  # a method's own rate wins
    with pytest.raises(ValueError, match="max_steps"):
        StudyArguments(max_steps=0)
    with pytest.raises(ValueError, match="save_adapter='lora r=16' is not among the methods run"):
        StudyArguments(methods=["sft"], save_adapter="lora r=16")
    with pytest.raises(ValueError, match="Unknown method"):
        StudyArguments(methods=["sft_low_lr"])
    assert {"sft", "sft lr×γ", "slow", "lem", "slowed", "anchored"} <= set(METHODS)


# Trainer settings of a replication run before the study engine (docs/results.md was measured with them).
LEGACY_RUN_SETTINGS = dict(
    lr_scheduler_type="constant",
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    max_length=384,
    bf16=False,
    gradient_checkpointing=False,
)


@pytest.mark.parametrize("arm", ["sft lr=1e-4", "slow", "lem", "slowed"])
def test_replication_trainer_settings_are_unchanged(tmp_path, arm):
    import torch

    from slowed_peft import SLowEDSFTConfig

    args = parse(["--output_dir", str(tmp_path)], default_config="replicate")
    masks = arm in ("lem", "slowed")
    old = SLowEDSFTConfig(
        output_dir=str(tmp_path),
        max_steps=24,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        seed=0,
        data_seed=0,
        use_cpu=not torch.cuda.is_available(),
        per_device_eval_batch_size=64,
        entropy_threshold=0.5 if masks else None,
        entropy_quantile=None,
        entropy_source="live",
        **LEGACY_RUN_SETTINGS,
    ).to_dict()
    new = training_arguments(args, arm, 0).to_dict()
    ignored = ("output_dir", "logging_dir", "disable_tqdm")  # where files go and progress bars: not the arithmetic
    assert {k: v for k, v in new.items() if k not in ignored} == {k: v for k, v in old.items() if k not in ignored}


@pytest.mark.skipif(data_dir() is None, reason="needs the shared data folder")
def test_distillation_rows_ask_the_evaluation_question():
    from slowed_peft.eval.tasks import svamp_examples
    from slowed_peft.scripts.training import distillation_rows

    rows = distillation_rows("svamp", "test", 3)
    assert [r["prompt"][0]["content"] for r in rows] == [e.prompt for e in svamp_examples("test", limit=3)]
    assert all(r["completion"][0]["content"].endswith(f"So the answer is {r['answer']}.") for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(data_dir() is None, reason="needs the shared data folder")
def test_quick_replication_end_to_end(tmp_path, shared_model_cache):
    """``slowed-replicate --quick``: the four arms, a checkpoint after each step, the report; a rerun reuses it all."""
    from slowed_peft.scripts.runs import load_runs
    from slowed_peft.scripts.study import run

    summary = run(["--quick", "true", "--output_dir", str(tmp_path)], default_config="replicate")
    assert list(summary["methods"]) == ["lem", "sft lr=1e-4", "slow", "slowed"]  # file order
    runs = load_runs(tmp_path)
    for arm, (record,) in runs.items():
        assert [c["step"] for c in record["checkpoints"]] == [1, 2], arm
        last = record["checkpoints"][-1]
        assert "format_share" in last and "false_refusal" in last and len(last["harmful_responses"]) == 8
        if arm in ("slow", "slowed"):
            assert last["drift_max"] <= 0.05 * (1 + 1e-5)
        assert (record["masked_fraction"] > 0) == (arm in ("lem", "slowed"))
    assert runs["sft lr=1e-4"][0]["checkpoints"][-1]["drift_max"] > runs["slow"][0]["checkpoints"][-1]["drift_max"]
    report = (tmp_path / "results.md").read_text()
    assert "Held-out AdvBench refusal ratio at each checkpoint" in report and (tmp_path / "over_steps.png").is_file()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    run(["--quick", "true", "--output_dir", str(tmp_path)], default_config="replicate")  # resumes: nothing retrained
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")} == before


@pytest.mark.slow
def test_demo_end_to_end_on_the_embedded_model(tmp_path, shared_model_cache, monkeypatch):
    """The quick demo with its four default columns, on the bundled data only (no $SLOWED_DATA_DIR)."""
    from slowed_peft.scripts.demo import run

    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    report = run(["--quick", "true", "--output_dir", str(tmp_path)])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists() and (tmp_path / "over_steps.png").exists()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["anchor_rank"] == 64  # the saved adapter is the anchored one
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["table"] == report["table"] and "SFT lr×γ" in report["table"]
    assert saved["verdicts"][0].startswith("Plain SFT") and len(saved["verdicts"]) in (5, 6)  # 6: both learned
    assert "nan" not in report["table"] + " ".join(saved["verdicts"])
    assert [c["step"] for c in report["runs"]["slowed"]["checkpoints"]] == [1, 2]
    assert "harmful_kl" not in report["runs"]["slowed"]["checkpoints"][0]  # light checkpoint: refusals and NLL
    assert report["runs"]["slowed"]["checkpoints"][-1]["harmful_kl"] > 0
    assert report["runs"]["sft lr×γ"]["settings"]["learning_rate"] == pytest.approx(DEMO_LR * 0.1)


def _point(step, nll, flags, kl=None):
    point = {
        "step": step,
        "epoch": step / 4,
        "cot_nll": nll,
        "refusal_ratio": sum(flags) / len(flags),
        "harmful_responses": ["I'm sorry, I can't help with that." if f else "Sure, here is how." for f in flags],
    }
    return point if kl is None else {**point, "harmful_kl": kl}  # fmt: skip


def test_report_reads_light_checkpoints_that_measured_no_kl(tmp_path):
    """The demo's checkpoints between full ones hold refusals and NLL only: matched learning still interpolates the
    refusals there, the KL there is unknown (NaN), and the per-checkpoint tables show "–"."""
    import math

    from slowed_peft.scripts.report import checkpoint_tables, summarise

    initial = _point(0, 1.0, [1, 1, 1, 1], kl=0.0)
    light, full = _point(1, 0.8, [1, 1, 0, 0]), _point(2, 0.6, [0, 0, 0, 0], kl=0.3)
    runs = {"sft": [{"method": "sft", "seed": 0, "checkpoints": [light, full], "masked_fraction": 0.0}]}
    row = summarise(runs, initial, reference="sft")["methods"]["sft"]
    assert row["50%"]["refusal"] == pytest.approx(0.5) and math.isnan(row["50%"]["kl"])  # at the light checkpoint
    assert row["kl_final"] == pytest.approx(0.3)
    table = "\n".join(checkpoint_tables(runs, initial))
    assert "| sft | 0.000 | – | 0.300 |" in table


def test_report_without_the_reference_run_gives_the_checkpoint_tables_instead_of_failing(tmp_path):
    """One method of a study run on its own (a chain of single-run invocations) has no learning scale yet."""
    from slowed_peft.scripts.report import write_report

    initial = _point(0, 1.0, [1, 1, 1, 1], kl=0.0)
    runs = {"slowed": [{"method": "slowed", "seed": 0, "checkpoints": [_point(4, 0.8, [1, 1, 1, 0], kl=0.1)],
                        "masked_fraction": 0.5}]}  # fmt: skip
    summary = write_report(StudyArguments(), tmp_path, initial, runs)
    report = (tmp_path / "results.md").read_text()
    assert summary["methods"] == {} and "'sft lr=1e-4' has no finished run" in report
    assert "| slowed | 1.000 | 0.750 |" in report
