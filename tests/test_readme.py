"""The README's quickstart runs as written (with a tiny local model in place of the Hub id)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from testing_utils import build_tiny


README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_tiny("qwen2", tmp_path / "tiny-qwen2")
    blocks = python_blocks("Quickstart")
    assert len(blocks) == 1 and "Qwen/Qwen2.5-1.5B" in blocks[0]
    ns: dict = {}
    exec(blocks[0].replace("Qwen/Qwen2.5-1.5B", str(tmp_path / "tiny-qwen2")), ns)
    assert ns["drift"].max == 0.0
    assert (tmp_path / "slowed-adapter" / "adapter_model.safetensors").exists()
    with torch.no_grad():
        for p in ns["model"].parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    (export,) = [b for b in python_blocks("Use it elsewhere") if "export_as_lora" in b]  # for users without us
    ns["ids"] = torch.randint(0, 64, (2, 8))
    exec(export, ns)
    assert (tmp_path / "slowed-as-lora" / "adapter_config.json").exists()
    report = ns["report"]  # a budget above the dense size is capped at it: rank ≤ half the width of a square matrix
    assert report.nbytes <= report.adapter_nbytes and 0 < report.max_rel_error < 0.6 and report.logit_kl < 1e-3
