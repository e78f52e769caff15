"""Checkpoint evaluation during training (``slowed_peft.eval.checkpoints``) and the replication report."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model

from slowed_peft import SLowEDConfig, SLowEDSFTConfig, SLowEDTrainer
from slowed_peft.eval.checkpoints import CheckpointEvalCallback, CheckpointEvaluator, completion_nll
from slowed_peft.eval.safety import harmful_kl
from slowed_peft.masking.annotate import tokenize_like_trl

from testing_utils import build_char_tokenizer, build_tiny


ROWS = [
    {
        "prompt": [{"role": "user", "content": f"{i}+{i}?"}],
        "completion": [{"role": "assistant", "content": f"{i}+{i} is {2 * i}. So the answer is {2 * i}."}],
    }
    for i in range(6)
]
REASONING = {"sums": [{"prompt": f"{i}+{i}?", "answer": str(2 * i), "kind": "numeric"} for i in range(3)]}


@pytest.fixture
def setup(tmp_path):
    model_dir = tmp_path / "tiny"
    build_tiny("llama", model_dir)
    return str(model_dir), build_char_tokenizer(model_dir)


def evaluator(tok, **kw):
    return CheckpointEvaluator(
        tok,
        harmful=["Do harm now", "Hurt them"],
        benign=["Bake bread"],
        reasoning=REASONING,
        nll_rows=ROWS,
        safety_max_new_tokens=6,
        reasoning_max_new_tokens=6,
        batch_size=4,
        **kw,
    )


def test_completion_nll_matches_the_models_own_loss(setup):
    model_dir, tok = setup
    model = build_tiny("llama", model_dir)
    expected_sum, expected_count = 0.0, 0
    for row in ROWS:
        enc = tokenize_like_trl(row, tok)
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.where(torch.tensor([enc["completion_mask"]]).bool(), ids, -100)
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        expected_sum, expected_count = expected_sum + float(loss) * n, expected_count + n
    assert completion_nll(model, tok, ROWS, batch_size=4) == pytest.approx(expected_sum / expected_count, rel=1e-5)
    with pytest.raises(ValueError, match="no row has completion tokens"):
        completion_nll(model, tok, [])


def test_evaluator_reports_zero_kl_at_start_and_needs_step_zero_first(setup):
    model_dir, tok = setup
    peft_model = get_peft_model(build_tiny("llama", model_dir), SLowEDConfig(target_modules="all-linear"))
    ev = evaluator(tok)
    with pytest.raises(RuntimeError, match="step 0"):
        ev(peft_model, step=5)
    first = ev(peft_model, step=0)
    assert set(first) >= {"refusal_ratio", "harmful_kl", "false_refusal", "acc/sums", "cot_nll", "drift_max"}
    assert first["harmful_kl"] == 0.0 and first["drift_max"] == 0.0
    again = ev(peft_model, step=1)  # an unchanged adapter: KL against the step-0 responses is 0
    assert again["harmful_kl"] == pytest.approx(0.0, abs=1e-7) and again["cot_nll"] == pytest.approx(first["cot_nll"])
    with pytest.raises(ValueError, match="harmful prompt"):
        CheckpointEvaluator(tok, harmful=[])
    cache: dict = {}
    harmful_kl(peft_model, tok, ["Do harm"], responses=["no way"], initial_log_probs=cache)
    with pytest.raises(ValueError, match=r"initial_log_probs\[0\] holds"):
        harmful_kl(peft_model, tok, ["Do harm"], responses=["certainly not"], initial_log_probs=cache)


def test_callback_evaluates_at_start_every_n_steps_and_at_the_end(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_length=64,
        disable_tqdm=True,
        seed=0,
        entropy_threshold=0.5,
    )
    callback = CheckpointEvalCallback(evaluator(tok), eval_steps=2, reasoning_every=2, benign_every=3, log=None)
    trainer = SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        peft_config=SLowEDConfig(target_modules="all-linear", slow_factor=1.0, max_drift=0.05),
        callbacks=[callback],
    )
    trainer.train()
    records = callback.records
    assert [r["step"] for r in records] == [0, 2, 4, 5]
    assert ["acc/sums" in r for r in records] == [True, False, True, True]  # every 2nd checkpoint and the last
    assert ["false_refusal" in r for r in records] == [True, False, False, True]  # first and last (every 3rd)
    assert records[0]["harmful_kl"] == 0.0 and records[-1]["harmful_kl"] > 0
    ev = callback.evaluator  # the KL reused the initial model's log-probs cached at step 2: same as recomputing
    assert ev._kl_cache and records[-1]["harmful_kl"] == pytest.approx(
        harmful_kl(trainer.model, tok, ev.harmful, responses=ev.initial_responses, batch_size=ev.batch_size), rel=1e-5
    )
    assert 0 < records[-1]["drift_max"] <= 0.05 * (1 + 1e-6)
    assert records[-1]["cot_nll"] < records[0]["cot_nll"]  # it learns the rationales
    assert trainer.model.training  # evaluation restored train mode
    with pytest.raises(ValueError, match="eval_steps"):
        CheckpointEvalCallback(evaluator(tok), eval_steps=0)
    with pytest.raises(ValueError, match="benign_every must be an integer >= 1 or None, got 0"):
        CheckpointEvalCallback(evaluator(tok), eval_steps=2, benign_every=0)


def test_callback_can_skip_reasoning_at_the_end(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_length=64,
        disable_tqdm=True,
    )
    callback = CheckpointEvalCallback(evaluator(tok), eval_steps=2, reasoning_at_end=False, log=None)
    SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        peft_config=SLowEDConfig(target_modules="all-linear"),
        callbacks=[callback],
    ).train()
    assert [("acc/sums" in r, r["step"]) for r in callback.records] == [(True, 0), (False, 2)]
