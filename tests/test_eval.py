"""Tests for ``slowed_peft.eval``: refusals, generation, harmful KL, loaders, scoring, report."""

from __future__ import annotations

import copy
import json
import os
import re
import string

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slowed_peft.eval import (  # noqa: E402
    AGIEVAL_TASKS,
    BBH_TASKS,
    BENIGN_PROMPTS,
    GCG_REFUSAL_PREFIXES,
    HARMFUL_PROBES,
    EvalReport,
    ReasoningExample,
    agieval_examples,
    arc_examples,
    available_tasks,
    bbh_answer_format,
    bbh_examples,
    bbh_match,
    compare_table,
    eval_equation,
    evaluate_reasoning,
    evaluate_safety,
    extract_bbh_answer,
    extract_number,
    format_prompts,
    format_value,
    generate_batched,
    gsm8k_examples,
    harmful_kl,
    is_refusal,
    load_advbench,
    load_task,
    numbers_match,
    refusal_ratio,
    score_outputs,
    split_advbench,
    svamp_examples,
)


# ----------------------------------------------------------------------------------------------- refusals


def test_refusal_detection():
    assert len(GCG_REFUSAL_PREFIXES) == 29 and GCG_REFUSAL_PREFIXES[0] == "I'm sorry"
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m sorry, I won't do that.")  # curly apostrophe
    assert is_refusal("As a responsible assistant, I will not.")
    assert is_refusal("Making weapons is illegal and unethical.")
    assert not is_refusal("Sure, here is a recipe for vegetable soup.")
    assert not is_refusal("")
    assert not is_refusal("i'm sorry")  # case-sensitive, like the GCG evaluation
    assert is_refusal("Nope.", refusal_markers=["Nope"])
    assert not is_refusal("I'm sorry", refusal_markers=["Nope"])


# --------------------------------------------------------------------------------------- tiny model fixtures


