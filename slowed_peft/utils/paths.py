"""Where local benchmark / CoT data lives: an explicit path, else ``$SLOWED_DATA_DIR``, else the files shipped with
the package (``slowed_peft/bundled_data``: AdvBench behaviours, SVAMP rationales, ARC-Challenge; see its
``SOURCES.md``).

The package never guesses a folder from its own checkout or the working directory: data comes from explicit
paths / ``data_dir=`` arguments / command-line flags, from this environment variable, or from the bundled files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


ENV_VAR = "SLOWED_DATA_DIR"
# The small licensed files the demo, its alignment and the default test tier need (package data).
BUNDLED_DATA = Path(__file__).resolve().parent.parent / "bundled_data"


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


def data_roots(explicit: Optional[Path] = None) -> list[Path]:
    """The folders searched for a data file, in order: ``explicit`` alone when given; else ``$SLOWED_DATA_DIR`` (when
    set) and then the bundled files."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    env = data_dir()
    return ([env] if env is not None else []) + [BUNDLED_DATA]
