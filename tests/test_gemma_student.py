"""An aligned student from a base model (Gemma 3 270M): the benign answers it trains on are borrowed from an instruct
model (``benign_answer_model``), the aligned students cached before that field keep their keys, the study passes it
through, ``--config frontier_anchor_gemma`` parses, and the ARC log-likelihood never builds a ``[batch, width,
vocab]`` log-softmax (3 GB at Gemma's vocabulary). Tiny models only: nothing real is loaded."""

from __future__ import annotations

import gc
import json
import types
import weakref
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from test_gemma_embedded import gemma_char_tokenizer, tiny_gemma3

from slowed_peft.scripts import align
from slowed_peft.scripts.align import AlignArguments, fast_align_arguments


BORROWED = [  # the answer model's answers, in order; the third reads as a refusal and is dropped
    "Start with a simple plan. Then follow it",
    "Water boils at 100 degrees Celsius at sea level.",
    "I'm sorry, but I can't draw pictures.",
    "Paris is the capital of France. It is on the Seine",
]
# What build_training_set keeps of them: whole sentences only (trim_response), the refusal dropped.
KEPT = ["Start with a simple plan.", BORROWED[1], "Paris is the capital of France."]
QUICK = dict(  # the study's --quick student (study._aligned_student)
    arc_questions=0, benign_limit=16, eval_limit=8, harmful_limit=24, benign_max_new_tokens=48, eval_batch_size=16
)


# ---------------------------------------------------------------------------------------------- cache keys


@pytest.mark.parametrize(
    "make, pinned",
    [
        (lambda: AlignArguments(), "1a14f21a35"),
        (lambda: fast_align_arguments(), "904ea0cf60"),  # the frontier_anchor student in the model cache
        (lambda: AlignArguments(seed=0, **QUICK), "f19f6930f8"),  # the quick studies' student
        (lambda: fast_align_arguments("gemma-3-270m"), "87ba34285d"),
    ],
)
def test_fingerprints_without_an_answer_model_are_the_ones_cached_before_the_field(make, pinned):
    """Computed before ``benign_answer_model`` existed: every aligned student already cached keeps its folder."""
    args = make()
    assert args.benign_answer_model is None and args.fingerprint() == pinned
    assert args.resolved_output_dir().name.endswith(f"-{pinned}")


def test_an_answer_model_changes_the_fingerprint_and_names_its_student():
    own = fast_align_arguments("gemma-3-270m")
    smol = fast_align_arguments("gemma-3-270m", benign_answer_model="smollm2-135m-instruct")
    other = fast_align_arguments("gemma-3-270m", benign_answer_model="/models/another-instruct")
    assert len({own.fingerprint(), smol.fingerprint(), other.fingerprint()}) == 3
    assert smol.resolved_output_dir().name == f"gemma-3-270m-{smol.fingerprint()}"
    assert asdict(smol) == {**asdict(own), "benign_answer_model": "smollm2-135m-instruct"}  # nothing else moves
    # eval-only settings stay out of the key, with or without an answer model
    assert smol.fingerprint() == AlignArguments(**{**asdict(smol), "eval_limit": 3, "force": True}).fingerprint()


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_answer_model_is_refused_by_name(blank):
    with pytest.raises(ValueError, match=r"benign_answer_model=" + repr(blank)):
        AlignArguments(benign_answer_model=blank)


# ---------------------------------------------------------------------------------------------- borrowed answers


@pytest.fixture
def alignment_data(monkeypatch):
    """Three harmful prompts and no ARC questions (no data folder needed); returns the harmful prompts."""
    import slowed_peft.eval as ev

    harmful = ["Explain how to pick a lock on a neighbour's door.", "Write malware.", "Make a weapon."]
    monkeypatch.setattr(ev, "load_advbench", lambda *a, **k: harmful)
    monkeypatch.setattr(align, "benign_arc_questions", lambda n, data_dir=None: [])
    return harmful


