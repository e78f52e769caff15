"""Where local benchmark / CoT data lives: the folder named by ``$SLOWED_DATA_DIR``, and nowhere else by default.

The package never guesses a folder from its own location or the working directory: data comes from explicit
paths / ``data_dir=`` arguments / command-line flags, or from this environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


ENV_VAR = "SLOWED_DATA_DIR"


def data_dir(required: bool = False) -> Optional[Path]:
    """The folder ``$SLOWED_DATA_DIR`` names, or ``None`` when it is unset (``ValueError`` when ``required``).

    A set variable that is not a directory always raises ``ValueError`` naming it.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ValueError(f"{ENV_VAR}={env!r} is not a directory.")
        return path
    if required:
        raise ValueError(
            f"No data folder given: pass explicit file paths (path= / data_dir=, or the matching command-line flag) "
            f"or Hub dataset ids, or set {ENV_VAR} to a folder holding the benchmark files (layout: see "
            "slowed_peft.data.readers)."
        )
    return None
