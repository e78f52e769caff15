"""Smoke runs of the recipe scripts on a tiny model (parser + shipped YAML + CLI overrides, every arm, save, evaluate),
the shipped configs, and the console scripts' exit codes."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import slowed_peft
from slowed_peft.scripts.arguments import ARMS, SLowEDArguments, peft_config_for_arm
from slowed_peft.scripts.configs import resolve_config, shipped_configs
from slowed_peft.scripts.sft import make_parser
from slowed_peft.scripts.sft import run as sft_run


try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = PYPROJECT["project"]["scripts"]
SFT_CONFIGS = ["bloom-1b1", "llama-3.2-1b", "qwen2.5-1.5b", "smollm2-135m-demo"]


def tiny_recipe(tmp_path, tiny_dir) -> str:
    cfg = yaml.safe_load(Path(resolve_config("smollm2-135m-demo")).read_text())
    cfg.update(
        model_name_or_path=tiny_dir,
        dataset_limit=8,
        max_steps=2,
        logging_steps=1,
        max_length=96,
        output_dir=str(tmp_path / "out"),
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_configs_ship_with_the_package_and_resolve_by_name(tmp_path, monkeypatch):
    studies = ["demo", "replicate", "frontier", "frontier_anchor", "frontier_anchor_gemma"]
    assert shipped_configs() == sorted([*SFT_CONFIGS, *studies])
    folder = Path(slowed_peft.__file__).parent / "configs"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == shipped_configs()
    assert not (ROOT / "recipes" / "configs").exists()  # one copy of each config
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["slowed_peft"]
    packaged = {p.name for g in globs for p in folder.parent.glob(g) if p.parent == folder}
    assert packaged == {f"{n}.yaml" for n in shipped_configs()}
    assert resolve_config("replicate") == resolve_config("replicate.yaml") == str(folder / "replicate.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "replicate.yaml").write_text("max_steps: 3\n")
    assert resolve_config("replicate.yaml") == "replicate.yaml"  # an existing file wins over the shipped name
    with pytest.raises(
        FileNotFoundError, match="shipped: bloom-1b1, demo, frontier, frontier_anchor, frontier_anchor_gemma, llama"
    ):
        resolve_config("nope")


@pytest.mark.parametrize("name", SFT_CONFIGS)
def test_shipped_configs_parse_every_key(name):
    args = ["--config", name]
    if "demo" not in name:
        args += ["--bf16", "false", "--use_cpu", "true"]  # GPU recipes: parse them here on CPU
    *parsed, remaining = make_parser().parse_args_and_config(args=args, return_remaining_strings=True)
    assert remaining == []  # every key of the YAML is a field of the recipe's dataclasses
    values = {k: v for obj in parsed for k, v in vars(obj).items()}
    cfg = yaml.safe_load(Path(resolve_config(name)).read_text())
    cfg["report_to"] = [] if cfg["report_to"] == "none" else cfg["report_to"]  # TrainingArguments' spelling
    for key, value in cfg.items():
        if key not in ("bf16", "use_cpu") or "demo" in name:
            got = values[key]
            assert getattr(got, "value", got) == value, key
    script_args, training_args, model_args, slowed_args = parsed
    if "demo" in name:  # the CPU SLowED recipe
        assert slowed_args.arm == "slowed" and training_args.masking_enabled
    else:  # the paper's students train the recommended arm; --arm slowed keeps the paper's settings in the file
        assert slowed_args.arm == "anchored" and slowed_args.anchor_rank == 64 and slowed_args.slow_factor == 0.1


def test_slowed_sft_trains_the_anchor_unless_told_otherwise():
    """No --arm: the recommended path (the safety anchor); --help names both it and the paper's SLowED."""
    from slowed_peft.scripts.arguments import SLowEDArguments

    assert SLowEDArguments().arm == "anchored" and SLowEDArguments().anchor_rank == 64
    help_text = SLowEDArguments.__dataclass_fields__["arm"].metadata["help"]
    assert help_text.startswith("What to train. Default: anchored") and "slowed: the paper's SLowED" in help_text


def test_config_flag_also_takes_the_equals_form():
    _, training_args, _, _, _ = make_parser().parse_args_and_config(
        args=["--config=smollm2-135m-demo", "--max_steps", "3"], return_remaining_strings=True
    )
    assert training_args.max_steps == 3 and training_args.learning_rate == 1e-3


