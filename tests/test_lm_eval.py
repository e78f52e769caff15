"""lm-evaluation-harness: the ``lm_eval`` CLI loads a SLOWED adapter with no code change (start-up hook), the task
YAMLs of ``slowed_peft/lm_eval_tasks`` run offline over ``$SLOWED_DATA_DIR`` and mirror lm-eval's own, and our scorers
agree with lm-eval's on the same generations (``slowed_peft.lm_eval_tasks.crosscheck``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_hook import save_tiny_adapter

from slowed_peft.eval.tasks import BBH_TASKS
from slowed_peft.lm_eval_tasks import BBH_GROUP, BBH_TASK_NAMES, TASK_NAMES, TASKS_DIR


pytest.importorskip("lm_eval", reason="the `eval` extra (lm_eval) is not installed")
LM = pytest.importorskip("lm_eval.api.model").LM
DATA = os.environ.get("SLOWED_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA or not os.path.isfile(os.path.join(DATA or "", "arc", "ARC-Challenge-Test.jsonl")),
    reason="needs $SLOWED_DATA_DIR with arc/ and gsm8k/",
)


def lm_eval_cli() -> list[str]:
    exe = Path(sys.executable).with_name("lm_eval")
    return [str(exe)] if exe.exists() else [shutil.which("lm_eval") or "lm_eval"]


def test_tasks_dir_is_printed_by_the_module():
    res = subprocess.run([sys.executable, "-m", "slowed_peft.lm_eval_tasks"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == TASKS_DIR
    assert {p.stem for p in Path(TASKS_DIR).glob("*.yaml")} == set(TASK_NAMES)
    assert {p.stem for p in Path(TASKS_DIR, "bbh").glob("*.yaml")} == {*BBH_TASKS, f"_{BBH_GROUP}"}
    assert BBH_TASK_NAMES == tuple(f"{BBH_GROUP}_{t}" for t in BBH_TASKS)


@needs_data
def test_local_datasets_have_the_hub_layout():
    sys.path.insert(0, TASKS_DIR)
    try:
        import utils  # the module lm-eval loads for `!function utils.*`
    finally:
        sys.path.remove(TASKS_DIR)
    arc = utils.arc_challenge_splits()
    assert set(arc) == {"train", "validation", "test"}
    row = arc["test"][0]
    assert row["answerKey"] in row["choices"]["label"] and isinstance(row["question"], str)
    gsm = utils.gsm8k_splits()
    assert "####" in gsm["test"][0]["answer"] and len(gsm["test"]) > 100


def _arc_line(key: str = "A") -> str:
    choices = [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]
    return json.dumps({"id": "q1", "question": {"stem": "Is it?", "choices": choices}, "answerKey": key})


def _write(root: Path, rel: str, data) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _gsm8k_folder(root: Path, train) -> Path:
    _write(root, "gsm8k/test.jsonl", json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    return _write(root, "gsm8k/train.jsonl", train)


def _arc_folder(root: Path, train) -> Path:
    for name in ("Dev", "Test"):
        _write(root, f"arc/ARC-Challenge-{name}.jsonl", _arc_line() + "\n")
    return _write(root, "arc/ARC-Challenge-Train.jsonl", train)


def _bbh_folder(root: Path, examples: str, prompt) -> tuple[Path, Path]:
    good = "canary\n-----\nTask.\n\nQ: x?\nA: Let's think step by step.\nSo the answer is (A)."
    return (
        _write(root, "bbh/bbh/task.json", examples),
        _write(root, "bbh/cot-prompts/task.txt", good if prompt is None else prompt),
    )


GOOD_GSM8K_LINE = json.dumps({"question": "2+2?", "answer": "2+2=4\n#### 4"})
GOOD_BBH = json.dumps({"examples": [{"input": "x", "target": "(A)"}]})


@pytest.mark.parametrize(
    ("builder", "corrupt", "where"),
    [
        # a truncated JSON line (a broken download) in the 2nd line of GSM8K's train file
        ("gsm8k", lambda r: _gsm8k_folder(r, GOOD_GSM8K_LINE + '\n{"question": "3+3?", "ans'), ":2:"),
        ("gsm8k", lambda r: _gsm8k_folder(r, ""), ": the file is empty"),
        ("gsm8k", lambda r: _gsm8k_folder(r, json.dumps({"question": "q"}) + "\n"), ": missing field(s) ['answer']"),
        ("gsm8k", lambda r: _gsm8k_folder(r, GOOD_GSM8K_LINE.encode() + b'\n{"q": "caf\xe9"}'), ":2:11: not UTF-8"),
        ("gsm8k", lambda r: _gsm8k_folder(r, GOOD_GSM8K_LINE + '\n{"question": "q"}\n'), ":2: field 'answer'"),
        ("arc", lambda r: _arc_folder(r, _arc_line() + "\n[1, 2]\n"), ":2:1: expected a JSON object per line"),
        ("arc", lambda r: _arc_folder(r, _arc_line() + "\n" + _arc_line("E") + "\n"), ":2: answerKey 'E'"),
        ("arc", lambda r: _arc_folder(r, '{"id": "q1"}\n'), ":1: missing field 'question'"),
        ("bbh", lambda r: _bbh_folder(r, '{"examples": [\n{"input": "x", "target": }]}', None)[0], ":2:26: not valid"),
        ("bbh", lambda r: _bbh_folder(r, '{"examples": [{"input": "x"}]}', None)[0], ": examples[0]: missing field"),
        ("bbh", lambda r: _bbh_folder(r, GOOD_BBH, b"canary\n-----\nTask.\n\nQ: caf\xe9?")[1], ":5:7: not UTF-8"),
        ("bbh", lambda r: _bbh_folder(r, GOOD_BBH, "canary\n-----\nTask.\n\nQ: x?\nA: (A)")[1], ": Malformed BBH"),
        ("bbh", lambda r: _bbh_folder(r, GOOD_BBH, "canary\n-----\nTask only.")[1], ": no 'Q: ...' exemplars"),
    ],
)
def test_a_corrupt_data_file_is_named_by_the_lm_eval_loaders(tmp_path, monkeypatch, builder, corrupt, where):
    """Issue 25, point 4: the lm-eval builders read through ``slowed_peft.data.readers``, so a bad file gets the
    readers' error naming the file (and line and column), as lm-eval calls them (``$SLOWED_DATA_DIR``, no
    arguments but the YAML's ``dataset_kwargs``)."""
    bad = corrupt(tmp_path)
    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path))
    utils = utils_module()
    call = {
        "gsm8k": utils.gsm8k_splits,
        "arc": utils.arc_challenge_splits,
        "bbh": lambda: utils.bbh_splits(bbh_task="task"),
    }[builder]
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(f"{bad}{where}"), str(err.value)


