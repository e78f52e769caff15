"""Plots a person would rather look at than read: training curves and before/after bars (matplotlib PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str, title: str = "") -> None:
    """Title (if any), tight layout, PNG at 120 dpi, and free the figure."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [h for h in history if key in h and "step" in h and "train_runtime" not in h]
    return [h["step"] for h in rows], [float(h[key]) for h in rows]


def plot_training(history: Sequence[Mapping[str, Any]], path: str, title: str = "") -> Optional[str]:
    """Loss, weight drift and masked fraction over steps from a trainer's ``log_history``; returns ``path``."""
    plt = _pyplot()
    panels = [
        ("loss", "training loss"),
        ("slowed/drift_max", "max relative drift ‖W−W0‖/‖W0‖"),
        ("lem/masked_fraction", "masked fraction of label tokens"),
    ]
    panels = [(k, label) for k, label in panels if _series(history, k)[0]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        steps, values = _series(history, key)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    _save(plt, fig, path, title)
    return path


def plot_over_steps(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[tuple[str, str]], path: str, title: str = ""
) -> Optional[str]:
    """One panel per ``(record key, label)``, one line per run ``{name: checkpoint records}``; returns ``path``."""
    plt = _pyplot()
    keys = [(k, label) for k, label in keys if any(k in r for recs in runs.values() for r in recs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for name, records in runs.items():
            points = [(r["step"], float(r[key])) for r in records if key in r and r[key] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(plt, fig, path, title)
    return path
