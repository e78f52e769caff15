"""Hostile or careless inputs (issue 15): bad data files name file, line and column; edge values of masking are
rejected or computed in the limit; metric names cannot inject markdown into a model card."""

from __future__ import annotations

import json
import math
import os
import re


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from slowed_peft.data import load_bbh, load_cot_dataset, load_gsm8k, load_svamp  # noqa: E402
from slowed_peft.data.bbh import read_bbh_examples  # noqa: E402
from slowed_peft.data.gsm8k import read_gsm8k  # noqa: E402
from slowed_peft.data.readers import read_json_lines  # noqa: E402
from slowed_peft.data.sources import read_svamp  # noqa: E402
from slowed_peft.hub import _metrics_table  # noqa: E402
from slowed_peft.masking import EntropyMaskingCollator, SLowEDSFTConfig  # noqa: E402
from slowed_peft.masking.entropy import head_entropy, token_entropy  # noqa: E402
from slowed_peft.masking.selection import validate_masking_args  # noqa: E402


GSM = {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}
QRA = {"question": "What is 1 + 1?", "rationale": "1 + 1 = 2.", "answer": "2"}


def write_lines(path, *lines: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def raises_at(where: str):
    """``pytest.raises(ValueError)`` whose message contains ``where`` (a file, ``file:line`` or ``file:line:col``)."""
    return pytest.raises(ValueError, match=re.escape(where))


# ------------------------------------------------------------------------------------------- 6. bad data files


@pytest.mark.parametrize("load", [load_cot_dataset, load_gsm8k, read_json_lines, read_gsm8k], ids=lambda f: f.__name__)
def test_empty_file_names_the_file(tmp_path, load):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*empty"):
        load(str(path)) if load is not read_gsm8k else load(path=path)


@pytest.mark.parametrize("load", [load_cot_dataset, load_gsm8k, read_json_lines, read_gsm8k], ids=lambda f: f.__name__)
def test_malformed_line_names_file_line_and_column(tmp_path, load):
    path = write_lines(tmp_path / "train.jsonl", json.dumps(GSM), '{"question": "q", oops}', json.dumps(GSM))
    with raises_at(f"{path}:2:19"):  # the column of 'oops'
        load(str(path)) if load is not read_gsm8k else load(path=path)


@pytest.mark.parametrize("load", [load_cot_dataset, load_gsm8k, read_json_lines], ids=lambda f: f.__name__)
def test_non_utf8_bytes_name_file_line_and_column(tmp_path, load):
    path = write_lines(tmp_path / "train.jsonl", json.dumps(GSM), b'{"question": "caf\xe9", "answer": "#### 1"}')
    with raises_at(f"{path}:2:18"):
        load(str(path))


def test_non_utf8_csv_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train.csv", "question,rationale,answer", b"caf\xe9,r,1")
    with raises_at(f"{path}:2:4"):
        load_cot_dataset(str(path))


@pytest.mark.parametrize("answer", [None, "", "  "])
def test_null_or_empty_answer_names_file_and_row(tmp_path, answer):
    path = write_lines(tmp_path / "qra.jsonl", json.dumps(QRA), "", json.dumps({**QRA, "answer": answer}))
    with raises_at(f"{path}:3: row 2:"):  # the blank line 2 is not a row
        load_cot_dataset(str(path))


def test_empty_csv_answer_cell_is_not_trained_as_none(tmp_path):
    path = write_lines(tmp_path / "qra.csv", "question,rationale,answer", "q,r,1", "q,r,")
    with raises_at(f"{path}: row 2: Missing answer"):
        load_cot_dataset(str(path))


def test_null_gsm8k_solution_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "test.jsonl", json.dumps(GSM), json.dumps({**GSM, "answer": None}))
    with raises_at(f"{path}:2"):
        load_gsm8k(path)
    with raises_at(f"{path}:2"):
        read_gsm8k(path=path)


def make_svamp(folder, gold_lines, teacher_text):
    write_lines(folder / "svamp_train.json", *gold_lines)
    (folder / "llm").mkdir(parents=True, exist_ok=True)
    (folder / "llm" / "train_CoT_0.json").write_text(teacher_text)
    return folder