def test_the_lm_eval_loaders_read_a_good_folder_and_name_a_missing_file(tmp_path):
    _gsm8k_folder(tmp_path, GOOD_GSM8K_LINE + "\n")
    _arc_folder(tmp_path, _arc_line("B") + "\n")
    _bbh_folder(tmp_path, GOOD_BBH, None)
    utils = utils_module()
    gsm = utils.gsm8k_splits(data_dir=tmp_path)
    assert gsm["train"][0] == {"question": "2+2?", "answer": "2+2=4\n#### 4"} and len(gsm["test"]) == 1
    arc = utils.arc_challenge_splits(data_dir=tmp_path)
    assert arc["train"][0] == {
        "id": "q1",
        "question": "Is it?",
        "choices": {"text": ["yes", "no"], "label": ["A", "B"]},
        "answerKey": "B",
    }
    bbh = utils.bbh_splits("task", data_dir=tmp_path)
    assert bbh["test"][0] == {"input": "x", "target": "(A)", "description": "Task.\n\n"}
    assert bbh["fewshot"][0] == {"input": "x?", "target": "So the answer is (A).", "description": "Task.\n\n"}
    (tmp_path / "arc" / "ARC-Challenge-Dev.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="ARC-Challenge-Dev.jsonl"):
        utils.arc_challenge_splits(data_dir=tmp_path)


def test_the_lm_eval_loaders_are_not_the_data_packages_loaders():
    """One home per loader: the lm-eval builders do not reuse (shadow) a public name of ``slowed_peft.data``."""
    import slowed_peft.data

    assert not set(utils_module().__all__) & set(slowed_peft.data.__all__)
    for path in [*Path(TASKS_DIR).glob("*.yaml"), Path(TASKS_DIR) / "_slowed_bbh_cot_fewshot_template_yaml"]:
        builder = read_yaml(path).get("custom_dataset")
        if builder is not None:
            assert builder.removeprefix("!function utils.") in utils_module().__all__, path


@needs_data
def test_lm_eval_cli_loads_a_slowed_adapter_without_code_change(tmp_path):
    base, adapter = save_tiny_adapter(tmp_path)
    out = tmp_path / "results"
    cmd = [
        *lm_eval_cli(),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={base},peft={adapter}",
        "--include_path",
        TASKS_DIR,
        "--tasks",
        "slowed_arc_challenge",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k != "SLOWED_PEFT_NO_HOOK"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())
    assert 0.0 <= results["results"]["slowed_arc_challenge"]["acc,none"] <= 1.0
    assert results["config"]["model_args"]["peft"] == adapter


# ----------------------------------------------------------------------- the YAMLs mirror lm-eval's own tasks

LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
# Keys that differ on purpose: where the data comes from (the Hub vs $SLOWED_DATA_DIR) and the task's name.
SOURCE_KEYS = {"task", "tag", "include", "dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset"}


def read_yaml(path: Path) -> dict:
    """A task YAML with its ``include`` merged in and ``!function`` tags kept as their names."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    cfg = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (SafeLoader subclass)
    if "include" in cfg:
        cfg = {**read_yaml(path.parent / cfg["include"]), **cfg}
    return cfg


def utils_module():
    spec = importlib.util.spec_from_file_location("slowed_lm_eval_utils", Path(TASKS_DIR) / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (LM_EVAL_TASKS / "bbh" / "cot_fewshot").is_dir(), reason="lm-eval's BBH YAMLs not found")
@needs_data
@pytest.mark.parametrize("task", BBH_TASKS)
def test_bbh_task_is_lm_evals_bbh_cot_fewshot(task):
    """Same settings as lm-eval's ``bbh_cot_fewshot_<task>``; the description and the 3 exemplars it spells out
    in its YAML are exactly what the local ``cot-prompts/<task>.txt`` parses to."""
    theirs = read_yaml(LM_EVAL_TASKS / "bbh" / "cot_fewshot" / f"{task}.yaml")
    ours = read_yaml(Path(TASKS_DIR) / "bbh" / f"{task}.yaml")
    assert ours["task"] == f"slowed_{theirs['task']}" and ours["dataset_kwargs"] == {"bbh_task": task}
    description, exemplars = utils_module().parse_bbh_cot_prompt(
        Path(DATA, "bbh", "cot-prompts", f"{task}.txt").read_text()
    )
    assert description == theirs["description"]
    assert exemplars == theirs["fewshot_config"]["samples"]
    # Ours reads both from the data (a `description` column, a `fewshot` split taken first-n); all else is equal.
    assert ours.pop("description") == "{{description}}" and ours.pop("fewshot_split") == "fewshot"
    theirs.pop("description")
    assert theirs.pop("fewshot_config") == {"sampler": "first_n", "samples": exemplars}
    assert ours.pop("fewshot_config") == {"sampler": "first_n"}
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in SOURCE_KEYS}  # noqa: E731
    assert strip(ours) == strip(theirs)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("slowed_gsm8k.yaml", "gsm8k/gsm8k.yaml"),
        ("slowed_arc_challenge.yaml", "arc/arc_challenge.yaml"),
        ("slowed_arc_challenge_chat.yaml", "arc/arc_challenge_chat.yaml"),
        ("bbh/_slowed_bbh_cot_fewshot.yaml", "bbh/cot_fewshot/_bbh_cot_fewshot.yaml"),
    ],
)
def test_task_is_lm_evals_task_of_the_same_name(ours, theirs):
    if not (LM_EVAL_TASKS / theirs).is_file():
        pytest.skip(f"lm-eval's {theirs} not found")
    mine, ref = read_yaml(Path(TASKS_DIR) / ours), read_yaml(LM_EVAL_TASKS / theirs)
    if "group" in ref:
        assert mine.pop("group") == f"slowed_{ref.pop('group')}"
        assert mine.pop("task") == [f"slowed_{t}" for t in ref.pop("task")]
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in SOURCE_KEYS}  # noqa: E731
    assert strip(mine) == strip(ref)


@pytest.fixture(scope="module")
def task_manager():
    """An lm-eval task index over this folder alone (lm-eval's own thousands of YAMLs take a minute to index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS_DIR, include_defaults=False)


@pytest.fixture(scope="module")
def scored_tasks(task_manager):
    """lm-eval's task objects for the three generative tasks (their filters and metric are what we compare with)."""
    from lm_eval.tasks import get_task_dict

    names = ["slowed_gsm8k", "slowed_arc_challenge_chat", f"{BBH_GROUP}_boolean_expressions"]
    return get_task_dict(names, task_manager)


@needs_data
def test_bbh_prompt_is_our_bbh_prompt(scored_tasks):
    """lm-eval renders the BBH prompt our own evaluator uses (``bbh_examples``), plus lm-eval's newline after "step."."""
    from slowed_peft.eval.tasks import bbh_examples

    task = scored_tasks[f"{BBH_GROUP}_boolean_expressions"]
    docs = list(task.test_docs())[:2]
    ours = bbh_examples("boolean_expressions", DATA, limit=2)
    assert [task.fewshot_context(doc, 3) for doc in docs] == [f"{e.prompt}\n" for e in ours]
    assert [task.doc_to_target(doc) for doc in docs] == [e.answer for e in ours]


# ------------------------------------------------------------- our scorers against lm-eval's, same generations


class ScriptedLM(LM):
    """An lm-eval model that answers each request with ``respond(task_name, doc_id, doc)``, cut at the request's
    stop strings as ``HFLM`` cuts its generations."""

    def __init__(self, respond) -> None:
        super().__init__()
        self.respond = respond

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            text = self.respond(req.task_name, req.doc_id, req.doc)
            for stop in req.args[1].get("until", []):
                text = text.split(stop)[0]
            out.append(text)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def gsm8k_response(i: int, doc: dict) -> str:
    gold = int(float(doc["answer"].rsplit("####", 1)[1].strip().replace(",", "")))
    return [
        doc["answer"],  # the few-shot format: worked solution, "#### N"
        f"She pays {gold} dollars in all.\nQuestion: And then?",  # a run-on question is cut (until)
        f"So the answer is {gold:,}.",
        f"{gold} + 6 = {gold + 6}\n#### {gold + 6}",  # wrong
        "I cannot tell from the question.",  # no number
        f"First, {gold - 1} is too small. The answer is {gold}.",
    ][i % 6]


def arc_response(i: int, doc: dict) -> str:
    key = str(doc["answerKey"])
    gold = "ABCD"[int(key) - 1] if key in "1234" else key
    wrong = "B" if gold == "A" else "A"
    return [f" {gold}", f" ({gold})", f" {wrong}", f" {gold}.", " none of them", f" ({wrong})"][i % 6]


def bbh_response(i: int, doc: dict) -> str:
    target = doc["target"]
    other = {"True": "False", "False": "True"}.get(target, "(A)" if target != "(A)" else "(B)")
    return [
        f"Let's evaluate A: A = {target}. So the answer is {target}.",
        f"So the answer is {other}.",
        f"Z = {target}. So the answer is {target}.\n\nQ: not True is",  # cut at the blank line (until)
        "I do not know.",
        f"A = {other}. So the answer is {target}.\nThat is all.",
        f"So the answer is {other}. Hmm",
    ][i % 6]


def scripted(task: str, i: int, doc: dict) -> str:
    if task == "slowed_gsm8k":
        return gsm8k_response(i, doc)
    if task == "slowed_arc_challenge_chat":
        return arc_response(i, doc)
    return bbh_response(i, doc)


@needs_data
def test_our_scorers_agree_with_lm_eval_on_the_same_generations(task_manager):
    """Issue 18: on the same responses our scorer and lm-eval's agree within one example per task (here: all)."""
    from slowed_peft.lm_eval_tasks.crosscheck import cross_check

    tasks = ["slowed_gsm8k", "slowed_arc_challenge_chat", f"{BBH_GROUP}_boolean_expressions", f"{BBH_GROUP}_snarks"]
    results, agreements = cross_check(ScriptedLM(scripted), tasks, limit=12, task_manager=task_manager)
    for task in tasks:
        ref = agreements[task][0]
        assert ref.n == 12 and ref.disagree <= 1, ref.to_dict()
        assert 0 < ref.lm_eval_correct < 12  # right and wrong answers both occur
        assert results["results"][task][f"exact_match,{ref.filter}"] == pytest.approx(ref.lm_eval_correct / 12)
    assert [a.filter for a in agreements["slowed_gsm8k"]] == ["flexible-extract", "strict-match"]


def lm_eval_verdict(task, name: str, doc: dict, response: str) -> bool:
    """lm-eval's ``exact_match`` for one response: the task's filters, then its metric (as its evaluator runs them)."""
    from lm_eval.api.instance import Instance

    from slowed_peft.lm_eval_tasks.crosscheck import reference_filter

    inst = Instance("generate_until", doc, ("", {}), 0, (name, 0, 1))
    inst.resps = [response]
    task._instances = [inst]
    task.apply_filters()
    return bool(task.process_results(doc, [inst.filtered_resps[reference_filter(name)]])["exact_match"])


@needs_data
@pytest.mark.parametrize(
    ("task", "doc", "response"),
    [
        # lm-eval's get-answer regex is case-sensitive and needs a lower-case "the answer is" and a final character.
        ("bbh", {"target": "False"}, "So the answer is false."),
        ("bbh", {"target": "False"}, "The answer is False."),
        ("bbh", {"target": "False"}, "So the answer is False"),
        ("bbh", {"target": "False"}, "So the answer is False. We are done."),  # greedy: "False. We are done"
        # flexible-extract compares strings: "18.00" is not "18".
        ("gsm8k", {"answer": "6 * 3 = 18\n#### 18"}, "She pays $18.00."),
        # remove_whitespace keeps what follows the letter (the "." stop string cuts most of it).
        ("arc", {"answerKey": "C", "choices": {"text": ["a", "b", "c", "d"]}}, " C: c"),
        # ... and what precedes it: ": C" loses only the ":" to ignore_punctuation, " c" is not "c" (SmolLM2 says so).
        ("arc", {"answerKey": "C", "choices": {"text": ["a", "b", "c", "d"]}}, ": C"),
    ],
)
def test_where_our_scorers_are_more_lenient_than_lm_eval(scored_tasks, task, doc, response):
    """The known differences, by design: answers lm-eval's filters reject and our extractors read correctly."""
    from slowed_peft.lm_eval_tasks.crosscheck import our_verdict

    name = {"bbh": f"{BBH_GROUP}_boolean_expressions", "gsm8k": "slowed_gsm8k", "arc": "slowed_arc_challenge_chat"}
    assert our_verdict(name[task], doc, response) is True
    assert lm_eval_verdict(scored_tasks[name[task]], name[task], doc, response) is False
