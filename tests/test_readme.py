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
    assert len(blocks) == 2 and "Qwen/Qwen2.5-1.5B" in blocks[0]
    ns: dict = {}
    exec(blocks[0].replace("Qwen/Qwen2.5-1.5B", str(tmp_path / "tiny-qwen2")), ns)
    assert ns["drift"].max == 0.0
    assert (tmp_path / "slowed-adapter" / "adapter_model.safetensors").exists()
    with torch.no_grad():
        for p in ns["model"].parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    exec(blocks[1], ns)
    assert (tmp_path / "slowed-as-lora" / "adapter_config.json").exists()
    assert 0 <= ns["report"].max_rel_error < 0.2
