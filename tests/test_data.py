"""Tests for slowed_peft.data: CoT loaders -> TRL prompt-completion datasets (hand-written fixture rows only)."""

from __future__ import annotations

import json
import os
import re


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from slowed_peft.data import (  # noqa: E402
    answer_line,
    canonical_answer,
    demo_cot_dataset,
    eval_arithmetic,
    extract_answer,
    from_columns,
    from_question_rationale_answer,
    load_bbh,
    load_cot_dataset,
    load_cqa,
    load_gsm8k,
    load_svamp,
    parse_bbh_prompt,
    parse_gsm8k_answer,
    to_conversational,
    to_prompt_completion,
)
from slowed_peft.data.answers import final_answer_segment, normalize_answer  # noqa: E402
from slowed_peft.utils.paths import data_dir  # noqa: E402


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def assert_answer_lines(ds):
    """Every completion ends with exactly one final line 'So the answer is <answer>.' matching the answer column."""
    assert set(ds.column_names) == {"prompt", "completion", "answer"}
    for row in ds:
        completion = row["completion"]
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        assert text.endswith(f"So the answer is {row['answer']}.")
        assert text.splitlines()[-1] == answer_line(row["answer"])
        assert text.count("So the answer is") == 1
        assert extract_answer(text) == row["answer"]


# ------------------------------------------------------------------------------------------------------ formats


def test_to_prompt_completion_format_and_existing_answer_sentence():
    row = to_prompt_completion("What is 2 + 3?", "2 + 3 = 5. So the answer is 5.", 5)
    assert row == {"prompt": "Question: What is 2 + 3?\nAnswer:", "completion": " 2 + 3 = 5.\nSo the answer is 5.",
                   "answer": "5"}  # fmt: skip
    assert to_prompt_completion("Q?", "", "x.")["completion"] == " So the answer is x."
    # a mid-sentence "the answer is" is not mistaken for the final answer sentence
    row = to_prompt_completion("Q?", "Of the choices, the closest answer is relax", "relax")
    assert row["completion"] == " Of the choices, the closest answer is relax\nSo the answer is relax."
    assert extract_answer("blah\nSo the answer is 3.5.") == "3.5"
    assert extract_answer("So the answer is (A).\nSo the answer is (B).") == "(B)"
    assert extract_answer("no final line") is None


ANSWERS = ["5", "3.5", "-219", "(A)", "True", "no", "] ) >", "apple banana cherry", "Monsters, Inc", 'the "red" one']


@pytest.mark.parametrize("answer", ANSWERS)
def test_answer_line_round_trips_through_both_parsers(answer):
    """What the data writes, the data parser reads back verbatim and the eval parser reads back as the same key."""
    completion = to_prompt_completion("Q?", "Some steps. 1 + 1 = 2.", answer)["completion"]
    assert extract_answer(completion) == canonical_answer(answer) == answer
    assert normalize_answer(final_answer_segment(completion)) == normalize_answer(answer)


def test_answer_normalisations_differ_by_job():
    assert canonical_answer("  (A).  ") == "(A)" and canonical_answer("Yes\n no") == "Yes no"  # text: case kept
    assert canonical_answer(7) == "7" and canonical_answer(3.5) == "3.5"
    with pytest.raises(ValueError, match=r"Empty answer: ' \. '"):
        canonical_answer(" . ")
    assert normalize_answer("(A)") == "a" and normalize_answer("**Yes**.") == "yes"  # comparison key
    assert normalize_answer("\u22124") == "-4" and final_answer_segment("So the answer is \u22124.") == "-4"
    assert final_answer_segment("The answer is 4.\nQuestion: and now?\nThe answer is 9.") == "4"  # run-on cut
    assert final_answer_segment("no cue here") is None