def test_the_package_stands_alone_without_the_repository(tmp_path):
    """A copy of the package with no recipes/ next to it parses the shipped configs and imports the demo."""
    shutil.copytree(
        Path(slowed_peft.__file__).parent, tmp_path / "slowed_peft", ignore=shutil.ignore_patterns("__pycache__")
    )
    code = (
        "import slowed_peft, slowed_peft.scripts.study as study\n"
        "from slowed_peft.scripts.sft import make_parser\n"
        f"assert slowed_peft.__file__.startswith({str(tmp_path)!r}), slowed_peft.__file__\n"
        "_, t, m, a, _ = make_parser().parse_args_and_config(args=['--config', 'smollm2-135m-demo'], "
        "return_remaining_strings=True)\n"
        "print(m.model_name_or_path, t.max_steps, a.arm, study.parse([], default_config='demo').model_name_or_path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["smollm2-135m-instruct", "20", "slowed", "smollm2-135m-instruct"]


def test_console_script_help_exits_zero():
    """Each console-script function with ``--help`` exits 0 (one interpreter for all five: imports dominate)."""
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for script, target in sorted({CONSOLE_SCRIPTS!r}.items()):
            module, func = target.split(":")
            sys.argv = [script, "--help"]
            print("=== " + script, flush=True)
            try:
                getattr(importlib.import_module(module), func)()
            except SystemExit as exit:
                if exit.code not in (0, None):
                    raise
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in res.stdout.split("=== ")[1:])
    assert sorted(sections) == sorted(CONSOLE_SCRIPTS)
    for script, text in sections.items():
        assert "usage:" in text, script
        if script != "slowed-eval":  # the scripts that take a recipe config list the shipped ones
            assert "smollm2-135m-demo" in text, script


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_exit_zero_after_a_run_that_returns_a_result(script, monkeypatch, capsys):
    """setuptools' wrapper does ``sys.exit(func())``: a trainer/report/dict returned there would exit 1."""
    import importlib
    from types import SimpleNamespace

    module, func = CONSOLE_SCRIPTS[script].split(":")
    mod = importlib.import_module(module)
    trainer = SimpleNamespace(
        state=SimpleNamespace(global_step=2), args=SimpleNamespace(output_dir="out"), is_world_process_zero=lambda: True
    )
    monkeypatch.setattr(mod, "run", lambda argv=None, **_: trainer if script == "slowed-sft" else {"a": 1})
    assert getattr(mod, func)() is None
    if script == "slowed-sft":
        assert capsys.readouterr().out == "[slowed-sft] 2 steps; saved to out\n"


def test_recipes_main_calls_the_console_script_function():
    """``python recipes/x.py`` and ``slowed-x`` are the same function, so they behave the same."""
    targets = set(CONSOLE_SCRIPTS.values())
    for recipe in sorted((ROOT / "recipes").glob("*.py")):
        tree = ast.parse(recipe.read_text())
        imports = {
            a.asname or a.name: f"{n.module}:{a.name}"
            for n in tree.body
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        main = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert len(main) == 1, recipe.name
        calls = [ast.unparse(c.func) for c in ast.walk(main[0]) if isinstance(c, ast.Call)]
        assert len(calls) == 1 and imports.get(calls[0]) in targets, (recipe.name, calls)
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], recipe.name


@pytest.mark.parametrize(
    "arm, slow, masks",
    [("sft", False, False), ("slow", True, False), ("lem", False, True), ("slowed", True, True), ("full", None, False)],
)
def test_arms_set_adapter_and_masking(arm, slow, masks):
    cfg = peft_config_for_arm(SLowEDArguments(arm=arm, slow_factor=0.2, max_drift=0.03))
    if slow is None:  # no adapter: every weight trains
        assert cfg is None and ARMS[arm].adapter is None
    else:
        assert (cfg.slow_factor, cfg.max_drift) == ((0.2, 0.03) if slow else (1.0, None))
    from slowed_peft import SLowEDSFTConfig
    from slowed_peft.scripts.arguments import apply_arm_to_training_args

    targs = apply_arm_to_training_args(
        SLowEDArguments(arm=arm), SLowEDSFTConfig("x", use_cpu=True, bf16=False, entropy_quantile=0.3)
    )
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
    env_cmd = [
        sys.executable,
        str(ROOT / "recipes" / "slowed_sft.py"),
        "--config",
        tiny_recipe(tmp_path, tiny_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
    ]
    res = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = tmp_path / "eval.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "evaluate.py"),
            "--model_name_or_path",
            tiny_dir,
            "--adapter",
            str(out),
            "--limit",
            "3",
            "--max_new_tokens",
            "8",
            "--safety_max_new_tokens",
            "8",
            "--output",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
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
        sft_run(
            [
                "--config",
                tiny_recipe(tmp_path, tiny_dir),
                "--max_steps",
                "1",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/tiny-slowed",
                "--output_dir",
                str(tmp_path / "a"),
            ]
        )
    from slowed_peft.base_models import hub_id_for

    assert hub_id_for("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_for("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
    assert not api.upload_folder.called
    import slowed_peft.base_models as models

    monkeypatch.setattr(models, "hub_id_for", lambda name: "org/tiny-base")
    sft_run(
        [
            "--config",
            tiny_recipe(tmp_path, tiny_dir),
            "--max_steps",
            "1",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/tiny-slowed",
            "--output_dir",
            str(tmp_path / "b"),
        ]
    )
    assert api.upload_folder.call_count == 1 and api.upload_folder.call_args.kwargs["repo_id"] == "me/tiny-slowed"


@pytest.mark.parametrize("arm, peft_type", [("lora", "LORA"), ("ema", "SLOWED"), ("l2sp", "SLOWED")])
def test_recipe_trains_the_baseline_arms(tmp_path, tiny_dir, arm, peft_type):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / f"out-{arm}"
    exact = ["--save_precision", "fp32"]  # the final dense adapter is 4-bit by default
    trainer = sft_run(["--config", tiny_recipe(tmp_path, tiny_dir), "--arm", arm, "--output_dir", str(out), *exact])
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == peft_type
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(out))
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, trainer.model.eval()(ids).logits, rtol=1e-4, atol=1e-5)