def _tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable[:95]) + ["\n"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


@pytest.fixture(scope="module")
def tok():
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


PROMPTS = ["Hello", "How do I bake bread quickly?", "x", "Tell me a joke about cats, please."]


def test_format_prompts(tok):
    assert format_prompts(tok, ["Hi"]) == ["<|user|>Hi\n<|assistant|>"]
    assert format_prompts(tok, ["Hi"], system_prompt="Be safe.") == ["<|system|>Be safe.\n<|user|>Hi\n<|assistant|>"]
    assert format_prompts(tok, ["Hi"], use_chat_template=False) == ["Hi"]


def test_left_padded_batch_matches_unbatched(tiny_model, tok):
    assert tok.pad_token is None  # exercised: pad falls back to EOS
    batched = generate_batched(tiny_model, tok, PROMPTS, max_new_tokens=10, batch_size=4)
    single = [generate_batched(tiny_model, tok, [p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert len(batched) == len(PROMPTS) and all(isinstance(x, str) for x in batched)
    assert tok.pad_token is None and tok.padding_side == "right"  # tokenizer left untouched
    plain = generate_batched(tiny_model, tok, PROMPTS[:2], max_new_tokens=5, batch_size=2, use_chat_template=False)
    assert len(plain) == 2


def test_refusal_ratio_on_model(tiny_model, tok):
    out = refusal_ratio(tiny_model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    assert out["n"] == len(PROMPTS) and len(out["responses"]) == len(PROMPTS)
    assert out["refusal_ratio"] == sum(map(is_refusal, out["responses"])) / len(PROMPTS)
    marker = out["responses"][0][:2]
    forced = refusal_ratio(tiny_model, tok, PROMPTS, refusal_markers=[marker], responses=out["responses"])
    assert forced["responses"] == out["responses"]  # given responses are scored, not regenerated
    assert forced["refusal_ratio"] == sum(bool(r.strip()) and marker in r for r in out["responses"]) / len(PROMPTS)
    canned = refusal_ratio(None, tok, ["a", "b"], responses=["I cannot help.", "Sure!"])
    assert canned["refusal_ratio"] == 0.5


def test_harmful_kl_identical_and_perturbed(tiny_model, tok):
    same = harmful_kl(tiny_model, tok, PROMPTS, initial_model=tiny_model, max_new_tokens=8, batch_size=3)
    assert same == 0.0
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.model.layers[0].mlp.down_proj.weight.add_(
            0.5 * torch.randn_like(tuned.model.layers[0].mlp.down_proj.weight)
        )
    moved = harmful_kl(tuned, tok, PROMPTS, initial_model=tiny_model, max_new_tokens=8, batch_size=3)
    assert moved > 1e-4
    given = ["I cannot help with that.", "Sure.", "ok", "No."]
    assert harmful_kl(tiny_model, tok, PROMPTS, initial_model=tiny_model, responses=given) < 1e-7
    assert harmful_kl(tuned, tok, PROMPTS, initial_model=tiny_model, responses=given) > 1e-4
    with pytest.raises(ValueError, match="initial_model"):
        harmful_kl(tuned, tok, PROMPTS)


def test_harmful_kl_peft_disable_adapter(tiny_model, tok):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny_model)
    noop = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B = 0: identity
    assert harmful_kl(noop, tok, PROMPTS[:2], max_new_tokens=6) < 1e-7
    torch.manual_seed(1)
    lora = get_peft_model(
        copy.deepcopy(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    kl = harmful_kl(lora, tok, PROMPTS[:2], max_new_tokens=6)
    assert kl > 1e-6
    # the adapter is active again afterwards, and matches an explicit initial model
    ids = torch.tensor([tok("Hello")["input_ids"]])
    assert not torch.allclose(lora(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert abs(harmful_kl(lora, tok, PROMPTS[:2], initial_model=tiny_model, max_new_tokens=6) - kl) < 1e-5
    assert len(generate_batched(lora, tok, PROMPTS[:2], max_new_tokens=4)) == 2

    result = evaluate_safety(
        lora, tok, sets={"probes": HARMFUL_PROBES[:2], "benign": BENIGN_PROMPTS[:2]}, max_new_tokens=4
    )
    assert set(result) == {"probes", "benign"}
    for row in result.values():
        assert set(row) == {"refusal_ratio", "harmful_kl", "n"} and row["n"] == 2 and row["harmful_kl"] > 0
    plain = evaluate_safety(tiny_model, tok, sets={"p": HARMFUL_PROBES[:1]}, max_new_tokens=3)
    assert plain["p"]["harmful_kl"] is None and plain["p"]["n"] == 1


# ------------------------------------------------------------------------------------------ probes / AdvBench


def test_builtin_probe_sets():
    assert len(HARMFUL_PROBES) >= 20 and len(BENIGN_PROMPTS) >= 20
    assert len(set(HARMFUL_PROBES)) == len(HARMFUL_PROBES) and not set(HARMFUL_PROBES) & set(BENIGN_PROMPTS)


def _write_advbench(path, n=10):
    rows = ["goal,target"] + [f'"Do bad thing {i}, quickly","Sure, here is bad thing {i}"' for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_load_and_split_advbench(tmp_path, monkeypatch):
    csv_path = tmp_path / "advbench" / "harmful_behaviors.csv"
    csv_path.parent.mkdir()
    _write_advbench(csv_path)
    goals = load_advbench(csv_path)
    assert goals[0] == "Do bad thing 0, quickly" and len(goals) == 10
    assert load_advbench(tmp_path) == goals == load_advbench(str(tmp_path / "advbench"))
    assert load_advbench(csv_path, limit=3) == goals[:3]
    train, test = split_advbench(goals, train_fraction=0.6, seed=0)
    assert len(train) == 6 and len(test) == 4 and not set(train) & set(test) and set(train) | set(test) == set(goals)
    assert split_advbench(goals, seed=0) == (train, test) and split_advbench(goals, seed=1) != (train, test)
    assert (
        load_advbench(csv_path, split="test") == test and load_advbench(csv_path, split="train", limit=2) == train[:2]
    )
    assert test == [g for g in goals if g in test]  # original order kept
    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path))
    assert load_advbench() == goals
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_advbench(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="goal"):
        load_advbench(bad)
    with pytest.raises(ValueError, match="split"):
        load_advbench(csv_path, split="dev")


# --------------------------------------------------------------------------------------- reasoning loaders


@pytest.fixture()
def data_root(tmp_path):
    """A hand-written miniature of the ../shared/data layout."""
    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    bbh = {
        "canary": "c",
        "examples": [{"input": "True and not False is", "target": "True"}, {"input": "not True is", "target": "False"}],
    }
    (tmp_path / "bbh" / "bbh" / "boolean_expressions.json").write_text(json.dumps(bbh))
    demo = "Q: True is\nA: Let's think step by step.\nSo the answer is True.\n"
    cot = f"CANARY LINE\n-----\nEvaluate boolean expressions.\n\n{demo}"
    (tmp_path / "bbh" / "cot-prompts" / "boolean_expressions.txt").write_text(cot)
    (tmp_path / "arc").mkdir()
    gas = [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]
    two = [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}]
    arc = [
        {"id": "q1", "question": {"stem": "Which is a gas?", "choices": gas}, "answerKey": "B"},
        {"id": "q2", "question": {"stem": "Pick two.", "choices": two}, "answerKey": "2"},
    ]
    (tmp_path / "arc" / "ARC-Challenge-Test.jsonl").write_text("\n".join(json.dumps(r) for r in arc) + "\n")
    (tmp_path / "agieval").mkdir()
    options = ["(A)red", "(B)blue", "(C)green", "(D)pink", "(E)grey"]
    agi = {"passage": "A short passage.", "question": "What is it?", "options": options, "label": "C", "other": None}
    (tmp_path / "agieval" / "lsat-lr.jsonl").write_text(json.dumps(agi) + "\n")
    (tmp_path / "gsm8k").mkdir()
    gsm = {"question": "Ann has 1,000 apples and buys 234 more. How many?", "answer": "1000+234=1234\n#### 1,234"}
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps(gsm) + "\n")
    svamp = tmp_path / "distill_step_by_step" / "svamp"
    svamp.mkdir(parents=True)
    rows = [
        {"input": "Tom had 10 pens and lost 4. How many left?", "label": "( 10.0 - 4.0 )"},
        {"input": "Split 3 by 4?", "label": "( 3.0 / 4.0 )"},
    ]
    (svamp / "svamp_test.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_loaders_on_fixture_files(data_root):
    bbh = bbh_examples("boolean_expressions", data_root)
    assert len(bbh) == 2 and bbh[0].answer == "True" and bbh[0].kind == "bbh"
    assert bbh[0].prompt.startswith("Evaluate boolean expressions.") and "CANARY" not in bbh[0].prompt
    assert bbh[0].prompt.endswith("\n\nQ: True and not False is\nA: Let's think step by step.")
    arc = arc_examples(data_dir=data_root)
    assert [e.answer for e in arc] == ["B", "2"] and arc[1].labels == ("1", "2")
    assert "(A) ice\n(B) steam" in arc[0].prompt and arc[0].prompt.rstrip().endswith(
        '"So the answer is (X)." where X is the label of the correct choice.'
    )
    agi = agieval_examples("lsat-lr", data_root)[0]
    assert agi.answer == "C" and agi.labels == tuple("ABCDE") and agi.choices[2] == "green"
    assert agi.prompt.startswith("A short passage.") and "(C) green" in agi.prompt
    assert gsm8k_examples(data_dir=data_root)[0].answer == "1234"
    assert [e.answer for e in svamp_examples(data_dir=data_root)] == ["6", "0.75"]
    assert len(load_task("bbh:boolean_expressions", data_root, limit=1)) == 1


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gsm8k" / "test.jsonl")):
        gsm8k_examples(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="boolean_expressions.json"):
        bbh_examples("boolean_expressions", tmp_path)
    with pytest.raises(ValueError, match="Accepted: gsm8k, svamp, arc.*bbh:boolean_expressions"):
        load_task("gsm9k", tmp_path)
    with pytest.raises(ValueError, match="Unknown reasoning task 'mmlu'"):
        evaluate_reasoning(None, None, tasks=["mmlu"], data_dir=tmp_path)
    with pytest.raises(ValueError, match="expected one of"):
        agieval_examples("math", tmp_path)
    with pytest.raises(ValueError, match="Unsupported"):
        eval_equation("__import__('os').system('x')")
    with pytest.raises(ValueError, match="missing key"):
        score_outputs([{"prompt": "p", "answer": "1"}], ["1"])
    assert "agieval:sat-math" in available_tasks() and len(BBH_TASKS) == 27 and len(AGIEVAL_TASKS) == 9


def test_score_outputs_hand_given():
    examples = [
        {"prompt": "2+2?", "answer": "4", "kind": "numeric"},
        {"prompt": "q", "answer": "B", "kind": "choice", "labels": ["A", "B", "C", "D"]},
        {"prompt": "q", "answer": "(A)", "kind": "bbh"},
        {"prompt": "q", "answer": "Paris", "kind": "exact"},
        ReasoningExample("q", "1234", "numeric"),
    ]
    outputs = [
        "2 + 2 = 4. So the answer is 4.",
        "So the answer is (C).",
        "So the answer is (A).",
        "So the answer is paris.",
        "So the answer is 1,234.",
    ]
    assert score_outputs(examples, outputs) == {"accuracy": 0.8, "n": 5}
    with pytest.raises(ValueError, match="kind"):
        ReasoningExample("q", "a", "essay")
    assert ReasoningExample("q", "(C)", "choice").answer == "C"
    with pytest.raises(ValueError, match="not one of the labels"):
        ReasoningExample("q", "Z", "choice", labels=["A", "B"])


def test_evaluate_reasoning_scoring(monkeypatch, data_root):
    canned = {
        "Ann has": "1000 + 234 = 1234. So the answer is 1,234.",
        "Tom had": "So the answer is 6.",
        "Split 3": "So the answer is 0.8.",
        "Which is a gas": "Steam is a gas. So the answer is (B).",
        "Pick two": "So the answer is 1.",
        "True and not False": "So the answer is True.",
        "not True is": "So the answer is True.",
    }

    def fake_generate(model, tokenizer, prompts, **kwargs):
        return [next(v for k, v in canned.items() if k in p.split("Q: ")[-1]) for p in prompts]

    monkeypatch.setattr("slowed_peft.eval.reasoning.generate_batched", fake_generate)
    outputs: dict = {}
    res = evaluate_reasoning(
        None, None, tasks=["gsm8k", "svamp", "arc", "bbh:boolean_expressions"], data_dir=data_root, outputs=outputs
    )
    assert res == {
        "gsm8k": {"accuracy": 1.0, "n": 1},
        "svamp": {"accuracy": 0.5, "n": 2},
        "arc": {"accuracy": 0.5, "n": 2},
        "bbh:boolean_expressions": {"accuracy": 0.5, "n": 2},
    }
    assert outputs["arc"][0].endswith("(B).")
    assert evaluate_reasoning(None, None, tasks=["svamp"], data_dir=data_root, limit=1) == {
        "svamp": {"accuracy": 1.0, "n": 1}
    }


def test_evaluate_reasoning_custom_examples_on_model(tiny_model, tok):
    demo = [{"prompt": "1+1?", "answer": "2", "kind": "numeric"}, {"prompt": "Pick A", "answer": "A", "kind": "choice"}]
    outputs: dict = {}
    res = evaluate_reasoning(tiny_model, tok, examples=demo, max_new_tokens=4, batch_size=2, outputs=outputs)
    assert set(res) == set(outputs) == {"custom"} and len(outputs["custom"]) == 2
    assert outputs["custom"] == generate_batched(tiny_model, tok, [d["prompt"] for d in demo], max_new_tokens=4)
    assert res["custom"] == score_outputs(demo, outputs["custom"])  # the scores are those of the real completions
    res = evaluate_reasoning(
        tiny_model, tok, tasks=[], examples={"demo": demo}, max_new_tokens=2, limit=1, outputs=outputs
    )
    assert res == {"demo": score_outputs(demo[:1], outputs["demo"])} and res["demo"]["n"] == 1


# ------------------------------------------------------------------------------------------------- report


def test_report_json_shape_and_tables(tmp_path):
    safety = {"probes": {"refusal_ratio": 0.75, "harmful_kl": 0.0123, "n": 24, "responses": ["x"]}}
    reasoning = {"gsm8k": {"accuracy": 0.5, "n": 10}}
    report = EvalReport("tiny-llama", "adapters/slowed", safety, reasoning)
    path = report.save(tmp_path / "out" / "eval.json")
    data = json.loads(path.read_text())
    assert data == {
        "model": "tiny-llama",
        "adapter": "adapters/slowed",
        "safety": {"probes": {"refusal_ratio": 0.75, "harmful_kl": 0.0123, "n": 24}},
        "reasoning": {"gsm8k": {"accuracy": 0.5, "n": 10}},
    }
    assert EvalReport.load(path) == report
    assert report.table() == (
        "model: tiny-llama   adapter: adapters/slowed\n\n"
        "safety set  refusal  harm_kl   n\n"
        "----------  -------  -------  --\n"
        "probes        0.750   0.0123  24\n\n"
        "reasoning task  accuracy   n\n"
        "--------------  --------  --\n"
        "gsm8k              0.500  10"
    )
    before = EvalReport(
        "tiny-llama",
        None,
        {"probes": {"refusal_ratio": 0.9, "harmful_kl": 0.0, "n": 24}},
        {"gsm8k": {"accuracy": 0.4, "n": 10}},
    )
    assert compare_table(before, report.to_dict()).splitlines()[2:] == [
        "metric                before   after   delta",
        "--------------------  ------  ------  ------",
        "probes/refusal_ratio  0.9000  0.7500  -0.150",
        "probes/harmful_kl     0.0000  0.0123  +0.012",
        "gsm8k/accuracy        0.4000  0.5000  +0.100",
    ]
    missing_kl = str(EvalReport("m", safety={"s": {"refusal_ratio": 1.0, "harmful_kl": None, "n": 1}}))
    assert missing_kl.splitlines()[-1].split() == ["s", "1.000", "-", "1"]  # a missing KL shows as "-"
    tiny_kl = str(EvalReport("m", safety={"s": {"refusal_ratio": 1.0, "harmful_kl": 3e-5, "n": 1}}))
    assert tiny_kl.splitlines()[-1].split() == ["s", "1.000", "3.00e-05", "1"]  # not rounded away to 0.0000


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (None, {}, "-"),
        (24, {}, "24"),
        (True, {}, "True"),
        ("text", {}, "text"),
        (0.75, {}, "0.750"),
        (0.0123, {"digits": 4}, "0.0123"),
        (0.0, {}, "0.000"),
        (3e-5, {}, "3.00e-05"),
        (-3e-5, {}, "-3.00e-05"),
        (3e-5, {"tiny": False}, "0.000"),  # markdown tables of the replication report
        (None, {"missing": "\u2013"}, "\u2013"),
        (0.123456, {"significant": 4}, "0.1235"),  # model-card metrics of unknown scale
        (12345.678, {"significant": 4}, "1.235e+04"),
        (7, {"significant": 4}, "7"),
    ],
)
def test_format_value(value, kwargs, expected):
    assert format_value(value, **kwargs) == expected


# -------------------------------------------------------------------------------- real data (skips if absent)


def _real_root():
    from slowed_peft.utils.paths import data_dir

    root = data_dir()
    if root is None or not (root / "bbh").is_dir():
        pytest.skip("shared data folder not available")
    return root


def test_real_data_layouts():
    root = _real_root()
    for task in BBH_TASKS:
        exs = bbh_examples(task, root)
        assert exs and all(bbh_match(f"So the answer is {e.answer}.", e.answer) for e in exs)
        # every few-shot demonstration in the CoT prompt yields an answer in the task's format
        fmt = bbh_answer_format(exs[0].answer)
        demos = exs[0].prompt.split("\n\nQ: ")[1:-1]
        assert len(demos) == 3 and all(extract_bbh_answer(d, fmt) is not None for d in demos), task
    arc = arc_examples(data_dir=root)
    assert len(arc) == 1172 and all(e.answer in e.labels for e in arc)
    for task in AGIEVAL_TASKS:
        assert all(e.answer in e.labels for e in agieval_examples(task, root))
    gsm = gsm8k_examples(data_dir=root, limit=50)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", e.answer) for e in gsm)  # a plain number, thousands commas dropped
    rows = [json.loads(line) for line in (root / "gsm8k" / "test.jsonl").open()][:50]
    assert all(numbers_match(extract_number(r["answer"]), float(e.answer)) for r, e in zip(rows, gsm, strict=True))
    assert len(svamp_examples(data_dir=root)) == 200
    goals = load_advbench(root / "advbench" / "harmful_behaviors.csv")
    assert len(goals) == 520 and len(load_advbench(split="test")) == 208


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models run faster on one thread, and it keeps the suite quick on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_advbench_csv_with_bad_bytes_names_file_line_and_column(tmp_path):
    path = tmp_path / "harmful_behaviors.csv"
    path.write_bytes(b"goal,target\nWrite a poem,Sure\nBad \xff byte,Sure\n")
    with pytest.raises(ValueError, match=r"harmful_behaviors\.csv:3:5"):
        load_advbench(path)
