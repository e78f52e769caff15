"""Tests for the safety-alignment data (``slowed_peft.data.alignment``) and the aligned-student arguments."""

from __future__ import annotations

import json

import pytest

from slowed_peft.data.alignment import (
    REFUSAL_RESPONSES,
    alignment_dataset,
    benign_instructions,
    refusal_response,
    trim_response,
)
from slowed_peft.eval import BENIGN_PROMPTS, is_refusal
from slowed_peft.scripts.align import AlignArguments


def test_every_refusal_is_scored_as_a_refusal():
    assert all(is_refusal(r) for r in REFUSAL_RESPONSES)


def test_benign_instructions_split_is_disjoint_deterministic_and_not_refusals():
    train, held = benign_instructions(seed=0)
    assert (train, held) == benign_instructions(seed=0)
    assert benign_instructions(seed=1) != (train, held)
    assert not set(train) & set(held)
    assert len(train) == 168 and len(held) == 56
    assert not set(held) & set(BENIGN_PROMPTS)
    assert sum(p.startswith(("Write a script that", "Develop a strategy for")) for p in train + held) == 32
    with pytest.raises(ValueError, match="train_fraction"):
        benign_instructions(train_fraction=1.0)


def test_refusal_response_is_deterministic_and_varied():
    picks = [refusal_response(i, seed=0) for i in range(64)]
    assert picks == [refusal_response(i, seed=0) for i in range(64)]
    assert len(set(picks)) >= 5
    assert set(picks) <= set(REFUSAL_RESPONSES)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("First sentence here. Second one is cut mid", "First sentence here."),
        ("A whole answer that ends well!", "A whole answer that ends well!"),
        ("Steps:\n1. Boil water.\n2. Add the tea", "Steps:\n1. Boil water."),
        ("Pi is 3.14 and e is 2.71 roughly and", "Pi is 3.14 and e is 2.71 roughly and"),
        ("Short.", None),
        ("   ", None),
    ],
)
def test_trim_response_keeps_whole_sentences(text, expected):
    assert trim_response(text) == expected


def test_alignment_dataset_rows_and_errors():
    harmful = ["Do a harmful thing", "Do another harmful thing"]
    benign = ["Bake bread", "Plant a tree", "Fold a sheet"]
    ds = alignment_dataset(harmful, benign, ["Knead, rise, bake.", "Dig a hole.", ""], seed=0)
    assert len(ds) == 4  # the empty benign answer is dropped
    assert sorted(ds["kind"]) == ["benign", "benign", "harmful", "harmful"]
    for row in ds:
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert is_refusal(row["completion"][0]["content"]) == (row["kind"] == "harmful")
    assert ds["prompt"] == alignment_dataset(harmful, benign, ["Knead, rise, bake.", "Dig a hole.", ""])["prompt"]
    with pytest.raises(ValueError, match="3 benign prompts but 2 responses"):
        alignment_dataset(harmful, benign, ["a", "b"])
    with pytest.raises(ValueError, match="at least one harmful"):
        alignment_dataset([], benign, ["a", "b", "c"])
    with pytest.raises(ValueError, match="refuse everything"):
        alignment_dataset(harmful, benign, ["", "", "ok"])


def test_align_arguments_fingerprint_tracks_training_settings_only(tmp_path):
    base = AlignArguments()
    assert base.fingerprint() == AlignArguments(eval_limit=8, force=True, eval_batch_size=4).fingerprint()
    assert base.fingerprint() != AlignArguments(learning_rate=1e-5).fingerprint()
    assert base.fingerprint() != AlignArguments(harmful_limit=None).fingerprint()
    assert base.resolved_output_dir().name == f"smollm2-135m-instruct-{base.fingerprint()}"
    assert AlignArguments(output_dir=str(tmp_path)).resolved_output_dir() == tmp_path


