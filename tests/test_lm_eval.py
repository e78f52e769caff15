"""lm-evaluation-harness: the ``lm_eval`` CLI loads a SLOWED adapter with no code change (start-up hook), and the
task YAMLs of ``slowed_peft/lm_eval_tasks`` run offline over ``$SLOWED_DATA_DIR``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_hook import save_tiny_adapter

from slowed_peft.lm_eval_tasks import TASK_NAMES, TASKS_DIR


pytest.importorskip("lm_eval", reason="the `eval` extra (lm_eval) is not installed")
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


@needs_data
def test_local_datasets_have_the_hub_layout():
    sys.path.insert(0, TASKS_DIR)
    try:
        import utils  # the module lm-eval loads for `!function utils.*`
    finally:
        sys.path.remove(TASKS_DIR)
    arc = utils.load_arc_challenge()
    assert set(arc) == {"train", "validation", "test"}
    row = arc["test"][0]
    assert row["answerKey"] in row["choices"]["label"] and isinstance(row["question"], str)
    gsm = utils.load_gsm8k()
    assert "####" in gsm["test"][0]["answer"] and len(gsm["test"]) > 100


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
