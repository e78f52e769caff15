"""Resuming refuses changed adapter settings, trainer
checkpoints are always exact (a ``save_precision="4bit"`` run resumes bit for bit), and an all-masked micro-batch
does not abort an ``entropy_source="initial"`` run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback

from slowed_peft import SLowEDConfig, SLowEDSFTConfig, SLowEDTrainer

from testing_utils import TRAINER_ARGS, build_char_tokenizer, build_tiny


def cot_rows(n: int = 8) -> list[dict]:
    return [
        {"prompt": f"Q{i}: {i}+{i + 1}=?", "completion": f" {i}+{i + 1} is {2 * i + 1}. So {2 * i + 1}."}
        for i in range(n)
    ]


@pytest.fixture
def setup(tmp_path):
    model_dir = tmp_path / "tiny"
    build_tiny("llama", model_dir)
    tok = build_char_tokenizer(model_dir)
    return str(model_dir), tok


def trainer_for(setup, out, steps, peft_kw=None, rows=None, **args_kw):
    model_dir, tok = setup
    settings = {**TRAINER_ARGS, "save_strategy": "steps", "save_steps": 1, **args_kw}
    args = SLowEDSFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, **settings)
    peft_kw = {"slow_factor": 1.0, "max_drift": 0.05, **(peft_kw or {})}
    cfg = SLowEDConfig(target_modules="all-linear", task_type="CAUSAL_LM", **peft_kw)
    return SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(rows or cot_rows()),
        processing_class=tok,
        peft_config=cfg,
    )


def deltas(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "slowed_delta" in n}


def saved_keys(folder) -> list[str]:
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


# ----------------------------------------------------------------------------------------------- point 4


@pytest.mark.parametrize(
    "changed, expected",
    [
        ({"max_drift": 0.5}, ["max_drift: 0.05 (checkpoint) -> 0.5 (this run)"]),
        (
            {"slow_factor": 0.5, "drift_granularity": "row"},
            ["slow_factor: 1.0 (checkpoint) -> 0.5 (this run)", "drift_granularity: 'matrix' (checkpoint) -> 'row'"],
        ),
        ({"r": 4}, ["r: None (checkpoint) -> 4 (this run)"]),
    ],
)
def test_resume_under_changed_adapter_settings_is_refused(setup, tmp_path, changed, expected):
    out = tmp_path / "run"
    trainer_for(setup, out, 2).train()
    checkpoint = str(out / "checkpoint-1")
    resumed = trainer_for(setup, out, 2, peft_kw=changed)
    with pytest.raises(ValueError) as err:
        resumed.train(resume_from_checkpoint=checkpoint)
    message = str(err.value)
    assert checkpoint in message and "adapter_config.json" in message
    for text in expected:
        assert text in message
    with pytest.raises(ValueError, match="max_drift|slow_factor|r: None"):  # also with resume_from_checkpoint=True
        trainer_for(setup, out, 2, peft_kw=changed).train(resume_from_checkpoint=True)


def test_resume_under_the_same_adapter_settings_continues(setup, tmp_path):
    out = tmp_path / "run"
    trainer_for(setup, out, 2).train()
    resumed = trainer_for(setup, out, 3)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.state.global_step == 3


# ----------------------------------------------------------------------------------------------- point 5


class StopAfterFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= 1
        return control


def test_checkpoints_of_a_4bit_run_are_exact_and_resume_bit_for_bit(setup, tmp_path):
    unbroken = trainer_for(setup, tmp_path / "a", 3, peft_kw={"save_precision": "4bit"})
    unbroken.train()
    first = trainer_for(setup, tmp_path / "b", 3, peft_kw={"save_precision": "4bit"})
    first.add_callback(StopAfterFirstStep())  # killed after step 1 (its checkpoint-1 written)
    first.train()
    assert first.state.global_step == 1
    resumed = trainer_for(setup, tmp_path / "b", 3, peft_kw={"save_precision": "4bit"})
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-1"))
    a, b = deltas(unbroken), deltas(resumed)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name

    for step in (1, 2, 3):  # every intermediate checkpoint holds the exact delta
        keys = saved_keys(tmp_path / "a" / f"checkpoint-{step}")
        assert any("slowed_delta" in k for k in keys) and not any("slowed_qcodes" in k for k in keys)
        config = json.loads((tmp_path / "a" / f"checkpoint-{step}" / "adapter_config.json").read_text())
        assert config["save_precision"] == "fp32"  # what the checkpoint holds
    assert unbroken.model.peft_config["default"].save_precision == "4bit"  # the run's setting, for the final adapter

    unbroken.save_model(str(tmp_path / "final"))  # the shared adapter is the compressed one
    assert any("slowed_qcodes" in k for k in saved_keys(tmp_path / "final"))


# ----------------------------------------------------------------------------------------------- point 8


@pytest.mark.parametrize("masking", ["initial", "live", "none"])
def test_initial_entropy_run_survives_an_all_masked_micro_batch(setup, tmp_path, masking):
    # an empty text is the EOS token alone: its only label sits at position 0, which nothing predicts, so a micro-batch
    # of such rows has no label token to mask (TRL keeps them; plain SFT and live masking train on them at zero loss)
    rows = [{"text": ""}] * 2 + [{"text": r["prompt"] + r["completion"]} for r in cot_rows(2)]
    lem = {} if masking == "none" else {"entropy_source": masking, "entropy_threshold": 0.5}
    trainer = trainer_for(setup, tmp_path / "run", 2, rows=rows, save_strategy="no", **lem)
    trainer._get_train_sampler = lambda *args, **kwargs: SequentialSampler(trainer.train_dataset)
    trainer.train()  # the first micro-batch holds only the two label-free rows
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # no NaN