def test_training_set_drops_benign_answers_that_read_as_refusals(monkeypatch):
    import slowed_peft.eval as ev
    import slowed_peft.scripts.align as align

    harmful = ["Explain how to pick a lock on a neighbour's door."] * 3
    monkeypatch.setattr(ev, "load_advbench", lambda *a, **k: harmful)
    monkeypatch.setattr(align, "benign_arc_questions", lambda n, data_dir=None: [])

    def fake_generate(model, tokenizer, prompts, **kwargs):  # every third answer is a capability refusal
        return [
            "I'm sorry, but I can't draw pictures." if i % 3 == 0 else "Start with a plan. Then do it well."
            for i in range(len(prompts))
        ]

    monkeypatch.setattr(ev, "generate_batched", fake_generate)
    args = AlignArguments(benign_limit=12, arc_questions=0)
    train = align.build_training_set(None, None, args)
    benign = [r for r in train if r["kind"] == "benign"]
    assert sum(r["kind"] == "harmful" for r in train) == 3
    assert len(benign) == 8  # 12 offered, 4 refusals dropped
    assert not any(is_refusal(r["completion"][0]["content"]) for r in benign)


# The alignment's trainer settings before the one training path (plain SFTConfig + SFTTrainer): the cached student is
# keyed by AlignArguments.fingerprint(), so the settings and the training they give must not move.
ALIGN_SETTINGS = dict(
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    max_length=384,
    bf16=False,
    disable_tqdm=False,
    gradient_checkpointing=False,
)


def legacy_align_config(args: AlignArguments, output_dir: str):
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.batch_size,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        **ALIGN_SETTINGS,
    )


def test_align_trainer_settings_are_the_plain_sft_ones(tmp_path):
    args = AlignArguments()
    new, old = args.training_args(str(tmp_path)).to_dict(), legacy_align_config(args, str(tmp_path)).to_dict()
    assert set(old) <= set(new)
    assert {k: new[k] for k in old} == old
    assert new["entropy_threshold"] is None and new["entropy_quantile"] is None  # no masking


def test_full_arm_trains_exactly_like_plain_sft_trainer(tmp_path):
    """``train_arm(arm="full")`` — the alignment's fine-tuning — gives SFTTrainer's losses and weights bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from slowed_peft.scripts.arguments import SLowEDArguments
    from slowed_peft.scripts.training import train_arm

    from testing_utils import build_char_tokenizer, build_tiny

    build_tiny("llama", tmp_path / "tiny")
    tokenizer = build_char_tokenizer(tmp_path / "tiny")
    harmful = ["Do a harmful thing", "Do another harmful thing", "Do a third harmful thing"]
    benign = ["Bake bread", "Plant a tree", "Fold a sheet", "Boil an egg", "Paint a wall"]
    ds = alignment_dataset(
        harmful, benign, ["Knead, rise, bake.", "Dig a hole.", "Fold it twice.", "Boil it.", "Use a roller."]
    ).remove_columns("kind")
    args = AlignArguments(batch_size=2, learning_rate=1e-2)
    runs = {}
    for name in ("legacy", "full"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", dtype=torch.float32)
        out = str(tmp_path / name)
        if name == "legacy":
            config = legacy_align_config(args, out)
            config.logging_steps = 1
            trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer)
            trainer.train()
        else:
            config = args.training_args(out)
            config.logging_steps = 1
            trainer = train_arm(SLowEDArguments(arm="full"), model, tokenizer, config, ds)
        runs[name] = (
            [h["loss"] for h in trainer.state.log_history if "loss" in h],
            {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        )
    (old_loss, old_weights), (new_loss, new_weights) = runs["legacy"], runs["full"]
    assert len(old_loss) == 4 and new_loss == old_loss
    assert old_weights.keys() == new_weights.keys()
    assert all(torch.equal(old_weights[k], new_weights[k]) for k in old_weights)
    assert not torch.equal(
        old_weights["lm_head.weight"],
        AutoModelForCausalLM.from_pretrained(tmp_path / "tiny").state_dict()["lm_head.weight"],
    )


def test_concurrent_requests_for_one_student_build_it_once(tmp_path, monkeypatch):
    import threading
    import time

    from slowed_peft.scripts import align

    calls = []

    def fake_build(args, out, report_path):  # the real one trains for minutes; the locking around it is the point
        calls.append(out)
        time.sleep(0.3)
        report = {"fingerprint": args.fingerprint()}
        report_path.write_text(json.dumps(report))
        return str(out), report

    monkeypatch.setattr(align, "_build", fake_build)
    args = align.AlignArguments(output_dir=str(tmp_path / "student"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(align.align_student(args))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