def test_one_answers_module_behind_both_namespaces():
    import slowed_peft.eval as ev
    from slowed_peft.data import answers

    assert ev.normalize_answer is answers.normalize_answer and ev.final_answer_segment is answers.final_answer_segment
    assert ev.eval_equation is answers.eval_arithmetic is eval_arithmetic
    assert eval_arithmetic("-( 2.0 * ( 3 + 4 ) ) / 4") == -3.5
    for bad in ("1 / 0", "2 ** 3", "True + 1", "x + 1", "1 +"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            eval_arithmetic(bad)


def test_conversational_structure():
    row = to_prompt_completion("What is 2 + 3?", "2 + 3 = 5.", "5", conversational=True)
    assert row["prompt"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert row["completion"] == [{"role": "assistant", "content": "2 + 3 = 5.\nSo the answer is 5."}]
    assert row["answer"] == "5"
    assert to_conversational(to_prompt_completion("What is 2 + 3?", "2 + 3 = 5.", "5")) == row
    ds = demo_cot_dataset(n=10, conversational=True)
    assert len(ds) == 10
    for r in ds:
        assert [m["role"] for m in r["prompt"]] == ["user"] and [m["role"] for m in r["completion"]] == ["assistant"]
    assert_answer_lines(ds)


def test_column_mapping_question_rationale_answer():
    ds = Dataset.from_list([{"q": "How many legs do 2 cats have?", "cot": "Each cat has 4 legs. 2 * 4 = 8.", "gold": 8},
                            {"q": "How many legs do 2 birds have?", "cot": "2 * 2 = 4.", "gold": 4}])  # fmt: skip
    out = from_question_rationale_answer(ds, question_column="q", rationale_column="cot", answer_column="gold")
    assert len(out) == 2 and out["answer"] == ["8", "4"]
    assert out[0]["prompt"] == "Question: How many legs do 2 cats have?\nAnswer:"
    assert out[0]["completion"] == " Each cat has 4 legs. 2 * 4 = 8.\nSo the answer is 8."
    assert_answer_lines(out)


def test_from_columns_prompt_completion():
    ds = Dataset.from_list([{"input": "Add 5 and 7.", "output": "5 + 7 = 12. So the answer is 12."},
                            {"input": "Double 4.", "output": "4 * 2 = 8."}])  # fmt: skip
    with pytest.raises(ValueError, match="row 2: the completion"):  # no answer column and no final answer line
        from_columns(ds, prompt_column="input", completion_column="output")
    out = from_columns(ds.select([0]), prompt_column="input", completion_column="output")
    assert out[0] == {"prompt": "Add 5 and 7.", "completion": " 5 + 7 = 12.\nSo the answer is 12.", "answer": "12"}
    with_gold = ds.add_column("gold", ["12", "8"])
    out = from_columns(with_gold, "input", "output", answer_column="gold", conversational=True)
    assert out[1]["completion"][0]["content"] == "4 * 2 = 8.\nSo the answer is 8."
    assert_answer_lines(out)


def test_missing_columns_and_empty_dataset_errors():
    ds = Dataset.from_list([{"q": "x", "rationale": "y", "answer": "z"}])
    with pytest.raises(ValueError) as err:
        from_question_rationale_answer(ds)
    assert "['question']" in str(err.value) and "'q'" in str(err.value)
    with pytest.raises(ValueError, match="prompt.*completion"):
        from_columns(ds)
    empty = Dataset.from_dict({"question": [], "rationale": [], "answer": []})
    with pytest.raises(ValueError, match="empty"):
        from_question_rationale_answer(empty)


# ------------------------------------------------------------------------------------------------------ sources

GSM8K_ROWS = [
    {"question": "Tom has 3 bags of 4 marbles and gives away 5. How many marbles are left?",
     "answer": "Tom has 3*4 = <<3*4=12>>12 marbles.\nHe keeps 12-5 = <<12-5=7>>7 marbles.\n#### 7"},
    {"question": "A shop sells 500 boxes of 2 pens. How many pens is that?",
     "answer": "That is 500*2 = <<500*2=1000>>1,000 pens.\n#### 1,000"},
]  # fmt: skip


def test_gsm8k_annotations_removed_and_answer_extracted(tmp_path):
    rationale, answer = parse_gsm8k_answer(GSM8K_ROWS[0]["answer"])
    assert rationale == "Tom has 3*4 = 12 marbles.\nHe keeps 12-5 = 7 marbles." and answer == "7"
    assert parse_gsm8k_answer(GSM8K_ROWS[1]["answer"]) == ("That is 500*2 = 1,000 pens.", "1000")
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer("no final line")
    file = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    ds = load_gsm8k(file)
    assert len(ds) == 2 and ds["answer"] == ["7", "1000"]
    assert ds[0]["completion"] == " Tom has 3*4 = 12 marbles.\nHe keeps 12-5 = 7 marbles.\nSo the answer is 7."
    assert all("<<" not in c for c in ds["completion"])
    assert_answer_lines(ds)
    assert len(load_cot_dataset("gsm8k", path=tmp_path, limit=1)) == 1  # folder + {split}.jsonl
    assert load_cot_dataset(str(file))["answer"] == ["7", "1000"]  # generic file route detects the GSM8K layout


def test_default_data_dir_used_when_path_is_none(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K_ROWS[:1])
    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path))
    assert load_cot_dataset("gsm8k", split="test")["answer"] == ["7"]


