"""Hostile inputs get a clear ``ValueError`` naming the file / row / column — safetensors headers
(a list, deep nesting, shapes x dtype against offsets), ``add_weighted_adapter``, answers that are lists / dicts /
bools, empty prompts and NUL bytes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import save_file

from slowed_peft import SLowEDConfig
from slowed_peft.data import load_cot_dataset, to_prompt_completion
from slowed_peft.utils.checks import check_safetensors_file

from testing_utils import build_tiny


# ------------------------------------------------------------------------------------------ safetensors header


def raw_safetensors(path, header, data: bytes = b"") -> str:
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(
    "header, data, match",
    [
        ([1, 2, 3], b"", "JSON list, not an object"),
        ("[" * 100_000 + "]" * 100_000, b"", "nested too deeply"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, b"", "nested too deeply"),
        ({"a": [0, 16]}, bytes(16), "tensor 'a'.*not an object"),
        ({"a": {"dtype": "F32", "shape": [2, 2]}}, bytes(16), "tensor 'a'.*data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, bytes(8), r"2x2 F32 tensor needs 16 bytes"),
        ({"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16), r"needs 8 bytes.*has 16"),
        ({"a": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 16]}}, bytes(16), "shape"),
        ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8), "shape"),
        ({"a": {"dtype": "Q3", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16), "dtype 'Q3'"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
            "overlap|gap",
        ),
        (GOOD, bytes(24), "8 bytes after the last tensor"),
        ({**GOOD, "__metadata__": ["x"]}, bytes(16), "__metadata__"),
    ],
)
def test_bad_safetensors_headers_name_the_file(tmp_path, header, data, match):
    path = raw_safetensors(tmp_path / "adapter_model.safetensors", header, data)
    with pytest.raises(ValueError, match=match) as err:
        check_safetensors_file(path)
    assert path in str(err.value)


def test_a_real_safetensors_file_passes(tmp_path):
    save_file(
        {"a": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.uint8), "c": torch.zeros(0), "d": torch.zeros(())},
        tmp_path / "x.safetensors",
        metadata={"format": "pt"},
    )
    check_safetensors_file(str(tmp_path / "x.safetensors"))
    check_safetensors_file(raw_safetensors(tmp_path / "y.safetensors", GOOD, bytes(16)))


def test_loading_an_adapter_with_a_list_header_names_the_file(tmp_path):
    pm = get_peft_model(build_tiny("llama", tmp_path / "base"), SLowEDConfig(target_modules="all-linear"))
    pm.save_pretrained(tmp_path / "a")
    weights = raw_safetensors(tmp_path / "a" / "adapter_model.safetensors", [1, 2])
    with pytest.raises(ValueError, match="JSON list") as err:
        PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")
    assert weights in str(err.value)


# ------------------------------------------------------------------------------------------ add_weighted_adapter


def test_add_weighted_adapter_is_refused_clearly(tmp_path):
    pm = get_peft_model(build_tiny("llama", tmp_path / "base"), SLowEDConfig(target_modules="all-linear"))
    pm.add_adapter("other", SLowEDConfig(target_modules="all-linear"))
    with pytest.raises(ValueError, match="add_weighted_adapter.*SLowED.*trust region"):
        pm.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")
    assert "mix" not in pm.peft_config


# ------------------------------------------------------------------------------------------ answers and prompts


def jsonl(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD_ROW = {"prompt": "Question: 1+1?\nAnswer:", "completion": " 1+1=2.", "answer": "2"}


@pytest.mark.parametrize("answer", [[1, 2], {"value": 4}, True, False, float("nan")], ids=repr)
def test_answers_that_are_not_strings_or_numbers_are_refused(tmp_path, answer):
    rows = [GOOD_ROW, {**GOOD_ROW, "answer": answer}, GOOD_ROW]
    if isinstance(answer, float):
        rows = [{**r, "answer": 2.0} for r in rows[:1]] + [{**GOOD_ROW, "answer": answer}]
    path = jsonl(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        load_cot_dataset(path)
    message = str(err.value)
    assert path in message and "row 2" in message and "'answer'" in message, message


def test_question_rationale_answer_rows_refuse_a_list_answer(tmp_path):
    rows = [
        {"question": "1+1?", "rationale": "1+1=2.", "answer": "2"},
        {"question": "q", "rationale": "r", "answer": [4]},
    ]
    path = jsonl(tmp_path, rows)
    with pytest.raises(ValueError, match=r"row 2: .*list.*\(column 'answer'\)") as err:
        load_cot_dataset(path)
    assert f"{path}:2" in str(err.value)
    with pytest.raises(ValueError, match="list"):
        to_prompt_completion("q", "r", ["4"])


@pytest.mark.parametrize(
    "row, column",
    [
        ({**GOOD_ROW, "prompt": ""}, "prompt"),
        ({**GOOD_ROW, "prompt": "  \n "}, "prompt"),
        ({**GOOD_ROW, "prompt": "Question: a\x00b\nAnswer:"}, "prompt"),
        ({**GOOD_ROW, "completion": " x\x00."}, "completion"),
        ({**GOOD_ROW, "answer": "2\x00"}, "answer"),
        ({**GOOD_ROW, "prompt": [{"role": "user", "content": ["not", "text"]}]}, "prompt"),
    ],
)
def test_empty_prompts_and_nul_bytes_are_refused(tmp_path, row, column):
    path = jsonl(tmp_path, [GOOD_ROW, row])
    with pytest.raises(ValueError) as err:
        load_cot_dataset(path)
    message = str(err.value)
    assert path in message and "row 2" in message and f"'{column}'" in message, message


@pytest.mark.parametrize(
    "question, rationale, match",
    [
        ("", "r", "empty"),
        (" ", "r", "empty"),
        ("a\x00", "r", "NUL"),
        ("q", "r\x00", "NUL"),
        (["q"], "r", "list"),
        ("q", {"r": 1}, "dict"),
    ],
)
def test_to_prompt_completion_refuses_bad_text(question, rationale, match):
    with pytest.raises(ValueError, match=match):
        to_prompt_completion(question, rationale, "4")


def test_plain_rows_still_load(tmp_path):
    rows = [GOOD_ROW, {**GOOD_ROW, "answer": 7}, {**GOOD_ROW, "answer": 2.5}]
    ds = load_cot_dataset(jsonl(tmp_path, rows))
    assert list(ds["answer"]) == ["2", "7", "2.5"]
