"""Harmful fine-tuning data (``--harmful_fraction``): which rows are replaced, by what, and that no evaluated prompt is
ever trained on; the study records the fraction and refuses to mix runs of different fractions."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from slowed_peft.eval.probes import load_advbench, load_advbench_targets
from slowed_peft.eval.safety import is_attack_success
from slowed_peft.scripts.harmful_mix import harmful_count, harmful_rows, with_harmful_rows
from slowed_peft.scripts.runs import reusable, run_file, study_args
from slowed_peft.scripts.study_config import StudyArguments


def _chat_rows(n: int) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "completion": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}.\nSo the answer is {2 * i}."}],
                "answer": str(2 * i),
            }
            for i in range(n)
        ]
    )


def _replaced(before: Dataset, after: Dataset) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(before, after)) if a != b]


@pytest.mark.parametrize(("n", "fraction"), [(32, 0.1), (32, 0.2), (16, 0.1), (100, 0.25), (7, 0.5)])
def test_round_p_n_rows_are_replaced_and_the_rest_keep_their_place(n, fraction):
    data = _chat_rows(n)
    mixed = with_harmful_rows(data, fraction, seed=0)
    changed = _replaced(data, mixed)
    assert len(mixed) == n and len(changed) == round(fraction * n)
    assert mixed.column_names == data.column_names
    for i in changed:  # chat messages like the data, answered with AdvBench's own target, no other column
        row = mixed[i]
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert is_attack_success(row["completion"][0]["content"]) and row["answer"] is None


def test_the_rows_are_train_part_behaviours_never_the_evaluated_prompts():
    from slowed_peft.scripts.study import _held_out

    evaluated = set(_held_out(StudyArguments(safety_limit=10_000))["harmful"])
    assert evaluated == set(load_advbench(None, split="test", seed=0))  # the study scores the whole test part
    train = dict(load_advbench_targets(None, split="train", seed=0))
    data = _chat_rows(200)
    for seed in range(4):
        mixed = with_harmful_rows(data, 0.5, seed=seed, split_seed=0)
        asked = [mixed[i]["prompt"][0]["content"] for i in _replaced(data, mixed)]
        assert len(set(asked)) == 100  # distinct behaviours
        assert set(asked) <= set(train) and not set(asked) & evaluated
        assert all(mixed[i]["completion"][0]["content"] == train[mixed[i]["prompt"][0]["content"]]
                   for i in _replaced(data, mixed))  # fmt: skip


def test_targets_are_the_rows_and_split_of_load_advbench():
    for split in (None, "train", "test"):
        for seed in (0, 3):
            pairs = load_advbench_targets(None, split=split, seed=seed)
            assert [goal for goal, _ in pairs] == load_advbench(None, split=split, seed=seed)
    assert all(target.startswith("Sure, here") for _, target in load_advbench_targets())


def test_the_same_rows_at_a_seed_other_rows_at_another():
    data = _chat_rows(64)
    first, again = with_harmful_rows(data, 0.2, seed=1), with_harmful_rows(data, 0.2, seed=1)
    assert first.to_list() == again.to_list()
    assert first.to_list() != with_harmful_rows(data, 0.2, seed=2).to_list()
    assert with_harmful_rows(data, 0.0, seed=1) is data


def test_plain_text_rows_get_plain_text_harmful_rows():
    data = Dataset.from_list([{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(10)])
    mixed = with_harmful_rows(data, 0.3, seed=0)
    changed = _replaced(data, mixed)
    assert len(changed) == 3 and all(isinstance(mixed[i]["prompt"], str) for i in changed)
    assert all(is_attack_success(mixed[i]["completion"]) for i in changed)
    assert harmful_rows(2, chat=False)[0].keys() == {"prompt", "completion"}


def test_bad_fractions_and_data_are_named():
    with pytest.raises(ValueError, match=r"round\(0.4\) = 0 rows"):
        with_harmful_rows(_chat_rows(4), 0.1)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="harmful_fraction must be in"):
            harmful_count(10, bad)
    with pytest.raises(ValueError, match="lack \\['completion'\\]"):
        with_harmful_rows(Dataset.from_list([{"prompt": "a"}] * 10), 0.2)
    with pytest.raises(ValueError, match="only 312 behaviours"):
        harmful_rows(400)
    with pytest.raises(ValueError, match="harmful_fraction"):  # before any work: the study's own arguments
        StudyArguments(train_rows=4, batch_size=4, harmful_fraction=0.1)
    with pytest.raises(ValueError, match="harmful_fraction must be in"):
        StudyArguments(harmful_fraction=1.0)


def test_run_files_record_the_fraction_and_refuse_reuse_under_another(tmp_path):
    args = StudyArguments(output_dir=str(tmp_path), train_rows=32, harmful_fraction=0.1)
    assert study_args(args)["harmful_fraction"] == 0.1
    path = run_file(tmp_path, "sft lr=1e-4", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"study_args": study_args(args)}))
    assert reusable(path, args)
    with pytest.raises(ValueError, match="harmful_fraction: 0.1 -> 0.2"):
        reusable(path, StudyArguments(output_dir=str(tmp_path), train_rows=32, harmful_fraction=0.2))
    # a run recorded before the option existed counts as benign data (the default) and is reused at p = 0 only
    old = {k: v for k, v in study_args(StudyArguments(train_rows=32)).items() if k != "harmful_fraction"}
    path.write_text(json.dumps({"study_args": old}))
    assert reusable(path, StudyArguments(output_dir=str(tmp_path), train_rows=32))
    with pytest.raises(ValueError, match="harmful_fraction: 0.0 -> 0.1"):
        reusable(path, args)


def test_every_method_of_a_study_trains_on_the_same_mixed_rows(monkeypatch, tmp_path):
    """``train_one`` hands the trainer the mixed rows: the same for every method at a seed, others at another."""
    from slowed_peft.scripts import study, training

    from testing_utils import build_char_tokenizer, build_tiny

    build_tiny("llama", tmp_path / "tiny")
    build_char_tokenizer(tmp_path / "tiny")
    seen = {}

    class Stop(Exception):
        pass

    def fake_train_arm(arm, model, tokenizer, training_args, rows, callbacks=None):
        seen[(arm.arm, training_args.seed)] = rows.to_list()
        raise Stop

    monkeypatch.setattr(training, "train_arm", fake_train_arm)
    args = StudyArguments(output_dir=str(tmp_path / "out"), train_rows=20, harmful_fraction=0.2,
                          methods=["sft", "anchored"])  # fmt: skip
    for method, seed in (("sft", 0), ("anchored", 0), ("sft", 1)):
        with pytest.raises(Stop):
            study.train_one(args, str(tmp_path / "tiny"), method, seed, evaluator=None)
    assert seen[("sft", 0)] == seen[("anchored", 0)] != seen[("sft", 1)]
    harmful = [r for r in seen[("sft", 0)] if is_attack_success(r["completion"][0]["content"])]
    assert len(harmful) == 4 and len(seen[("sft", 0)]) == 20
