"""The README's quickstart runs as written (with a tiny local model in place of the Hub id)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from testing_utils import build_char_tokenizer, build_tiny


README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_quickstart_runs(tmp_path, monkeypatch):
    """The README's first Python block is the recommended path: fit the anchor, train with TRL, save, reload, export.
    Run as written on a tiny local model; the anchor it fits holds on its prompts and travels with the adapter."""
    from peft import PeftModel

    from slowed_peft.tuner.layer import SLowEDLayer

    monkeypatch.chdir(tmp_path)
    tiny = tmp_path / "tiny-qwen2"
    build_tiny("qwen2", tiny)
    build_char_tokenizer(tiny)
    blocks = python_blocks("Quickstart: distil with the safety anchor")
    assert len(blocks) == 1 and "Qwen/Qwen2.5-1.5B-Instruct" in blocks[0]
    assert README.read_text().index("```python") == README.read_text().index(blocks[0]) - len("```python\n")
    assert README.read_text()[: README.read_text().index(blocks[0])].count("\n") < 60  # code within 60 lines
    ns: dict = {}
    code = (
        blocks[0]
        .replace("Qwen/Qwen2.5-1.5B-Instruct", str(tiny))
        .replace("anchor_rank=64", "anchor_rank=8")
        .replace("rank=64)", "rank=16)")
        .replace('report_to="none"', 'report_to="none", use_cpu=True, bf16=False')
    )
    exec(code, ns)  # the tiny model is 32 wide: 8 protected directions, LoRA rank 16
    model, report = ns["model"], ns["report"]
    assert report.prompts == 80 and min(report.ranks.values()) >= 1
    layers = [m for m in model.modules() if isinstance(m, SLowEDLayer)]
    assert layers and all(m.slowed_anchor["default"].shape[1] >= 1 for m in layers)
    assert (tmp_path / "anchored-adapter" / "adapter_model.safetensors").exists()
    reloaded = ns["reloaded"]
    assert isinstance(reloaded, PeftModel)
    for name, module in model.named_modules():  # the bases came back with the adapter
        if isinstance(module, SLowEDLayer):
            stored = reloaded.get_submodule(name).slowed_anchor["default"]
            assert torch.equal(stored.cpu(), module.slowed_anchor["default"].cpu()), name
    assert (tmp_path / "anchored-as-lora" / "adapter_config.json").exists()
    assert 0 < ns["lora"].nbytes and ns["lora"].max_rel_error < 1.0

    integrations = (README.parent / "docs" / "integrations.md").read_text()
    (export,) = [b for b in re.findall(r"```python\n(.*?)```", integrations, flags=re.S) if "max_bytes" in b]
    ns["ids"] = torch.randint(0, 64, (2, 8))
    ns["slowed_peft"] = __import__("slowed_peft")
    exec(export, ns)  # docs/integrations.md's byte-budget export, on the quickstart's trained model
    assert (tmp_path / "slowed-as-lora" / "adapter_config.json").exists()
    assert ns["report"].nbytes <= ns["report"].adapter_nbytes and ns["report"].logit_kl < 1e-3


def test_readme_stays_a_five_minute_read():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in (
        "method",
        "guarantees",
        "saving",
        "integrations",
        "recipes",
        "scale_out",
        "studies",
        "results",
        "performance",
    ):
        assert f"(docs/{page}.md" in text, page
        assert (README.parent / "docs" / f"{page}.md").is_file(), page
