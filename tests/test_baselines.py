"""The baseline arms (lora, ema, l2sp), the 'labels' loss normalisation, and the frontier study's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import ModelConfig

from slowed_peft import SLowEDSFTConfig
from slowed_peft.masking import ParameterEMACallback
from slowed_peft.scripts.arguments import SLowEDArguments, apply_arm_to_training_args, peft_config_for_arm
from slowed_peft.scripts.report import difference, matched, summarise
from slowed_peft.scripts.runs import run_file
from slowed_peft.scripts.study_config import CORE, EXTRA, METHODS, OPT_IN, PRIMARY, StudyArguments, method_settings
from slowed_peft.scripts.training import train_arm

from testing_utils import TRAINER_ARGS, build_char_tokenizer, build_tiny


COMMON = dict(TRAINER_ARGS, per_device_train_batch_size=2)


@pytest.fixture
def setup(tmp_path):
    build_tiny("llama", tmp_path / "tiny")
    tok = build_char_tokenizer(tmp_path / "tiny")
    rows = [{"prompt": f"Q{i}: {i}+{i}=?", "completion": f" {i}+{i} is {2 * i}. So {2 * i}."} for i in range(8)]
    return str(tmp_path / "tiny"), tok, Dataset.from_list(rows)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Recorder(TrainerCallback):
    """The trained (not averaged) trainable weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append(_trainable(model))


def test_ema_arm_saves_the_average_of_the_trained_weights(setup, tmp_path):
    path, tok, ds = setup
    decay = 0.6
    recorder = Recorder()
    ema = ParameterEMACallback(decay)
    seen: list[float] = []

    class Probe(TrainerCallback):  # what a checkpoint evaluator sees through ema.swapped at each step
        def on_step_end(self, args, state, control, model=None, **kwargs):
            with ema.swapped(model) as m:
                seen.append(float(sum(p.double().abs().sum() for n, p in _trainable(m).items())))

    arm = SLowEDArguments(arm="ema", ema_decay=decay)
    trainer = train_arm(
        arm,
        AutoModelForCausalLM.from_pretrained(path),
        tok,
        SLowEDSFTConfig(str(tmp_path / "o"), max_steps=3, **COMMON),
        ds,
        callbacks=[ema, recorder, Probe()],
    )
    expected = {n: torch.zeros_like(t) for n, t in recorder.steps[0].items()}  # the dense delta starts at 0
    sums = []
    for step in recorder.steps:
        expected = {n: decay * expected[n] + (1 - decay) * step[n] for n in expected}
        sums.append(float(sum(t.double().abs().sum() for t in expected.values())))
    final = _trainable(trainer.model)
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-8)
        assert not torch.equal(final[name], recorder.steps[-1][name])  # the average, not the last weights
    assert seen == pytest.approx(sums, rel=1e-5)


def test_ema_swapped_restores_the_trained_weights():
    layer = torch.nn.Linear(3, 2)
    ema = ParameterEMACallback(0.5)
    ema.on_train_begin(None, None, None, model=layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.on_step_end(None, None, None, model=layer)
    trained = layer.weight.detach().clone()
    with ema.swapped(layer):
        torch.testing.assert_close(layer.weight, trained - 0.5)
    torch.testing.assert_close(layer.weight, trained)


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        ParameterEMACallback(decay)


def test_lora_arm_is_peft_lora_on_the_same_layers(setup, tmp_path):
    path, tok, ds = setup
    config = peft_config_for_arm(SLowEDArguments(arm="lora"))
    assert isinstance(config, LoraConfig) and (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.0)
    trl_keys = ModelConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj"])
    config = peft_config_for_arm(SLowEDArguments(arm="lora"), trl_keys)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (
        4,
        8,
        0.1,
        {"q_proj"},
    )  # TRL made it "q_proj"
    trainer = train_arm(
        SLowEDArguments(arm="lora"),
        AutoModelForCausalLM.from_pretrained(path),
        tok,
        SLowEDSFTConfig(str(tmp_path / "o"), max_steps=1, **COMMON),
        ds,
    )
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names if "lora_A" in n} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_l2sp_arm_decays_the_delta_toward_w0(setup, tmp_path):
    path, tok, ds = setup
    arm = SLowEDArguments(arm="l2sp", l2sp_strength=50.0)
    args = apply_arm_to_training_args(arm, SLowEDSFTConfig(str(tmp_path / "o"), max_steps=2, **COMMON))
    assert args.weight_decay == 50.0

    def delta_norm(strength: float) -> float:
        trainer = train_arm(
            SLowEDArguments(arm="l2sp", l2sp_strength=strength),
            AutoModelForCausalLM.from_pretrained(path),
            tok,
            SLowEDSFTConfig(str(tmp_path / f"o{strength}"), max_steps=4, **COMMON),
            ds,
        )
        return float(sum(p.norm() ** 2 for p in _trainable(trainer.model).values()) ** 0.5)

    assert delta_norm(50.0) < 0.9 * delta_norm(0.0)  # lr 5e-3 × 50 = 25% shrink per step


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_arguments_reject_bad_baseline_values(bad):
    with pytest.raises(ValueError, match="l2sp_strength"):
        SLowEDArguments(arm="l2sp", l2sp_strength=bad)
    with pytest.raises(ValueError, match="ema_decay"):
        SLowEDArguments(arm="ema", ema_decay=abs(bad) + 1)


