"""Low-Entropy Masking inside TRL: the collator path in plain SFTTrainer and SLowEDTrainer's live/initial paths."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

import slowed_peft
from slowed_peft import (
    EntropyMaskingCollator,
    SLowEDConfig,
    SLowEDSFTConfig,
    SLowEDTrainer,
    add_slowed_metrics,
    annotate_entropy,
)

from testing_utils import TRAINER_ARGS, build_char_tokenizer, build_tiny


COMMON = TRAINER_ARGS


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


def peft_cfg(**kw):
    return SLowEDConfig(target_modules="all-linear", slow_factor=1.0, max_drift=0.05, task_type="CAUSAL_LM", **kw)


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def assert_reload_matches(trainer, model_dir, out_dir):
    trainer.save_model(out_dir)
    model = trainer.model.eval()
    x = torch.randint(3, 90, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=x).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out_dir)
        torch.testing.assert_close(reloaded(input_ids=x).logits, expected, atol=1e-6, rtol=0)


def test_collator_path_in_plain_sfttrainer(setup, tmp_path):
    model_dir, tok = setup
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = annotate_entropy(Dataset.from_list(cot_rows()), model, tokenizer=tok, batch_size=4)
    collator = EntropyMaskingCollator(pad_token_id=tok.pad_token_id, quantile=0.3)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        remove_unused_columns=False,
        **COMMON,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=collator, peft_config=peft_cfg()
    )
    add_slowed_metrics(trainer, collator)
    trainer.train()
    fractions = logged(trainer, "lem/masked_fraction")
    assert len(fractions) == 3 and all(0.2 < f < 0.4 for f in fractions)
    drift = logged(trainer, "slowed/drift_max")
    assert len(drift) == 3 and 0 < drift[-1] <= 0.05 * (1 + 1e-6)
    assert logged(trainer, "mean_token_accuracy") and logged(trainer, "entropy")
    assert_reload_matches(trainer, model_dir, str(tmp_path / "adapter"))


class CountForwards(TrainerCallback):
    """Counts backbone forwards and records the gradients the optimizer is about to use."""

    def __init__(self, backbone):
        self.forwards = 0
        self.grads = []
        backbone.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.forwards += 1

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def live_trainer(model_dir, tok, out, bs, ga, steps, **masking):
    args = SLowEDSFTConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        gradient_checkpointing=False,
        **COMMON,
        **masking,
    )
    trainer = SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(cot_rows(4)),
        processing_class=tok,
        peft_config=peft_cfg(),
    )
    counter = CountForwards(trainer.model.get_base_model().model)
    trainer.add_callback(counter)
    return trainer, counter


def test_live_path_masks_without_extra_forward_and_keeps_trl_metrics(setup, tmp_path):
    model_dir, tok = setup
    trainer, counter = live_trainer(model_dir, tok, str(tmp_path / "out"), bs=2, ga=2, steps=3, entropy_quantile=0.3)
    trainer.train()
    assert counter.forwards == 3 * 2  # one forward per micro-batch: masking uses the same pass's entropy
    fractions = logged(trainer, "lem/masked_fraction")
    assert len(fractions) == 3 and all(0.2 < f < 0.4 for f in fractions)
    for key in ("entropy", "mean_token_accuracy", "num_tokens", "slowed/drift_max", "slowed/drift_mean", "loss"):
        assert logged(trainer, key), key
    assert all(math.isfinite(v) for v in logged(trainer, "loss"))
    assert_reload_matches(trainer, model_dir, str(tmp_path / "adapter"))


@pytest.mark.parametrize("ga", [1, 2])
def test_live_path_keeping_every_token_trains_and_logs_like_trls_own_loss(setup, tmp_path, ga):
    """Behavioural guard of the mirrored TRL code, on any TRL (1.16's fused head, or TRL < 1.15's full-logits
    route): with threshold 0 nothing is masked, so loss, gradients and TRL's metrics equal plain ``SFTTrainer``'s."""
    model_dir, tok = setup
    runs = {}
    for name in ("trl", "ours"):
        common = dict(output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=2)
        common.update(gradient_accumulation_steps=ga, gradient_checkpointing=False, **COMMON)
        if name == "trl":
            trainer = SFTTrainer(
                model=model_dir,
                args=SFTConfig(**common),
                train_dataset=Dataset.from_list(cot_rows(8)),
                processing_class=tok,
                peft_config=peft_cfg(),
            )
        else:
            trainer = SLowEDTrainer(
                model=model_dir,
                args=SLowEDSFTConfig(**common, entropy_threshold=0.0),
                train_dataset=Dataset.from_list(cot_rows(8)),
                processing_class=tok,
                peft_config=peft_cfg(),
            )
        counter = CountForwards(trainer.model.get_base_model().model)
        trainer.add_callback(counter)
        trainer.train()
        runs[name] = (trainer, counter)
    (trl_trainer, trl_counter), (our_trainer, our_counter) = runs["trl"], runs["ours"]
    assert logged(our_trainer, "lem/masked_fraction") == [0.0, 0.0]
    for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm"):
        assert logged(our_trainer, key) == pytest.approx(logged(trl_trainer, key), rel=1e-4, abs=1e-6), key
    for ours, theirs in zip(our_counter.grads, trl_counter.grads, strict=True):
        assert ours.keys() == theirs.keys() and ours
        for n in ours:
            torch.testing.assert_close(ours[n], theirs[n], atol=1e-6, rtol=1e-4)


def test_slowed_metrics_go_through_trl_metrics(setup, tmp_path):
    """No ``log`` override: drift and masked fraction enter ``_metrics["train"]`` and TRL's ``log`` emits them."""
    assert SLowEDTrainer.log is SFTTrainer.log
    model_dir, tok = setup
    trainer, _ = live_trainer(model_dir, tok, str(tmp_path / "out"), bs=2, ga=1, steps=3, entropy_quantile=0.3)
    trainer.args.logging_steps = 2
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in steps] == [2]
    assert {"lem/masked_fraction", "slowed/drift_max", "slowed/drift_mean", "entropy"} <= set(steps[0])
    summary = trainer.state.log_history[-1]
    assert "train_runtime" in summary  # step 3 was not logged: the summary carries the last window's metrics
    drift = slowed_peft.weight_drift(trainer.model)
    assert summary["slowed/drift_max"] == drift.max and summary["slowed/drift_mean"] == drift.mean
    assert 0.2 < summary["lem/masked_fraction"] < 0.4