def test_the_student_trains_on_the_answer_models_answers_and_never_answers_itself(
    alignment_data, monkeypatch, tiny_dir
):
    """A tiny Llama folder stands in for the answer model (really loaded by ``load_model``), a tiny Gemma3 for the
    base student; the generator answers only for the Llama and records what it was asked."""
    import slowed_peft.base_models as base_models
    import slowed_peft.eval as ev

    loaded, asked, alive = [], [], []
    real_load = base_models.load_model

    def spy_load(name_or_path, *args, **kwargs):
        loaded.append(name_or_path)
        model, tokenizer = real_load(name_or_path, *args, **kwargs)
        alive.append(weakref.ref(model))
        return model, tokenizer

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, **kwargs):
        if model.config.model_type != "llama":
            raise AssertionError(f"the student ({model.config.model_type}) was asked to answer")
        asked.append((list(prompts), max_new_tokens, batch_size, model.training))
        return BORROWED[: len(prompts)]

    monkeypatch.setattr(base_models, "load_model", spy_load)
    monkeypatch.setattr(ev, "generate_batched", fake_generate)
    student = tiny_gemma3(tiny_dir + "-gemma")
    args = fast_align_arguments("gemma-3-270m", benign_answer_model=tiny_dir)
    args.benign_limit = len(BORROWED)
    train = align.build_training_set(student, gemma_char_tokenizer(), args)

    assert loaded == [tiny_dir]  # the answer model, once; never the student
    ((prompts, max_new_tokens, batch_size, training),) = asked
    assert (max_new_tokens, batch_size, training) == (args.benign_max_new_tokens, args.eval_batch_size, False)
    benign = [r for r in train if r["kind"] == "benign"]
    assert sorted(r["completion"][0]["content"] for r in benign) == sorted(KEPT)
    assert {r["prompt"][0]["content"] for r in benign} == {prompts[i] for i in (0, 1, 3)}
    assert sorted(r["prompt"][0]["content"] for r in train if r["kind"] == "harmful") == sorted(alignment_data)
    gc.collect()
    assert alive[0]() is None  # the answer model is freed before the student trains


def test_without_an_answer_model_the_student_answers_itself(alignment_data, monkeypatch):
    import slowed_peft.base_models as base_models
    import slowed_peft.eval as ev

    student = object()
    calls = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        calls.append(model)
        return BORROWED[: len(prompts)]

    def no_load(*args, **kwargs):
        raise AssertionError("no answer model is loaded when benign_answer_model is None")

    monkeypatch.setattr(ev, "generate_batched", fake_generate)
    monkeypatch.setattr(base_models, "load_model", no_load)
    train = align.build_training_set(student, None, AlignArguments(benign_limit=len(BORROWED), arc_questions=0))
    assert calls == [student]
    assert sorted(r["completion"][0]["content"] for r in train if r["kind"] == "benign") == sorted(KEPT)


@pytest.mark.parametrize("answer_model", [None, "smollm2-135m-instruct"])
def test_the_alignment_report_names_the_model_that_answered(answer_model, monkeypatch, tmp_path):
    """``_build`` with its parts stubbed (no training): the report says whose benign answers were trained on."""
    import slowed_peft.base_models as base_models
    import slowed_peft.scripts.training as training

    student_dir = tmp_path / "student"
    monkeypatch.setattr(
        base_models, "load_model", lambda name, *a, **k: (tiny_gemma3(student_dir), gemma_char_tokenizer())
    )
    monkeypatch.setattr(align, "held_out_sets", lambda args, limit=None: {"advbench": ["x"], "benign": ["y"]})
    monkeypatch.setattr(align, "safety_summary", lambda *a, **k: {"advbench": {}, "benign": {}})
    rows = [{"prompt": [], "completion": [], "kind": "harmful"}, {"prompt": [], "completion": [], "kind": "benign"}]
    monkeypatch.setattr(align, "build_training_set", lambda model, tok, args: Dataset.from_list(rows))
    monkeypatch.setattr(
        training,
        "train_arm",
        lambda arm, model, tok, targs, data: types.SimpleNamespace(
            model=model, state=types.SimpleNamespace(log_history=[{"loss": 1.0}])
        ),
    )
    args = fast_align_arguments("gemma-3-270m", benign_answer_model=answer_model)
    out = tmp_path / "aligned"
    out.mkdir()
    _, report = align._build(args, out, out / align.REPORT_NAME)
    assert report["benign_answers_by"] == (answer_model or "gemma-3-270m")
    assert report["args"]["benign_answer_model"] == answer_model and report["fingerprint"] == args.fingerprint()
    assert json.loads((out / align.REPORT_NAME).read_text())["benign_answers_by"] == report["benign_answers_by"]


# ---------------------------------------------------------------------------------------------- the study


def test_the_study_passes_the_answer_model_to_both_recipes(monkeypatch):
    from slowed_peft.scripts.study import _aligned_student
    from slowed_peft.scripts.study_config import StudyArguments

    seen = []
    monkeypatch.setattr(align, "align_student", lambda args: (seen.append(args) or "folder", {}))
    cases = [dict(student="demo"), dict(student="replication"), dict(student="demo", quick=True)]
    for case in cases:
        for answer_model in (None, "smollm2-135m-instruct"):
            _aligned_student(
                StudyArguments(model_name_or_path="gemma-3-270m", benign_answer_model=answer_model, **case)
            )
    demo, demo_smol, repl, repl_smol, quick, quick_smol = seen
    assert demo == fast_align_arguments("gemma-3-270m", 0)
    assert demo_smol == fast_align_arguments("gemma-3-270m", 0, benign_answer_model="smollm2-135m-instruct")
    assert repl == AlignArguments(model_name_or_path="gemma-3-270m")
    assert repl_smol == AlignArguments(model_name_or_path="gemma-3-270m", benign_answer_model="smollm2-135m-instruct")
    assert quick == AlignArguments(model_name_or_path="gemma-3-270m", **QUICK)
    assert quick_smol.benign_answer_model == "smollm2-135m-instruct" and quick_smol.eval_limit == QUICK["eval_limit"]


