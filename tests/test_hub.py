"""`push_adapter` / `build_model_card`: staged folder, adapter config, model card and Hub calls (HfApi mocked)."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from slowed_peft import SLowEDConfig
from slowed_peft.hub import build_model_card, push_adapter

from testing_utils import build_tiny


REPO = "someone/tiny-slowed"
BASE = "org/tiny-llama"


def slowed_model(tmp_path, r=None):
    model = build_tiny("llama", tmp_path / "base")
    pm = get_peft_model(model, SLowEDConfig(target_modules="all-linear", r=r, slow_factor=0.5, task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return pm


def push(pm, tmp_path, **kw):
    api = MagicMock()
    api.upload_folder.return_value = "https://huggingface.co/someone/tiny-slowed/commit/abc"
    out = tmp_path / "upload"
    result = push_adapter(pm, REPO, kw.pop("base_model_id", BASE), api=api, local_dir=out, **kw)
    return api, out, result


def test_push_uploads_adapter_config_and_card(tmp_path):
    pm = slowed_model(tmp_path)
    metrics = {"refusal ratio": {"before": 0.91, "after": 0.95}, "accuracy": {"before": 0.30, "after": 0.42}}
    api, out, result = push(pm, tmp_path, private=True, commit_message="v1", extra_tags=["llama"], metrics=metrics)

    api.create_repo.assert_called_once_with(REPO, exist_ok=True, private=True, repo_type="model")
    api.upload_folder.assert_called_once_with(repo_id=REPO, folder_path=str(out), commit_message="v1")
    assert result == api.upload_folder.return_value

    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "lora_export").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SLOWED" and cfg["base_model_name_or_path"] == BASE
    assert load_file(out / "adapter_model.safetensors")

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == BASE
    assert card.data.pipeline_tag == "text-generation"
    for tag in ["peft", "slowed", "safety", "chain-of-thought", "distillation", f"base_model:adapter:{BASE}", "llama"]:
        assert tag in card.data.tags
    text = card.text
    assert "2508.09666" in text and "slow_factor" in text and "0.5" in text and "max_drift" in text
    assert "| refusal ratio | 0.91 | 0.95 |" in text and "before" in text
    usage = text[text.index("## Usage") :]
    assert "pip install slowed-peft" in usage
    assert usage.index("import slowed_peft") < usage.index("from peft import")
    assert f'AutoPeftModelForCausalLM.from_pretrained("{REPO}")' in usage and "KeyError: 'SLOWED'" in usage
    assert "lora_export" not in text


def test_push_with_lora_export(tmp_path):
    pm = slowed_model(tmp_path, r=4)
    _, out, _ = push(pm, tmp_path, export_lora_rank=4)
    lora_cfg = json.loads((out / "lora_export" / "adapter_config.json").read_text())
    assert lora_cfg["peft_type"] == "LORA" and lora_cfg["base_model_name_or_path"] == BASE
    assert (out / "lora_export" / "adapter_model.safetensors").exists()
    text = ModelCard.load(out / "README.md").text
    assert f'PeftModel.from_pretrained(base, "{REPO}", subfolder="lora_export")' in text
    assert "relative error" in text


@pytest.mark.filterwarnings("ignore:Could not find a config file")
def test_base_id_taken_from_config_when_it_is_a_hub_id(tmp_path):
    pm = slowed_model(tmp_path)
    pm.peft_config["default"].base_model_name_or_path = "meta/llama-tiny"
    _, out, _ = push(pm, tmp_path, base_model_id=None)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "meta/llama-tiny"


def test_errors(tmp_path):
    pm = slowed_model(tmp_path)
    api = MagicMock()
    with pytest.raises(ValueError, match="base_model_id"):  # config holds the local path of build_tiny's model
        push_adapter(pm, REPO, api=api, local_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="PeftModel"):
        push_adapter(pm.get_base_model(), REPO, BASE, api=api)
    for bad in ["", "   ", "a/b/c", "bad name/x", None]:
        with pytest.raises(ValueError, match="repo_id"):
            push_adapter(pm, bad, BASE, api=api)
    with pytest.raises(ValueError, match="base_model_id"):
        push_adapter(pm, REPO, "not a/valid id", api=api)
    api.create_repo.assert_not_called()
    api.upload_folder.assert_not_called()


def test_non_slowed_adapter_rejected(tmp_path):
    model = build_tiny("llama", tmp_path / "base")
    lora = get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="SLOWED"):
        push_adapter(lora, REPO, BASE, api=MagicMock())


def test_build_model_card_dense_no_metrics():
    cfg = SLowEDConfig(target_modules=["q_proj", "v_proj"], max_drift=None)
    card = build_model_card(cfg, BASE, REPO)
    assert "dense" in card.text and "`q_proj`" in card.text and "## Evaluation" not in card.text
    assert card.data.tags[-1] == f"base_model:adapter:{BASE}"


def test_card_metadata_has_license_datasets_and_hub_base(tmp_path):
    pm = slowed_model(tmp_path)
    _, out, _ = push(pm, tmp_path, datasets=["gsm8k", "walledai/AdvBench"], license="apache-2.0")
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model == BASE
    assert card.data.datasets == ["gsm8k", "walledai/AdvBench"]


def test_embedded_base_resolves_to_its_hub_id(tmp_path):
    """A base folder recording its Hub id (``base_models`` writes one for the embedded SmolLM2) needs no
    ``base_model_id``: the card and adapter_config.json name the Hub id."""
    pm = slowed_model(tmp_path)
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "base" / "slowed_source.json").write_text(json.dumps({"hub_id": hub}))
    _, out, _ = push(pm, tmp_path, base_model_id=None)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub
    assert ModelCard.load(out / "README.md").data.base_model == hub


def test_card_usage_snippet_runs(tmp_path):
    """The card's Python snippet, with the two Hub ids replaced by local folders, runs in a fresh interpreter."""
    import re
    import subprocess
    import sys

    from testing_utils import build_char_tokenizer

    pm = slowed_model(tmp_path)
    build_char_tokenizer(tmp_path / "base")
    adapter = tmp_path / "adapter"
    pm.save_pretrained(adapter)
    text = build_model_card(pm.peft_config["default"], BASE, REPO).text
    (snippet,) = [s for s in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "AutoPeftModelForCausalLM" in s]
    code = snippet.replace(f'"{REPO}"', repr(str(adapter))).replace(f'"{BASE}"', repr(str(tmp_path / "base")))
    assert REPO not in code and BASE not in code
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