def test_package_reads_no_folder_it_was_not_given(tmp_path, monkeypatch):
    """Only explicit paths, $SLOWED_DATA_DIR or the bundled files: a ../shared/data next to the working directory is
    not looked at, and a benchmark that is not bundled (GSM8K) is refused naming the variable."""
    write_jsonl(tmp_path / "shared" / "data" / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    assert data_dir() is None
    from slowed_peft.eval import gsm8k_examples as eval_gsm8k

    with pytest.raises(ValueError, match="SLOWED_DATA_DIR"):
        data_dir(required=True)
    for load in (lambda: load_cot_dataset("gsm8k"), lambda: eval_gsm8k()):
        with pytest.raises(FileNotFoundError, match="not among the files shipped.*SLOWED_DATA_DIR") as err:
            load()
        assert "shared" not in str(err.value) and "../" not in str(err.value)  # no pointer to repository files
    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="missing' is not a directory"):
        data_dir()


def test_bundled_data_resolution_order(tmp_path, monkeypatch):
    """An explicit path wins, then $SLOWED_DATA_DIR, then the files shipped with the package; a folder set in the
    variable that lacks a file falls through to the bundled copy."""
    from slowed_peft.eval import load_advbench
    from slowed_peft.utils.paths import BUNDLED_DATA

    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    bundled = load_advbench()
    assert len(bundled) == 520 and bundled[0].startswith("Write a script that can exploit vulnerabilities")
    assert len(load_cot_dataset("svamp", limit=16)) == 16
    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "harmful_behaviors.csv").write_text("goal,target\nMine,Sure\n")
    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path))
    assert load_advbench() == ["Mine"]  # the variable's folder before the bundled file
    assert len(load_cot_dataset("svamp", limit=3)) == 3  # not in that folder: the bundled rationales
    other = tmp_path / "explicit"
    other.mkdir()
    (other / "harmful_behaviors.csv").write_text("goal,target\nExplicit,Sure\n")
    assert load_advbench(other) == ["Explicit"]
    with pytest.raises(FileNotFoundError, match="explicit"):  # an explicit folder is the only one searched
        load_cot_dataset("svamp", path=other / "svamp")
    assert (BUNDLED_DATA / "SOURCES.md").is_file()


def test_bundled_files_are_the_ones_sources_md_names():
    """Every shipped data file is listed in bundled_data/SOURCES.md with its hash and every folder keeps a licence."""
    import hashlib

    from slowed_peft.utils.paths import BUNDLED_DATA

    sources = (BUNDLED_DATA / "SOURCES.md").read_text()
    files = [p for p in BUNDLED_DATA.rglob("*") if p.is_file() and p.name not in ("SOURCES.md", "LICENSE")]
    assert len(files) == 8
    for file in files:
        rel = file.relative_to(BUNDLED_DATA).as_posix()
        digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        assert f"`{rel}`" in sources and f"`{digest}`" in sources, rel
    for folder in ("advbench", "arc", "distill_step_by_step"):
        assert (BUNDLED_DATA / folder / "LICENSE").is_file()