def test_log_drift_false_logs_no_drift(setup, tmp_path):
    model_dir, tok = setup
    trainer, _ = live_trainer(
        model_dir, tok, str(tmp_path / "out"), bs=2, ga=1, steps=1, entropy_quantile=0.3, log_drift=False
    )
    trainer.train()
    assert logged(trainer, "lem/masked_fraction")
    assert not any("slowed/drift_max" in h for h in trainer.state.log_history)


@pytest.mark.parametrize("head", ["fused", "full_logits"])
def test_live_path_loss_is_exact_under_gradient_accumulation(setup, tmp_path, monkeypatch, head):
    """Also on TRL < 1.15's route (no fused head: per-token outputs from full logits), forced here on any TRL."""
    if head == "full_logits":
        monkeypatch.setattr(slowed_peft.masking.fused, "HAS_FUSED_HEAD", False)
    model_dir, tok = setup
    probe = annotate_entropy(
        Dataset.from_list(cot_rows(4)), AutoModelForCausalLM.from_pretrained(model_dir), tokenizer=tok
    )
    values = sorted(v for row in probe["token_entropy"] for v in row[1:])
    # cut between two well-separated neighbours around the lower third, so float noise between the annotation and the
    # fused head cannot move a token across the threshold
    k = max(range(len(values) // 4, len(values) // 2), key=lambda i: values[i + 1] - values[i])
    threshold = (values[k] + values[k + 1]) / 2
    runs = {}
    for name, bs, ga in (("bs4", 4, 1), ("bs2xga2", 2, 2)):
        trainer, counter = live_trainer(
            model_dir, tok, str(tmp_path / name), bs=bs, ga=ga, steps=1, entropy_threshold=threshold
        )
        trainer.train()
        runs[name] = (logged(trainer, "loss")[0], counter.grads[0], logged(trainer, "lem/masked_fraction")[0])
        prepared = trainer.train_dataset
    (loss_a, grads_a, frac_a), (loss_b, grads_b, frac_b) = runs["bs4"], runs["bs2xga2"]
    assert 0.1 < frac_a < 0.6 and frac_a == pytest.approx(frac_b, abs=1e-9)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    # and the loss is the mean NLL over the *kept* label tokens (masked tokens leave the denominator)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    nll, kept = 0.0, 0
    for row in prepared:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logp = base(ids).logits[0, :-1].log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1)
        for t in range(1, ids.shape[1]):
            if row["labels"][t] != -100 and ent[t - 1] >= threshold:
                nll -= float(logp[t - 1, ids[0, t]])
                kept += 1
    assert loss_a == pytest.approx(nll / kept, abs=1e-4)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-5, rtol=1e-4)