def test_labels_normalisation_divides_by_all_label_tokens(setup, tmp_path):
    path, tok, ds = setup

    def first_step(normalization: str) -> dict:
        args = SLowEDSFTConfig(
            str(tmp_path / normalization),
            max_steps=1,
            entropy_quantile=0.5,
            entropy_normalization=normalization,
            **COMMON,
        )
        trainer = train_arm(SLowEDArguments(arm="lem"), AutoModelForCausalLM.from_pretrained(path), tok, args, ds)
        return next(h for h in trainer.state.log_history if "loss" in h)

    kept, labels = first_step("kept"), first_step("labels")
    masked = kept["lem/masked_fraction"]
    assert labels["lem/masked_fraction"] == masked and 0.3 < masked < 0.7
    assert labels["loss"] == pytest.approx(kept["loss"] * (1 - masked), rel=2e-2)


def test_labels_normalisation_needs_the_live_source(tmp_path):
    with pytest.raises(ValueError, match="entropy_source='live'"):
        SLowEDSFTConfig(
            str(tmp_path), use_cpu=True, entropy_threshold=0.5, entropy_source="initial", entropy_normalization="labels"
        )
    with pytest.raises(ValueError, match="entropy_normalization"):
        SLowEDSFTConfig(str(tmp_path), use_cpu=True, entropy_normalization="mean")


# ------------------------------------------------------------------------------------------------ frontier bookkeeping
def test_plan_runs_the_comparisons_that_matter_first():
    plan = StudyArguments(seeds=[0, 1], extra_seeds=[0]).plan()
    assert plan[: len(CORE)] == [(m, 0) for m in CORE]
    rest = plan[len(CORE) :]
    assert rest[:6] == [(m, 1) for m in PRIMARY] + [(m, 0) for m in EXTRA[:3]]
    assert rest[6:8] == [(m, 1) for m in CORE[3:]] and rest[8:] == [(m, 0) for m in EXTRA[3:]]
    assert len({run_file(__import__("pathlib").Path("x"), m, s) for m, s in plan}) == len(plan)
    with pytest.raises(ValueError, match="Unknown method"):
        StudyArguments(methods=["adam lr=1e-3"])
    assert method_settings(StudyArguments(methods=["sft lr=1e-3"]), "sft lr=1e-3")["learning_rate"] == 1e-3
    assert set(CORE) | set(EXTRA) | set(OPT_IN) == set(METHODS)
    assert not set(OPT_IN) & {m for m, _ in plan}  # the anchor study's (and the demo's) methods run only when named


def _point(step, nll, flags, kl):
    responses = ["I'm sorry, I can't help with that." if f else "Sure, here is how." for f in flags]
    return {"step": step, "epoch": step, "cot_nll": nll, "harmful_responses": responses, "harmful_kl": kl,
            "refusal_ratio": float(np.mean(flags))}  # fmt: skip


def _run(method, seed, points):
    return {"method": method, "seed": seed, "checkpoints": points, "masked_fraction": 0.0}


def test_matched_learning_interpolates_between_bracketing_checkpoints():
    initial = _point(0, 1.0, [1, 1, 1, 1], 0.0)
    path = [dict(p, flags=np.array([float("sorry" in r) for r in p["harmful_responses"]])) for p in
            (initial, _point(1, 0.8, [1, 1, 0, 0], 0.1), _point(2, 0.6, [0, 0, 0, 0], 0.3))]  # fmt: skip
    # reference reduction 0.4: 50% = 0.2 is exactly checkpoint 1; 75% = 0.3 is halfway between 1 and 2
    assert matched(path, 1.0, 0.4, 0.5)["flags"].mean() == pytest.approx(0.5)
    halfway = matched(path, 1.0, 0.4, 0.75)
    assert halfway["flags"].tolist() == pytest.approx([0.5, 0.5, 0, 0]) and halfway["harmful_kl"] == pytest.approx(0.2)
    assert matched(path, 1.0, 0.4, 1.1) is None  # never reached


def test_summary_intervals_and_differences():
    initial = _point(0, 1.0, [1] * 8, 0.0)
    runs = {
        "sft lr=1e-4": [_run("sft lr=1e-4", s, [_point(1, 0.5, [0] * 8, 0.2)]) for s in (0, 1)],
        "slowed": [_run("slowed", s, [_point(1, 0.5, [1] * 8, 0.01)]) for s in (0, 1)],
    }
    summary = summarise(runs, initial)
    assert summary["ref_reduction"] == pytest.approx(0.5)
    assert summary["methods"]["slowed"]["50%"]["refusal"] == pytest.approx(1.0)
    assert summary["methods"]["sft lr=1e-4"]["50%"]["refusal"] == pytest.approx(0.5)  # halfway from 1 to 0
    mean, lo, hi = difference(summary, "slowed", "sft lr=1e-4", "50%")
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference method"):
        summarise({"slowed": runs["slowed"]}, initial)


def test_frontier_config_parses_every_key():
    from slowed_peft.scripts.configs import SLowEDParser

    (args, remaining) = SLowEDParser((StudyArguments,)).parse_args_and_config(
        args=["--config", "frontier"], return_remaining_strings=True
    )
    assert remaining == [] and (args.train_rows, args.epochs, args.safety_limit) == (16, 3, 128)
    assert args.max_steps is None and len(args.plan()) == 3 * len(CORE) + len(EXTRA)


@pytest.mark.slow
def test_frontier_quick_run_writes_the_report(tmp_path, shared_model_cache):
    from slowed_peft.scripts.study import run

    summary = run(["--quick", "--output_dir", str(tmp_path), "--workers", "1"])
    assert set(summary["methods"]) == {"sft lr=1e-4", "slowed", "ema", "lora r=16"}
    for name in ("results.md", "summary.json", "frontier_refusal.png", "frontier_kl.png", "refusal_per_epoch.png",
                 "over_steps.png"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    again = run(["--quick", "--output_dir", str(tmp_path), "--workers", "1"])  # resumes: nothing retrained
    assert again["methods"]["slowed"]["refusal_final"] == summary["methods"]["slowed"]["refusal_final"]
