"""Where local benchmark / CoT data lives: ``$SLOWED_DATA_DIR``, else ``../shared/data`` when present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "SLOWED_DATA_DIR"


def data_dir(required: bool = False) -> Optional[Path]:
    """The data folder, or ``None`` (``ValueError`` when ``required``) if neither the env var nor a default exists."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ValueError(f"{ENV_VAR}={env!r} is not a directory.")
        return path
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    if required:
        raise ValueError(
            f"No data folder found: set {ENV_VAR} to a folder laid out like ../shared/data (see docs), or pass "
            "explicit file paths / Hub dataset ids."
        )
    return None
