"""Smoke runs of the recipe scripts on a tiny model (TrlParser + YAML + CLI overrides, every arm, save, evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from testing_utils import build_char_tokenizer, build_tiny

import slowed_peft
from slowed_peft.scripts.arguments import SLowEDArguments, peft_config_for_arm
from slowed_peft.scripts.sft import make_parser
from slowed_peft.scripts.sft import run as sft_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "tiny"
    build_tiny("llama", path)
    build_char_tokenizer(path)
    return str(path)


def tiny_recipe(tmp_path, tiny_dir) -> str:
    cfg = yaml.safe_load((ROOT / "recipes" / "configs" / "smollm2-135m-demo.yaml").read_text())
    cfg.update(model_name_or_path=tiny_dir, dataset_limit=8, max_steps=2, logging_steps=1, max_length=96,
               output_dir=str(tmp_path / "out"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_parse(config):
    args = ["--config", str(config)]
    if "demo" not in config.stem:
        args += ["--bf16", "false", "--use_cpu", "true"]  # GPU recipes: parse them here on CPU
    script_args, training_args, model_args, slowed_args, _ = make_parser().parse_args_and_config(
        args=args, return_remaining_strings=True
    )
    assert model_args.model_name_or_path and script_args.dataset_name
    assert slowed_args.arm == "slowed" and training_args.masking_enabled


@pytest.mark.parametrize("arm, slow, masks", [("sft", False, False), ("slow", True, False), ("lem", False, True),
                                              ("slowed", True, True)])
def test_arms_set_adapter_and_masking(arm, slow, masks):
    cfg = peft_config_for_arm(SLowEDArguments(arm=arm, slow_factor=0.2, max_drift=0.03))
    assert (cfg.slow_factor, cfg.max_drift) == ((0.2, 0.03) if slow else (1.0, None))
    from slowed_peft import SLowEDSFTConfig
    from slowed_peft.scripts.arguments import apply_arm_to_training_args

    targs = apply_arm_to_training_args(SLowEDArguments(arm=arm), SLowEDSFTConfig("x", use_cpu=True, bf16=False,
                                                                                 entropy_quantile=0.3))
    assert targs.masking_enabled is masks


@pytest.mark.parametrize("arm", ["sft", "slowed"])
def test_recipe_smoke_run_saves_a_loadable_adapter(tmp_path, tiny_dir, arm):
    out = tmp_path / f"out-{arm}"
    trainer = sft_run(["--config", tiny_recipe(tmp_path, tiny_dir), "--arm", arm, "--output_dir", str(out)])
    assert (out / "adapter_model.safetensors").exists() and (out / "training_curves.png").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SLOWED" and cfg["max_drift"] == (0.05 if arm == "slowed" else None)
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    assert any("slowed/drift_max" in h for h in history)
    assert any("lem/masked_fraction" in h for h in history) is (arm == "slowed")
    assert slowed_peft.weight_drift(trainer.model).max <= (0.05 * (1 + 1e-6) if arm == "slowed" else 10)


def test_recipe_and_evaluate_scripts_run_as_files(tmp_path, tiny_dir):
    out = tmp_path / "adapter"
    env_cmd = [sys.executable, str(ROOT / "recipes" / "slowed_sft.py"), "--config", tiny_recipe(tmp_path, tiny_dir),
               "--output_dir", str(out), "--max_steps", "1"]
    res = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = tmp_path / "eval.json"
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--model_name_or_path", tiny_dir,
                          "--adapter", str(out), "--limit", "3", "--max_new_tokens", "8", "--safety_max_new_tokens",
                          "8", "--output", str(report)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(report.read_text())
    assert set(data) == {"model", "adapter", "safety", "reasoning"}
    assert set(data["safety"]) == {"probes", "benign"} and data["safety"]["probes"]["n"] == 3
    assert data["reasoning"]["demo"]["n"] == 3 and data["safety"]["probes"]["harmful_kl"] >= 0


def test_recipe_push_to_hub_uses_our_model_card(tmp_path, tiny_dir, monkeypatch):
    from unittest.mock import MagicMock

    import slowed_peft.hub as hub

    api = MagicMock()
    monkeypatch.setattr(hub, "HfApi", MagicMock(return_value=api))
    with pytest.raises(ValueError, match="base_model_id=.*not a valid Hub id"):  # a local base has no Hub id
        sft_run(["--config", tiny_recipe(tmp_path, tiny_dir), "--max_steps", "1", "--push_to_hub", "true",
                 "--hub_model_id", "me/tiny-slowed", "--output_dir", str(tmp_path / "a")])
    from slowed_peft.models import hub_id_for

    assert hub_id_for("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_for("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
    assert not api.upload_folder.called
    import slowed_peft.models as models

    monkeypatch.setattr(models, "hub_id_for", lambda name: "org/tiny-base")
    sft_run(["--config", tiny_recipe(tmp_path, tiny_dir), "--max_steps", "1", "--push_to_hub", "true",
             "--hub_model_id", "me/tiny-slowed", "--output_dir", str(tmp_path / "b")])
    assert api.upload_folder.call_count == 1 and api.upload_folder.call_args.kwargs["repo_id"] == "me/tiny-slowed"