def test_training_and_evaluation_loaders_read_the_same_rows(tmp_path):
    """The data loaders and the eval loaders of the same names share one reader per file: same questions/answers."""
    from slowed_peft.eval import bbh_examples as eval_bbh
    from slowed_peft.eval import gsm8k_examples as eval_gsm8k
    from slowed_peft.eval import svamp_examples as eval_svamp
    from slowed_peft.eval.tasks import numeric_prompt

    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    train = load_gsm8k(tmp_path / "gsm8k", split="test")
    scored = eval_gsm8k("test", data_dir=tmp_path)
    assert [e.answer for e in scored] == train["answer"] == ["7", "1000"]
    assert [e.prompt for e in scored] == [numeric_prompt(r["question"]) for r in GSM8K_ROWS]
    assert [e.answer for e in eval_gsm8k("test", data_dir=tmp_path, limit=1)] == load_gsm8k(
        tmp_path / "gsm8k", split="test", limit=1)["answer"]  # fmt: skip

    make_svamp(tmp_path / "distill_step_by_step" / "svamp")
    train = load_svamp(tmp_path / "distill_step_by_step" / "svamp", keep_unparsed=True)
    scored = eval_svamp("train", data_dir=tmp_path)
    assert [e.answer for e in scored] == train["answer"] == ["3", "3", "3.5", "9"]
    assert [e.meta["equation"] for e in scored][0] == "( 12.0 / 4.0 )"
    assert [e.prompt for e in scored] == [numeric_prompt(p[len("Question: "):-len("\nAnswer:")])
                                          for p in train["prompt"]]  # fmt: skip

    write_json(tmp_path / "bbh" / "bbh" / "boolean_expressions.json",
               {"examples": [{"input": "not True is", "target": "False"}]})  # fmt: skip
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    (tmp_path / "bbh" / "cot-prompts" / "boolean_expressions.txt").write_text(BBH_PROMPT, encoding="utf-8")
    prompt = eval_bbh("boolean_expressions", tmp_path)[0].prompt
    assert prompt.startswith("Decide whether a made-up statement holds.\n\nQ: ") and "FIXTURE HEADER" not in prompt
    exemplars = parse_bbh_prompt(BBH_PROMPT, include_description=False)
    for ex in exemplars:  # the training rows are exactly the few-shot exemplars the evaluation prompt shows
        assert f"Q: {ex['question']}\nA: {ex['rationale']} So the answer is {ex['answer']}." in prompt
    assert load_bbh(tmp_path / "bbh" / "cot-prompts")["answer"] == [ex["answer"] for ex in exemplars]


def make_svamp(folder):
    write_jsonl(folder / "svamp_train.json", [
        {"input": "Sam has 12 apples in 4 equal bags.\nHow many apples are in each bag?", "label": "( 12.0 / 4.0 )"},
        {"input": "Ann had 5 pens and lost 2.\nHow many pens does she have?", "label": "( 5.0 - 2.0 )"},
        {"input": "A rope is 7 m long and cut in 2 equal parts.\nHow long is each part?", "label": "( 7.0 / 2.0 )"},
        {"input": "Bo has 9 cards.\nHow many cards does he have?", "label": "9.0"},
    ])  # fmt: skip
    write_json(folder / "llm" / "train_CoT_0.json", [
        "Sam has 12 apples. 12 / 4 = 3. The answer is (12 / 4).\n\nQ: Made-up follow-up?\nA: 1 + 1 = 2. The answer is (1 + 1).",
        "Ann had 5 pens. 5 + 2 = 7. The answer is (5 + 2).",
    ])  # fmt: skip
    write_json(
        folder / "llm" / "train_CoT_1.json",
        [
            "The rope is 7 m. 7 / 2 = 3.5. The answer is (7 / 2).",
            "Bo has 9 cards and 9 cards and 9 cards",  # degenerate teacher output: no answer sentence
        ],
    )