def test_initial_entropy_source_annotates_prepared_dataset(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        entropy_source="initial",
        entropy_quantile=0.5,
        **COMMON,
    )
    trainer = SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(cot_rows()),
        processing_class=tok,
        peft_config=peft_cfg(),
    )
    assert isinstance(trainer.data_collator, EntropyMaskingCollator)
    row = trainer.train_dataset[0]
    assert len(row["token_entropy"]) == len(row["input_ids"]) and "labels" in row
    trainer.train()
    fractions = logged(trainer, "lem/masked_fraction")
    assert len(fractions) == 2 and all(0.35 < f < 0.65 for f in fractions)
    assert logged(trainer, "slowed/drift_max")


def test_no_masking_is_plain_sft_with_drift_logs(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, **COMMON)
    trainer = SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(cot_rows(4)),
        processing_class=tok,
        peft_config=peft_cfg(),
    )
    trainer.train()
    assert not logged(trainer, "lem/masked_fraction") and logged(trainer, "slowed/drift_max")
    assert slowed_peft.weight_drift(trainer.model).max > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"entropy_threshold": -1.0}, "threshold=-1.0"),
        ({"entropy_quantile": 1.5}, "quantile=1.5"),
        ({"entropy_threshold": 0.5, "entropy_quantile": 0.5}, "exactly one"),
        ({"entropy_source": "teacher", "entropy_threshold": 0.5}, "entropy_source"),
    ],
)
def test_config_bad_values(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SLowEDSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)


def test_initial_source_rejects_packing(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        entropy_source="initial",
        entropy_threshold=0.5,
        packing=True,
        **COMMON,
    )
    with pytest.raises(ValueError, match="packing / padding_free"):
        SLowEDTrainer(
            model=model_dir,
            args=args,
            train_dataset=Dataset.from_list(cot_rows(4)),
            processing_class=tok,
            peft_config=peft_cfg(),
        )


def test_initial_source_annotates_only_rows_max_steps_reads(setup, tmp_path, monkeypatch):
    """3 steps x 2 rows of 20: only the 6 rows the sampler yields (+2 fetched ahead) are annotated; same training."""
    model_dir, tok = setup

    def run(out, annotate_all: bool):
        if annotate_all:
            monkeypatch.setattr("slowed_peft.masking.trainer.rows_read", lambda trainer: None)
        torch.manual_seed(0)
        args = SLowEDSFTConfig(
            output_dir=str(tmp_path / out),
            max_steps=3,
            per_device_train_batch_size=2,
            entropy_source="initial",
            entropy_threshold=0.5,
            **COMMON,
        )
        trainer = SLowEDTrainer(
            model=model_dir,
            args=args,
            train_dataset=Dataset.from_list(cot_rows(20)),
            processing_class=tok,
            peft_config=peft_cfg(),
        )
        annotated = sum(len(e) > 0 for e in trainer.train_dataset["token_entropy"])
        trainer.train()
        return annotated, logged(trainer, "loss"), logged(trainer, "lem/masked_fraction")

    subset = run("subset", annotate_all=False)
    full = run("full", annotate_all=True)
    assert subset[0] == 8 and full[0] == 20
    assert subset[1] == pytest.approx(full[1], abs=1e-6) and subset[2] == pytest.approx(full[2], abs=1e-9)


def test_initial_source_annotates_everything_when_the_order_is_not_reproducible(setup, tmp_path):
    model_dir, tok = setup
    args = SLowEDSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        entropy_source="initial",
        entropy_threshold=0.5,
        train_sampling_strategy="group_by_length",
        **COMMON,
    )
    trainer = SLowEDTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(cot_rows(12)),
        processing_class=tok,
        peft_config=peft_cfg(),
    )
    assert all(len(e) > 0 for e in trainer.train_dataset["token_entropy"])  # 4 rows read, 12 annotated
    trainer.train()


def test_collator_refuses_rows_without_entropies():
    collator = EntropyMaskingCollator(pad_token_id=0, threshold=0.5)
    with pytest.raises(ValueError, match="was not annotated"):
        collator([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "token_entropy": []}])
