"""A newcomer's first command on a bare clone: nothing beside the checkout, no $SLOWED_DATA_DIR, no network — the
quick demo runs from the clone's own files (the bundled data) and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_demo_runs_from_a_bare_clone(tmp_path, shared_model_cache):
    clone = tmp_path / "empty" / "slowed_peft"  # its parent holds nothing else: no ../shared/data
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=300)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["slowed_peft"]
    env = {k: v for k, v in os.environ.items() if k not in ("SLOWED_DATA_DIR", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # the clone's package, offline
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "slowed_peft.scripts.demo", "--quick", "true", "--output_dir", str(out)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"{clone}/slowed_peft"
        in subprocess.run(
            [sys.executable, "-c", "import slowed_peft; print(slowed_peft.__file__)"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )  # the clone's code ran, not this checkout's
    assert (out / "report.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "SFT + anchor" in result.stdout