def test_svamp_layout(tmp_path):
    make_svamp(tmp_path / "svamp")
    ds = load_svamp(tmp_path / "svamp")
    assert ds["answer"] == ["3", "3", "3.5"]  # gold labels evaluated; the unparsed 4th row is dropped
    assert ds[0]["prompt"] == "Question: Sam has 12 apples in 4 equal bags.\nHow many apples are in each bag?\nAnswer:"
    assert ds[0]["completion"] == " Sam has 12 apples. 12 / 4 = 3.\nSo the answer is 3."  # cut before the next Q:
    assert_answer_lines(ds)
    assert load_svamp(tmp_path / "svamp", drop_incorrect=True)["answer"] == ["3", "3.5"]  # teacher said 5 + 2
    kept = load_svamp(tmp_path / "svamp", keep_unparsed=True)
    assert len(kept) == 4 and kept[3]["completion"] == " So the answer is 9."
    assert len(load_cot_dataset("svamp", path=tmp_path / "svamp", limit=2)) == 2
    assert eval_arithmetic("( ( 17.0 + 15.0 ) + 2.0 )") == 34.0
    with pytest.raises(ValueError):
        eval_arithmetic("__import__('os').getcwd()")


def make_cqa(folder):
    choices = ["garden", "library", "river", "oven", "car"]
    write_jsonl(folder / "cqa_train.json", [
        {"id": "a1", "question": "Where would you find many books?", "choices": choices, "answer": "library",
         "abstractive_explanation": "books are kept there", "extractive_explanation": "books"},
        {"id": "a2", "question": "Where does water flow?", "choices": choices, "answer": "river",
         "abstractive_explanation": "water flows", "extractive_explanation": "flow"},
    ])  # fmt: skip
    write_json(
        folder / "llm" / "train_CoT_0.json",
        [
            "The answer must be a place with many books. Of the above choices, only library has many books. "
            "So the answer is (b) library.\n\nQ: Made-up?\nAnswer Choices:\n(a) x\n(b) y\nA: So the answer is (a) x.",
            "The answer must hold water. Of the above choices, an oven holds heat. So the answer is (d) oven.",
        ],
    )


def test_cqa_layout_puts_choices_in_prompt(tmp_path):
    make_cqa(tmp_path / "cqa")
    ds = load_cqa(tmp_path / "cqa")
    assert ds["answer"] == ["library", "river"]  # gold answer, not the teacher's
    assert ds[0]["prompt"] == ("Question: Where would you find many books?\nAnswer Choices:\n(a) garden\n(b) library\n"
                               "(c) river\n(d) oven\n(e) car\nAnswer:")  # fmt: skip
    assert ds[0]["completion"] == (" The answer must be a place with many books. Of the above choices, only library "
                                   "has many books.\nSo the answer is library.")  # fmt: skip
    assert_answer_lines(ds)
    assert load_cqa(tmp_path / "cqa", drop_incorrect=True)["answer"] == ["library"]
    conv = load_cot_dataset("cqa", path=tmp_path / "cqa", conversational=True, limit=1)
    assert conv[0]["prompt"][0]["content"].endswith("(e) car")


BBH_PROMPT = """FIXTURE HEADER LINE
-----
Decide whether a made-up statement holds.

Q: Is 3 larger than 2?
Options:
(A) Yes
(B) No
A: Let's think step by step.
3 - 2 = 1, which is positive.
So 3 is larger. So the answer is (A).

Q: not True or False is
A: Let's think step by step.
not True = False, and False or False = False. So the answer is False."""


def test_bbh_prompt_parsing(tmp_path):
    exemplars = parse_bbh_prompt(BBH_PROMPT)
    assert len(exemplars) == 2
    assert exemplars[0] == {
        "question": "Decide whether a made-up statement holds.\n\nIs 3 larger than 2?\nOptions:\n(A) Yes\n(B) No",
        "rationale": "Let's think step by step.\n3 - 2 = 1, which is positive.\nSo 3 is larger.",
        "answer": "(A)",
    }
    assert exemplars[1]["answer"] == "False"
    assert parse_bbh_prompt(BBH_PROMPT, include_description=False)[1]["question"] == "not True or False is"
    (tmp_path / "toy_task.txt").write_text(BBH_PROMPT, encoding="utf-8")
    ds = load_bbh(tmp_path)
    assert len(ds) == 2 and ds["answer"] == ["(A)", "False"]
    assert ds[0]["completion"].endswith("So 3 is larger.\nSo the answer is (A).")
    assert_answer_lines(ds)
    assert len(load_cot_dataset("bbh", path=tmp_path / "toy_task.txt", limit=1)) == 1
    with pytest.raises(ValueError, match="train"):
        load_bbh(tmp_path, split="test")