def test_svamp_bad_label_and_bad_teacher_file_are_located(tmp_path):
    good = json.dumps({"input": "Add 1 and 1.", "label": "( 1.0 + 1.0 )"})
    teacher = json.dumps(["1 + 1 = 2. The answer is 2."] * 2)
    folder = make_svamp(tmp_path / "a", [good, json.dumps({"input": "x", "label": None})], teacher)
    with raises_at(f"{folder / 'svamp_train.json'}:2: field 'label'"):
        load_svamp(folder)
    with raises_at(f"{folder / 'svamp_train.json'}:2"):
        read_svamp("train", path=folder)
    folder = make_svamp(tmp_path / "b", [good, good], '[\n  "ok",\n  oops\n]')
    with raises_at(f"{folder / 'llm' / 'train_CoT_0.json'}:3:3"):
        load_svamp(folder)


def test_bbh_bad_files_are_located(tmp_path):
    examples = tmp_path / "bbh" / "bbh" / "task.json"
    examples.parent.mkdir(parents=True)
    examples.write_text('{"examples": [\n{"input": "x", "target": }]}')
    with raises_at(f"{examples}:2:26"):
        read_bbh_examples("task", data_dir=tmp_path)
    prompt = tmp_path / "p.txt"
    prompt.write_bytes(b"canary\n-----\nTask.\n\nQ: caf\xe9?\nA: It is. So the answer is (A).")
    with raises_at(f"{prompt}:5:7"):
        load_bbh(prompt)


def test_good_files_still_load(tmp_path):
    """The checks cost nothing on the happy path: a BOM, blank lines and a final line without newline are fine."""
    path = tmp_path / "qra.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(QRA).encode() + b"\n\n" + json.dumps(QRA).encode())
    assert len(read_json_lines(path)) == 2
    assert load_cot_dataset(str(path))["answer"] == ["2", "2"]


# ------------------------------------------------------------------------------------------- 7. edge values


@pytest.mark.parametrize(
    "threshold, quantile, shown",
    [
        (math.inf, None, "threshold=inf"),
        (-math.inf, None, "threshold=-inf"),
        (math.nan, None, "threshold=nan"),
        (True, None, "threshold=True"),
        (None, 0.0, "quantile=0.0"),
        (None, 0, "quantile=0"),
        (None, 1.0, "quantile=1.0"),
        (None, math.nan, "quantile=nan"),
    ],
)
def test_masking_edge_values_rejected_everywhere(threshold, quantile, shown):
    with raises_at(shown):
        validate_masking_args(threshold, quantile, 1, "test")
    with raises_at(shown):
        EntropyMaskingCollator(pad_token_id=0, threshold=threshold, quantile=quantile)
    with raises_at(shown):
        SLowEDSFTConfig("out", use_cpu=True, bf16=False, entropy_threshold=threshold, entropy_quantile=quantile)


def test_masking_bounds_still_accepted():
    validate_masking_args(0.0, None, 0, "test")
    validate_masking_args(None, 1e-6, 1, "test")
    validate_masking_args(None, 0.999, 1, "test")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_infinite_logits_give_the_limit_entropy(dtype):
    inf = math.inf
    logits = torch.tensor(
        [[inf, 0.0, 3.0, -inf], [inf, inf, 0.0, 1.0], [0.0, 0.0, -inf, -inf], [-inf] * 4], dtype=dtype
    )
    before = logits.clone()
    ent = token_entropy(logits)
    torch.testing.assert_close(ent[:3], torch.tensor([0.0, math.log(2), math.log(2)]))
    assert torch.isnan(ent[3])  # all -inf: no distribution at all
    assert torch.equal(logits, before)  # the input is never modified
    assert torch.isfinite(token_entropy(logits[:3], chunk_size=1)).all()


def test_head_entropy_overflowing_logit_is_one_hot():
    head = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3e38], [1.0], [0.0]]))
    ent = head_entropy(torch.tensor([[10.0], [0.0]]), head)  # row 0: logit 3e39 -> +inf in float32
    torch.testing.assert_close(ent, torch.tensor([0.0, math.log(3)]))


# ------------------------------------------------------------------------------------------- 7. model card


def test_metric_names_cannot_inject_markdown():
    metrics = {"a | b\n# Title": 0.5, "<script>x</script>": "**bold** [l](u)", "plain": None}
    table = _metrics_table(metrics)
    lines = table.split("\n")
    assert len(lines) == 2 + len(metrics)  # header, separator, one row per metric
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 3 for line in lines)  # 2 columns on every line
    assert not any(line.lstrip().startswith("#") for line in lines)
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "\\*\\*bold\\*\\*" in table and "\\[l\\](u)" in table
    nested = _metrics_table({"x": {"be|fore": 1.0, "after\n## H": 2.0}})
    assert len(nested.split("\n")) == 3 and all(len(re.findall(r"(?<!\\)\|", ln)) == 4 for ln in nested.split("\n"))
