"""The study engine's run records: one JSON file per (method, seed) under ``<output_dir>/runs``, written atomically,
reused only when recorded under the same study arguments.

A run record holds ``method``, ``seed``, ``study_args`` (every argument that shapes its numbers), ``settings`` (the
method's arm and hyper-parameters), ``checkpoints`` (one evaluator record per checkpoint, step 0 excluded: that is
``initial.json``), ``train_loss``, ``masked_fraction`` and ``seconds``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any


__all__ = ["NOT_SHAPING", "claim", "load_runs", "reusable", "run_file", "study_args", "write_json_atomic"]

# Arguments that do not change what a run computes: a run recorded under other values of the rest is not reused.
NOT_SHAPING = (
    "output_dir", "seeds", "extra_seeds", "methods", "seeded_methods", "workers", "report_only", "reference",
    "save_adapter", "save_precision", "comparisons",
)  # fmt: skip


def run_file(out: Path, method: str, seed: int) -> Path:
    """``<out>/runs/<method, non-alphanumerics as _>__seed<seed>.json``."""
    safe = "".join(c if c.isalnum() else "_" for c in method)
    return out / "runs" / f"{safe}__seed{seed}.json"


def study_args(args: Any) -> dict[str, Any]:
    """The arguments that shape every run's numbers (recorded in each run file and compared before reuse)."""
    return {k: v for k, v in asdict(args).items() if k not in NOT_SHAPING}


def _defaults(args: Any) -> dict[str, Any]:
    from dataclasses import MISSING

    out = {}
    for f in fields(args):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def write_json_atomic(path: Path, record: Any) -> None:
    """Write ``record`` as JSON so that a kill never leaves a truncated file (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def reusable(path: Path, args: Any) -> bool:
    """Whether ``path`` holds a finished run of this study: unreadable files are named and removed (redone); a run
    recorded under other arguments raises ``ValueError`` naming the keys (use another ``output_dir``). An argument
    the record does not name (added to the engine after it was written) counts as recorded at its default."""
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
        recorded = record["study_args"]
        if not isinstance(recorded, dict):
            raise TypeError("study_args is not an object")
    except (ValueError, KeyError, TypeError):
        print(f"[resume] {path} is unreadable or from an older version: removing it, the run is redone")
        path.unlink()
        return False
    current, defaults = study_args(args), _defaults(args)
    recorded = {**{k: defaults[k] for k in current if k in defaults}, **recorded}
    differing = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differing:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in differing[:6])
        raise ValueError(
            f"{path} was recorded under other study arguments ({shown}). Its numbers would not be comparable: use "
            "another --output_dir, or the arguments it was recorded with."
        )
    return True


def claim(path: Path) -> bool:
    """Atomically claim a run for this worker (a ``.lock`` folder beside its file); False if taken or done."""
    if path.exists():
        return False
    try:
        os.mkdir(path.with_suffix(".lock"))
        return True
    except FileExistsError:
        return False


def load_runs(out: Path) -> dict[str, list[dict]]:
    """``{method: [run record per seed]}`` of every finished run under ``out/runs``, seeds in order."""
    runs: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        runs.setdefault(record["method"], []).append(record)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in runs.items()}