def test_the_answer_model_shapes_a_study_and_old_records_count_at_none(tmp_path):
    from slowed_peft.scripts.runs import NOT_SHAPING, reusable, study_args
    from slowed_peft.scripts.study_config import StudyArguments

    assert StudyArguments().benign_answer_model is None and "benign_answer_model" not in NOT_SHAPING
    old = study_args(StudyArguments())
    del old["benign_answer_model"]  # a run recorded before the field existed
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"study_args": old}))
    assert reusable(path, StudyArguments())
    with pytest.raises(ValueError, match=r"benign_answer_model: None -> 'smollm2-135m-instruct'"):
        reusable(path, StudyArguments(benign_answer_model="smollm2-135m-instruct"))


def test_the_gemma_config_parses_with_frontier_anchors_sizes():
    from slowed_peft.scripts.configs import shipped_configs
    from slowed_peft.scripts.study import parse
    from slowed_peft.scripts.study_config import parse_method

    gemma = parse([], default_config="frontier_anchor_gemma")
    anchor = parse([], default_config="frontier_anchor")
    assert "frontier_anchor_gemma" in shipped_configs()
    assert (gemma.model_name_or_path, gemma.student, gemma.benign_answer_model) == (
        "gemma-3-270m",
        "demo",
        "smollm2-135m-instruct",
    )
    assert gemma.output_dir == "outputs/frontier_anchor_gemma" and anchor.benign_answer_model is None
    assert gemma.methods == ["sft lr=1e-4", "anchored", "lora r=16"] and all(parse_method(m) for m in gemma.methods)
    assert gemma.seeded_methods == ["sft lr=1e-4", "anchored"] and gemma.seeds == [0, 1, 2]
    assert len(gemma.plan()) == 3 + 2 * 2 and gemma.anchor_rank == 64
    shaping = {k: v for k, v in asdict(anchor).items() if k not in ("output_dir", "model_name_or_path", "methods")}
    shaping.pop("seeded_methods")
    assert {k: getattr(gemma, k) for k in shaping} == {**shaping, "benign_answer_model": "smollm2-135m-instruct"}


# ---------------------------------------------------------------------------------------------- memory at 262k vocab


def test_choice_logprobs_normalise_only_the_continuation_positions(monkeypatch, tmp_path):
    """Same numbers as the former log-softmax over the whole ``[batch, width, vocab]`` logits, bit for bit, while
    every log-softmax it runs is ``[continuation tokens, vocab]``."""
    from slowed_peft.eval import likelihood

    model, tok = tiny_gemma3(tmp_path / "gemma"), gemma_char_tokenizer()
    texts = [("Question: Which is a colour?\nAnswer:", " red"), ("Q: 2+2=\nA:", " 4."), ("Q: sky?\nA:", " blue!")]
    pairs = [(tok(c)["input_ids"], tok(k, add_special_tokens=False)["input_ids"]) for c, k in texts]
    shapes = []

    def spy(x, dim=-1, **kwargs):
        shapes.append(tuple(x.shape))
        return F.log_softmax(x, dim=dim, **kwargs)

    monkeypatch.setattr(likelihood, "F", types.SimpleNamespace(log_softmax=spy))
    scores = likelihood.continuation_logprobs(model, tok.pad_token_id, pairs, batch_size=2)
    vocab = model.config.vocab_size
    assert shapes == [(len(k), vocab) for _, k in pairs]

    expected = []  # the former computation
    with torch.no_grad():
        for start in range(0, len(pairs), 2):
            chunk = pairs[start : start + 2]
            width = max(len(c + k) for c, k in chunk)
            ids = torch.tensor([c + k + [tok.pad_token_id] * (width - len(c + k)) for c, k in chunk])
            mask = torch.tensor([[1] * len(c + k) + [0] * (width - len(c + k)) for c, k in chunk])
            logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, (c, k) in enumerate(chunk):
                positions = torch.arange(len(c) - 1, len(c) + len(k) - 1)
                expected.append(float(logp[row, positions, torch.tensor(k)].sum()))
    assert scores == expected
