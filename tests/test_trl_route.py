"""TRL users: (a) ``slowed-sft --config`` takes a YAML written for ``trl sft`` unchanged (every key of TRL's
``ScriptArguments`` / ``SFTConfig`` / ``ModelConfig``), with SLowED's own keys on top; (b) TRL's own ``SFTTrainer``
trains a SLowED adapter when handed ``peft_config=SLowEDConfig(...)``, and the result loads in a fresh interpreter
with plain peft (start-up hook)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import yaml
from datasets import Dataset
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

from slowed_peft import SLowEDConfig

from testing_utils import build_char_tokenizer


TRL_SFT_DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig)  # trl/scripts/sft.py, less the dataset mixture


def _init_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def test_recipe_parser_accepts_every_trl_sft_key():
    from slowed_peft.scripts.sft import make_parser

    dests = {action.dest for action in make_parser()._actions}
    for cls in TRL_SFT_DATACLASSES:
        assert not sorted(_init_fields(cls) - dests), f"{cls.__name__} keys that slowed-sft refuses"


def test_a_trl_sft_yaml_runs_unchanged_through_slowed_sft(tmp_path, tiny_dir):
    """The keys of TRL's example SFT configs (no SLowED key at all): the recipe trains its default arm, the safety
    anchor (8 directions: the tiny model is 32 wide, below the default 64)."""
    from slowed_peft.scripts.sft import run as sft_run

    trl_yaml = {
        "model_name_or_path": tiny_dir,
        "dtype": "float32",
        "dataset_name": "demo",  # a Hub id in TRL's examples; the built-in CoT set here (offline)
        "dataset_train_split": "train",
        "learning_rate": 1.0e-4,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False,
        "max_length": 96,
        "logging_steps": 1,
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "trl_sft.yaml"
    path.write_text(yaml.safe_dump(trl_yaml))
    sft_run(["--config", str(path), "--dataset_limit", "8", "--anchor_rank", "8"])
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SLOWED" and cfg["anchor_rank"] == 8 and cfg["slow_factor"] == 1.0


def test_trl_sft_trainer_with_slowed_config_and_fresh_load(tmp_path, tiny_dir):
    tok = build_char_tokenizer()
    rows = [{"prompt": f"{a}+{a}=", "completion": f"{2 * a}"} for a in range(8)]
    args = SFTConfig(
        output_dir=str(tmp_path / "trl-out"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
    )
    trainer = SFTTrainer(
        model=tiny_dir,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=SLowEDConfig(target_modules="all-linear", slow_factor=0.5, max_drift=0.05, task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "trl-out"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "SLOWED"
    code = f"""
        from peft import AutoPeftModelForCausalLM
        m = AutoPeftModelForCausalLM.from_pretrained({str(out)!r})
        print(m.peft_config["default"].peft_type.value, m.peft_config["default"].max_drift)
        """
    env = {k: v for k, v in os.environ.items() if k != "SLOWED_PEFT_NO_HOOK"}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-2:] == ["SLOWED", "0.05"]