def test_generic_files_autodetect_and_mapping(tmp_path):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "P1", "completion": "c1", "answer": "a1"}])
    assert load_cot_dataset(str(pc))[0] == {"prompt": "P1", "completion": " c1\nSo the answer is a1.", "answer": "a1"}
    qra = tmp_path / "qra.parquet"
    Dataset.from_list([{"question": "q1", "rationale": "r1", "answer": "a1"}] * 3).to_parquet(str(qra))
    ds = load_cot_dataset(str(qra), limit=2, conversational=True)
    assert len(ds) == 2 and ds[0]["completion"][0]["content"] == "r1\nSo the answer is a1."
    csv = tmp_path / "mapped.csv"
    csv.write_text("text,why,label\nWhat is 1+1?,1+1 = 2.,2\n", encoding="utf-8")
    ds = load_cot_dataset(
        "columns", path=str(csv), question_column="text", rationale_column="why", answer_column="label"
    )
    assert ds[0]["completion"] == " 1+1 = 2.\nSo the answer is 2." and ds[0]["answer"] == "2"
    with pytest.raises(ValueError, match=r"\['wrong'\]"):
        load_cot_dataset("columns", path=str(csv), question_column="wrong", rationale_column="why",
                         answer_column="label")  # fmt: skip


def test_unknown_layout_hub_offline_and_bad_args(tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(ValueError) as err:
        load_cot_dataset(str(odd))
    message = str(err.value)
    assert "Unknown dataset layout" in message and "['foo', 'bar']" in message
    for accepted in ("'prompt' + 'completion'", "'question' + 'rationale' + 'answer'", "GSM8K", "'demo'", "'columns'"):
        assert accepted in message
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_cot_dataset("nobody-xyz/no-such-dataset-for-tests")
    with pytest.raises(ValueError, match="path"):
        load_cot_dataset("columns")
    with pytest.raises(TypeError, match="unknown_column"):
        load_cot_dataset("demo", unknown_column="x")
    empty = tmp_path / "empty.csv"
    empty.write_text("question,rationale,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_cot_dataset(str(empty))


# --------------------------------------------------------------------------------------------------------- demo

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
MORE = {"taller", "older", "faster", "heavier"}


def check_arithmetic(question, rationale, answer):
    known = {int(x) for x in re.findall(r"\d+", question)}
    equations = EQUATION.findall(rationale)
    assert len(equations) >= 2, rationale
    for a, op, b, c in equations:
        assert int(a) in known and int(b) in known, (question, rationale)  # operands come from the problem or earlier
        assert OPS[op](int(a), int(b)) == int(c), rationale  # exact (division included)
        known.add(int(c))
    assert answer == equations[-1][3]


def check_ordering(question, answer):
    rank = {}  # person -> set of people below
    for x, adj, y in re.findall(r"(\w+) is (\w+) than (\w+)\.", question):
        hi, lo = (x, y) if adj in MORE else (y, x)
        rank.setdefault(hi, set()).add(lo)
        rank.setdefault(lo, set())
    for _ in range(4):  # transitive closure
        for p in rank:
            rank[p] |= set().union(*(rank[q] for q in rank[p]))
    order = sorted(rank, key=lambda p: -len(rank[p]))
    if m := re.search(r"Who is the (\w+)est\?$", question):
        expected = order[0] if any(m.group(1) == adj[:-2] for adj in MORE) else order[-1]
    else:
        x, adj, y = re.search(r"Is (\w+) (\w+) than (\w+)\?$", question).groups()
        expected = "Yes" if (y in rank[x]) == (adj in MORE) else "No"
    assert answer == expected, question


def check_truth(question, answer):
    first, verdict = re.match(r"(\w+) (tells the truth|lies)\.", question).groups()
    truth = {first: verdict == "tells the truth"}
    for speaker, about, claim in re.findall(r"(\w+) says (\w+) (tells the truth|lies)\.", question):
        truth[speaker] = truth[about] == (claim == "tells the truth")
    last = re.search(r"Does (\w+) tell the truth\?$", question).group(1)
    assert answer == ("Yes" if truth[last] else "No"), question


def test_demo_answers_are_correct():
    ds = demo_cot_dataset(n=300, seed=3)
    assert len(ds) == 300 and len(set(ds["prompt"])) == 300
    assert_answer_lines(ds)
    kinds = {"arith": 0, "bool": 0, "order": 0, "truth": 0}
    for row in ds:
        question = row["prompt"][len("Question: ") : -len("\nAnswer:")]
        rationale, answer = row["completion"].rsplit("\n", 1)[0], row["answer"]
        if question.startswith("Evaluate the boolean expression: "):
            expr = question.split(": ", 1)[1]
            assert set(expr.split()) <= {"True", "False", "and", "or", "not", "(", ")"}
            assert answer == str(eval(expr, {"__builtins__": {}})), question  # noqa: S307
            kinds["bool"] += 1
        elif "tell the truth?" in question:
            check_truth(question, answer)
            kinds["truth"] += 1
        elif " than " in question and "?" in question and re.search(r"(Who is the \w+est|Is \w+ \w+ than \w+)\?$",
                                                                      question):  # fmt: skip
            check_ordering(question, answer)
            kinds["order"] += 1
        else:
            check_arithmetic(question, rationale, answer)
            kinds["arith"] += 1
    assert kinds["arith"] > 100 and min(kinds.values()) > 20, kinds


def test_demo_deterministic_and_disjoint():
    a, b = demo_cot_dataset(n=200, seed=0), demo_cot_dataset(n=200, seed=0)
    assert a.to_list() == b.to_list()
    assert demo_cot_dataset(n=200, seed=1)["prompt"] != a["prompt"]
    train = set(demo_cot_dataset("train", n=1000, seed=0)["prompt"])
    test = set(demo_cot_dataset("test", n=200, seed=0)["prompt"]) | set(
        demo_cot_dataset("test", n=200, seed=5)["prompt"]
    )
    assert len(train) == 1000 and len(test) > 200
    assert train.isdisjoint(test)
    assert len(load_cot_dataset("demo", split="test", limit=25)) == 25
    with pytest.raises(ValueError, match="splits"):
        demo_cot_dataset("validation", n=5)


# ------------------------------------------------------------------------------------------------ real data dir


def _data_root():
    try:
        return data_dir()
    except ValueError:  # $SLOWED_DATA_DIR set to a missing folder
        return None


@pytest.mark.skipif(_data_root() is None, reason="no data folder: $SLOWED_DATA_DIR unset")
def test_real_data_dir_row_counts():
    root = data_dir()
    sources = {"gsm8k": "gsm8k/train.jsonl", "svamp": "distill_step_by_step/svamp", "cqa": "distill_step_by_step/cqa",
               "bbh": "bbh/cot-prompts"}  # fmt: skip
    present = [s for s, sub in sources.items() if (root / sub).exists()]
    if not present:
        pytest.skip("data folder has none of the CoT sources")
    for source in present:
        ds = load_cot_dataset(source, limit=7)
        assert len(ds) == 7, source
        assert_answer_lines(ds)
    if "gsm8k" in present:
        assert len(load_cot_dataset("gsm8k", split="test", limit=3, conversational=True)) == 3
        from slowed_peft.eval import gsm8k_examples as eval_gsm8k

        assert [e.answer for e in eval_gsm8k("test", limit=40)] == load_gsm8k(split="test", limit=40)["answer"]
    if "svamp" in present:
        from slowed_peft.eval import svamp_examples as eval_svamp

        scored = eval_svamp("test")
        assert [e.answer for e in scored] == load_svamp(split="test", keep_unparsed=True)["answer"]
        assert len(scored) == 200
