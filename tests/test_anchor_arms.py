"""The arms around the safety anchor and the frontier's bookkeeping, fast: run files reused only under the same study
arguments (and unreadable ones redone), the seeded plan, refusal replay, anchor prompts by source, the random-direction
control, CorDA-KPM's initialisation, the anchored arm's adapter and its training through ``train_arm``, and the
log-likelihood accuracy the anchor study scores capability with. Tiny models built from configs; AdvBench / ARC from
``$SLOWED_DATA_DIR``."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from slowed_peft import SLowEDConfig, SLowEDSFTConfig, anchor_dataloader, fit_anchor
from slowed_peft.data.readers import find_data_file, search_roots
from slowed_peft.scripts.anchoring import (
    anchor_prompts,
    fit_arm_anchor,
    install_random_anchor,
    prepare_model,
    replay_rows,
    with_replay,
)
from slowed_peft.scripts.arguments import SLowEDArguments, apply_arm_to_training_args, peft_config_for_arm
from slowed_peft.scripts.runs import NOT_SHAPING, reusable, run_file, study_args, write_json_atomic
from slowed_peft.scripts.study_config import METHODS, StudyArguments
from slowed_peft.tuner.anchor import AnchorReport
from slowed_peft.tuner.layer import SLowEDLayer

from testing_utils import TRAINER_ARGS, build_char_tokenizer, build_tiny


def _has_data(rel: str) -> bool:
    """Whether the package finds ``rel``: in $SLOWED_DATA_DIR or among the files it ships (always, when installed)."""
    try:
        return find_data_file(search_roots(), rel).is_file()
    except (FileNotFoundError, ValueError):
        return False


needs_advbench = pytest.mark.skipif(not _has_data("advbench/harmful_behaviors.csv"), reason="AdvBench not found")
needs_arc = pytest.mark.skipif(not _has_data("arc/ARC-Challenge-Test.jsonl"), reason="ARC-Challenge not found")


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory) -> str:
    """One saved tiny Llama; every test loads its own copy (CorDA and training change the weights)."""
    path = tmp_path_factory.mktemp("anchor-arms") / "tiny-llama"
    build_tiny("llama", path)
    return str(path)


def _llama(path: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _rows(n: int = 8) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "completion": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}. So the answer is {2 * i}."}],
            }
            for i in range(n)
        ]
    )


def _slowed_layers(model) -> dict[str, SLowEDLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SLowEDLayer)}


def _assert_orthonormal(q: torch.Tensor) -> None:
    eye = torch.eye(q.shape[1], dtype=torch.float64)
    torch.testing.assert_close(q.double().T @ q.double(), eye, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- frontier: run files and the plan


def test_study_args_are_the_shaping_arguments_and_survive_json():
    args = StudyArguments(epochs=3, seeds=[0, 1], workers=1, output_dir="somewhere")
    recorded = study_args(args)
    assert not set(recorded) & set(NOT_SHAPING)
    assert recorded["epochs"] == 3 and recorded["learning_rate"] == 1e-4 and recorded["anchor_rank"] == 64
    assert json.loads(json.dumps(recorded)) == recorded  # what a run file holds compares equal when read back


def test_write_json_atomic_replaces_the_file_whole(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": [1, 2]})
    write_json_atomic(path, {"b": 3.5})
    assert json.loads(path.read_text()) == {"b": 3.5} and os.listdir(tmp_path) == ["run.json"]
    with pytest.raises(TypeError):  # a record that cannot be written leaves the previous file as it was
        write_json_atomic(path, {"c": object()})
    assert json.loads(path.read_text()) == {"b": 3.5} and os.listdir(tmp_path) == ["run.json"]


def test_a_run_of_the_same_study_is_reused_and_one_of_another_is_refused_naming_the_keys(tmp_path):
    args = StudyArguments(epochs=3)
    path = run_file(tmp_path, "anchored", 0)
    path.parent.mkdir(parents=True)
    assert reusable(path, args) is False  # not there yet
    write_json_atomic(path, {"method": "anchored", "seed": 0, "study_args": study_args(args), "checkpoints": []})
    assert reusable(path, args) is True
    # what does not shape a run may differ: more seeds, other workers, another selection of methods
    assert reusable(path, StudyArguments(epochs=3, seeds=[0, 1, 2, 3], workers=1, methods=["anchored"]))
    with pytest.raises(ValueError, match=r"recorded under other study arguments \(epochs: 3 -> 5\)") as err:
        reusable(path, StudyArguments(epochs=5))
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=r"anchor_rank: 64 -> 16, epochs: 3 -> 5\)"):
        reusable(path, StudyArguments(epochs=5, anchor_rank=16))
    assert path.is_file()  # refused, never deleted: the numbers of the other study stay


def test_an_argument_added_after_a_run_was_recorded_counts_at_its_default(tmp_path):
    args = StudyArguments(epochs=3)
    path = run_file(tmp_path, "anchored", 0)
    path.parent.mkdir(parents=True)
    older = {k: v for k, v in study_args(args).items() if k not in ("max_steps", "eval_steps")}  # written before them
    write_json_atomic(path, {"method": "anchored", "seed": 0, "study_args": older, "checkpoints": []})
    assert reusable(path, args) is True
    with pytest.raises(ValueError, match=r"recorded under other study arguments \(max_steps: None -> 8\)"):
        reusable(path, StudyArguments(epochs=3, max_steps=8))


@pytest.mark.parametrize(
    "content",
    ["", '{"method": "anchored", "seed": 0, "study_args": {"epochs": 3, "lea', "[]", '{"method": "anchored"}'],
    ids=["empty", "truncated", "not-a-record", "older-version"],
)
def test_an_unreadable_run_file_is_named_removed_and_redone(tmp_path, capsys, content):
    path = run_file(tmp_path, "anchored train", 1)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert reusable(path, StudyArguments()) is False
    assert str(path) in capsys.readouterr().out and not path.exists()


@pytest.mark.parametrize("recorded", ["null", "[1]", '"x"'])
def test_a_run_file_whose_study_args_is_not_an_object_is_redone(tmp_path, recorded):
    path = tmp_path / "run.json"
    path.write_text(f'{{"method": "anchored", "study_args": {recorded}}}')
    assert reusable(path, StudyArguments()) is False and not path.exists()


def test_seeded_plan_runs_every_method_once_then_the_seeded_methods_other_seeds():
    methods = ["sft lr=1e-4", "anchored", "replay", "lora r=16", "anchored random"]
    args = StudyArguments(methods=methods, seeded_methods=["anchored", "sft lr=1e-4"], seeds=[7, 1, 2])
    assert args.plan() == [
        *[(m, 7) for m in methods],
        ("anchored", 1),
        ("sft lr=1e-4", 1),
        ("anchored", 2),
        ("sft lr=1e-4", 2),
    ]
    with pytest.raises(ValueError, match=r"Unknown method 'anchored k=3'"):
        StudyArguments(seeded_methods=["anchored", "anchored k=3"])


def test_the_anchor_frontier_config_plans_ten_methods_then_three_seeded_twice():
    from slowed_peft.scripts.configs import SLowEDParser

    (args,) = SLowEDParser((StudyArguments,)).parse_args_and_config(args=["--config", "frontier_anchor"])
    plan = args.plan()
    assert plan[:10] == [(m, 0) for m in args.methods] and set(args.methods) <= set(METHODS)
    assert plan[10:] == [(m, s) for s in (1, 2) for m in ("sft lr=1e-4", "anchored", "replay")]


def test_a_seeded_method_outside_methods_is_refused_or_planned_with_its_first_seed():
    with pytest.raises(ValueError, match="not among the methods run"):
        StudyArguments(methods=["sft lr=1e-4", "slowed"], seeded_methods=["anchored"], seeds=[0, 1])


# ------------------------------------------------------------------------------------- anchoring: replay and prompts


@needs_advbench
@pytest.mark.parametrize(("n", "fraction"), [(10, 0.05), (10, 0.25), (7, 1.0)])
def test_replay_adds_ceil_fraction_refusal_rows_of_the_same_columns(n, fraction):
    from slowed_peft.data.alignment import REFUSAL_RESPONSES
    from slowed_peft.eval import load_advbench

    rows = _rows(n)
    mixed = with_replay(rows, fraction, seed=0)
    added = math.ceil(fraction * n)
    assert len(mixed) == n + added and mixed.column_names == rows.column_names
    key = lambda r: json.dumps([r["prompt"], r["completion"]])  # noqa: E731
    extra = Counter(key(r) for r in mixed) - Counter(key(r) for r in rows)
    assert sum(extra.values()) == added  # every training row kept once, plus the refusals
    train_part = set(load_advbench(None, split="train", seed=0, train_fraction=0.6))
    for row in map(json.loads, extra):
        (user,), (assistant,) = row
        assert user["role"] == "user" and user["content"] in train_part
        assert assistant["role"] == "assistant" and assistant["content"] in REFUSAL_RESPONSES
    assert [key(r) for r in mixed] == [key(r) for r in with_replay(rows, fraction, seed=0)]  # deterministic


@needs_advbench
def test_replay_mixes_into_plain_text_rows():
    rows = Dataset.from_list([{"prompt": f"What is {i} + {i}?", "completion": f" {2 * i}."} for i in range(4)])
    assert len(with_replay(rows, 0.5, seed=0)) == 6


def _evaluated_prompts() -> tuple[set[str], set[str]]:
    """The held-out AdvBench and benign prompts the frontier evaluates (its default align_seed 0)."""
    from slowed_peft.scripts.align import AlignArguments, held_out_sets

    sets = held_out_sets(AlignArguments(seed=StudyArguments().align_seed))
    return set(sets["advbench"]), set(sets["benign"])


def _trained_prompts(seed: int) -> dict[str, set[str]]:
    harmful = SLowEDArguments(arm="anchored", anchor_source="harmful")
    benign = SLowEDArguments(arm="anchored", anchor_source="benign")
    return {
        "replay": {r["prompt"][0]["content"] for r in replay_rows(40, 1.0, seed)},
        "harmful anchor": set(anchor_prompts(harmful)),
        "benign anchor": set(anchor_prompts(benign)),
    }


def _overlap(seed: int) -> dict[str, int]:
    harmful, benign = _evaluated_prompts()
    used = _trained_prompts(seed)
    return {name: len(prompts & (benign if "benign" in name else harmful)) for name, prompts in used.items()}


@needs_advbench
def test_anchor_and_replay_prompts_are_not_the_evaluated_ones_at_the_alignment_seed():
    assert _overlap(0) == {"replay": 0, "harmful anchor": 0, "benign anchor": 0}


@needs_advbench
@pytest.mark.parametrize("seed", [1, 2])
def test_anchor_and_replay_prompts_are_not_the_evaluated_ones_at_other_training_seeds(seed):
    assert _overlap(seed) == {"replay": 0, "harmful anchor": 0, "benign anchor": 0}


@needs_advbench
def test_anchor_prompts_by_source():
    from slowed_peft.data.alignment import benign_instructions
    from slowed_peft.eval import load_advbench

    def args(source: str, limit: int = 5) -> SLowEDArguments:
        return SLowEDArguments(arm="anchored", anchor_source=source, anchor_limit=limit)

    benign = anchor_prompts(args("benign"))
    train_part, held_out = benign_instructions(seed=0)
    assert benign == train_part[:5] and not set(benign) & set(held_out)
    harmful = anchor_prompts(args("harmful"))
    assert harmful == load_advbench(None, split="train", seed=0, train_fraction=0.6)[:5]
    assert not set(harmful) & set(load_advbench(None, split="test", seed=0, train_fraction=0.6))
    assert anchor_prompts(args("random"), _rows()) is None
    assert anchor_prompts(args("template", limit=3)) == ["Hi", "Hello", "Thanks"]  # the chat template, no data
    rows = Dataset.from_list(
        [
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first?"}]},
            {"prompt": [{"role": "user", "content": "   "}]},  # nothing to anchor on: skipped
            {"prompt": [{"role": "user", "content": "second?"}]},
            {"prompt": [{"role": "user", "content": "third?"}]},
        ]
    )
    assert anchor_prompts(args("train", limit=2), rows) == ["first?", "second?"]
    assert anchor_prompts(args("train"), rows) == ["first?", "second?", "third?"]
    plain = Dataset.from_list([{"prompt": "plain one"}, {"prompt": "plain two"}])
    assert anchor_prompts(args("train"), plain) == ["plain one", "plain two"]
    with pytest.raises(ValueError, match="anchor_source='train' needs the training data set"):
        anchor_prompts(args("train"))


def test_random_anchor_installs_orthonormal_bases_of_the_rank_on_every_layer(llama_path):
    def anchored(rank: int, seed: int):
        config = SLowEDConfig(target_modules="all-linear", slow_factor=1.0, max_drift=None, anchor_rank=rank)
        model = get_peft_model(_llama(llama_path), config)
        return model, install_random_anchor(model, rank, seed=seed)

    model, ranks = anchored(4, seed=0)
    layers = _slowed_layers(model)
    assert len(layers) == 14 and set(ranks) == set(layers) and set(ranks.values()) == {4}
    for layer in layers.values():
        q = layer.slowed_anchor["default"]
        assert q.shape == (layer.in_features, 4) and q.dtype == torch.float32
        _assert_orthonormal(q)
    again, _ = anchored(4, seed=0)
    other, _ = anchored(4, seed=1)
    name = next(iter(layers))
    q = layers[name].slowed_anchor["default"]
    assert torch.equal(q, _slowed_layers(again)[name].slowed_anchor["default"])
    assert not torch.allclose(q, _slowed_layers(other)[name].slowed_anchor["default"])
    # a rank the layer cannot spare is cut to one below its width (the layer can still learn)
    wide, ranks = anchored(1000, seed=0)
    assert ranks == {n: layer.in_features - 1 for n, layer in _slowed_layers(wide).items()}


def test_random_control_through_fit_arm_anchor_needs_a_rank(llama_path):
    arm = SLowEDArguments(arm="anchored", anchor_source="random", anchor_rank=3)
    model = get_peft_model(_llama(llama_path), peft_config_for_arm(arm))
    assert set(fit_arm_anchor(arm, model, None, None, seed=0).values()) == {3}
    no_rank = SLowEDArguments(arm="anchored", anchor_source="random", anchor_rank=None, anchor_energy=0.9)
    with pytest.raises(ValueError, match="anchor_source='random' needs anchor_rank"):
        fit_arm_anchor(no_rank, model, None, None, seed=0)
    assert fit_arm_anchor(SLowEDArguments(arm="sft"), model, None, None, seed=0) is None


def test_corda_arm_starts_from_the_base_model(llama_path, tok):
    """CorDA-KPM on the training prompts: LoRA factors that are not zero, and a residual base weight, whose sum is the
    base model: the wrapped model's logits at step 0 are the base model's."""
    arm = SLowEDArguments(arm="corda", anchor_source="train", anchor_limit=4)
    config = peft_config_for_arm(arm)
    assert config.init_lora_weights == "corda" and config.corda_config.corda_method == "kpm"
    model = _llama(llama_path)
    ids = torch.tensor([tok("<user>What is 2 + 2?<assistant>2 + 2 = 4.")["input_ids"]])
    with torch.no_grad():
        base = model(ids).logits
    prepare_model(arm, model, tok, config, _rows(), seed=0)
    assert config.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    wrapped = get_peft_model(model, config)
    assert fit_arm_anchor(arm, wrapped, tok, _rows(), seed=0) is None  # CorDA has no anchor of its own
    lora_b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 14 and all(float(p.detach().abs().max()) > 0 for p in lora_b)
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids).logits, base, atol=1e-4, rtol=1e-4)
        with wrapped.disable_adapter():  # the residual alone is not the base model: CorDA moved weight into LoRA
            assert (wrapped(ids).logits - base).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- arguments of the arms


def test_anchored_arm_is_sft_with_the_anchor():
    arm = SLowEDArguments(
        arm="anchored", slow_factor=0.1, max_drift=0.05, anchor_rank=8, anchor_energy=0.9, anchor_tokens="prompt"
    )
    config = peft_config_for_arm(arm)
    assert isinstance(config, SLowEDConfig) and config.anchored
    assert (config.slow_factor, config.max_drift) == (1.0, None)  # γ = 1, no trust region: SFT's own updates
    assert (config.anchor_rank, config.anchor_energy, config.anchor_tokens) == (8, 0.9, "prompt")
    plain = peft_config_for_arm(SLowEDArguments(arm="sft", anchor_rank=8, anchor_energy=0.9))
    assert not plain.anchored and (plain.anchor_rank, plain.anchor_energy) == (None, None)
    training = apply_arm_to_training_args(arm, SLowEDSFTConfig("unused", use_cpu=True, entropy_threshold=0.5))
    assert not training.masking_enabled  # no Low-Entropy Masking on the anchored arm


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"arm": "replay", "replay_fraction": 0.0}, r"`replay_fraction` must be in \(0, 1\]; got replay_fraction=0.0"),
        ({"arm": "replay", "replay_fraction": 1.5}, "replay_fraction=1.5"),
        ({"arm": "replay", "replay_fraction": -0.1}, "replay_fraction=-0.1"),
        ({"arm": "replay", "replay_fraction": float("nan")}, "replay_fraction=nan"),
        ({"arm": "anchored", "anchor_source": "harmless"}, r"`anchor_source` must be one of \('benign', 'harmful'"),
        ({"arm": "corda", "anchor_source": "Train"}, "anchor_source='Train'"),
        ({"arm": "anchored", "anchor_limit": 0}, "`anchor_limit` must be >= 1; got anchor_limit=0"),
        ({"arm": "anchored", "anchor_rank": None, "anchor_energy": None}, "arm=anchored needs `anchor_rank`"),
    ],
)
def test_anchor_arm_arguments_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        SLowEDArguments(**settings)


# ------------------------------------------------------------------------------ log-likelihood multiple choice


def _summed_logprob(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=True)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), dim=-1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_choice_loglik_accuracy_is_the_argmax_of_summed_continuation_logprobs(llama_path, tok):
    from slowed_peft.eval.likelihood import choice_loglik_accuracy

    model = _llama(llama_path)
    # Equal lengths within an item: on a random model the summed log-probs of continuations of different lengths
    # are ranked by length alone, which would hide a scorer reading the wrong positions.
    items = [
        ("Question: Which is a colour?\nAnswer:", [" red", " six", " hat", " Sun"]),
        ("Question: 2 + 2 =\nAnswer:", [" 4.", " 22"]),
        ("Q: sky?\nA:", [" blue", " gree", " up!", " none"]),
    ]
    best = []
    for context, continuations in items:
        scores = [_summed_logprob(model, tok, context, c) for c in continuations]
        assert len(set(scores)) == len(scores)  # no ties: the argmax is defined
        best.append(max(range(len(scores)), key=scores.__getitem__))
    gold = [best[0], (best[1] + 1) % 2, best[2]]  # right, wrong, right
    scored = [(c, k, g) for (c, k), g in zip(items, gold)]
    for batch_size in (32, 2):  # one batch, and pairs of an item split across right-padded batches
        result = choice_loglik_accuracy(model, tok, scored, batch_size=batch_size)
        assert result["hits"] == [True, False, True]
        assert (result["correct"], result["n"]) == (2, 3) and result["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no items"):
        choice_loglik_accuracy(model, tok, [])


@needs_arc
def test_arc_loglik_items_of_the_real_file():
    from slowed_peft.data.readers import read_arc
    from slowed_peft.eval.likelihood import arc_loglik_items

    items = arc_loglik_items("test", limit=5)
    rows = read_arc("test", limit=5)
    assert len(items) == 5
    for (context, continuations, gold), row in zip(items, rows):
        assert context == f"Question: {row['question']['stem'].strip()}\nAnswer:"
        assert context.startswith("Question: ") and context.endswith("\nAnswer:")
        assert continuations == [f" {c['text'].strip()}" for c in row["question"]["choices"]]
        assert 0 <= gold < len(continuations)
        assert row["question"]["choices"][gold]["label"] == row["answerKey"]


def test_arc_answer_key_outside_the_labels_is_refused(tmp_path):
    from slowed_peft.eval.likelihood import arc_loglik_items

    choices = [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]
    path = tmp_path / "arc" / "ARC-Challenge-Test.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"id": "q7", "question": {"stem": "Is it?", "choices": choices}, "answerKey": "C"}))
    with pytest.raises(ValueError, match=r"ARC row 'q7': answerKey 'C' is not one of its labels \['A', 'B'\]"):
        arc_loglik_items("test", data_dir=tmp_path)


# --------------------------------------------------------------------------------- the anchored arm, trained


def test_train_arm_anchored_on_the_training_prompts(llama_path, tok, tmp_path):
    arm = SLowEDArguments(arm="anchored", anchor_source="train", anchor_rank=4, anchor_limit=6)
    args = SLowEDSFTConfig(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, **TRAINER_ARGS)
    from slowed_peft.scripts.training import train_arm

    trainer = train_arm(arm, _llama(llama_path), tok, args, _rows())
    report = trainer.anchor_report
    assert isinstance(report, AnchorReport) and report.prompts == 6 and report.tokens > 6 * 10
    layers = _slowed_layers(trainer.model)
    assert len(layers) == 14 and set(report.ranks.values()) == {4} and len(report.ranks) == len(layers)
    moved = 0.0
    for layer in layers.values():
        q = layer.slowed_anchor["default"]
        assert q.shape == (layer.in_features, 4)
        _assert_orthonormal(q)
        with torch.no_grad():
            delta = layer.get_delta_weight("default")
            moved = max(moved, float(delta.norm()))
            assert float((delta @ q).norm()) <= 1e-5 * max(float(delta.norm()), 1e-12)  # ‖ΔW Q‖ ≈ 0
    assert moved > 1e-3  # it trained: the delta is not zero, only kept out of the anchor's directions
    assert trainer.state.global_step == 2
    # the bases are those of the initial model on the first anchor_limit user turns of the training rows
    fresh = get_peft_model(_llama(llama_path), peft_config_for_arm(arm))
    expected = fit_anchor(fresh, anchor_dataloader(tok, [r["prompt"][-1]["content"] for r in _rows()][:6]))
    assert expected.ranks == report.ranks and expected.tokens == report.tokens
    fitted = _slowed_layers(fresh)
    for name, layer in layers.items():
        q, ref = layer.slowed_anchor["default"].double(), fitted[name].slowed_anchor["default"].double()
        torch.testing.assert_close(q @ q.T, ref @ ref.T, atol=1e-4, rtol=0)  # the same subspace


def test_anchor_report_is_absent_for_other_arms(llama_path, tok, tmp_path):
    args = SLowEDSFTConfig(str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, **TRAINER_ARGS)
    from slowed_peft.scripts.training import train_arm

    trainer = train_arm(SLowEDArguments(arm="sft"), _llama(llama_path), tok, args, _rows(4))
    assert trainer.anchor_report is None
    assert all("default" not in layer.slowed_anchor for layer in _slowed_layers(trainer.model).values())
