"""Merging ΔW into the base weight so that the merged weight still obeys ``‖W − W0‖ ≤ ρ‖W0‖`` after rounding.

Rounding ``W0 + ΔW`` to the base dtype moves every element by up to half a unit in the last place, which can push the
merged drift past ρ (1.026ρ per row in bfloat16, 1.024ρ in float32 at ρ = 1e-6) and, for small drifts in bfloat16,
erase most of ΔW. :func:`merge_within_bound` rounds to nearest, and where a matrix (or row) would leave the trust
region it rounds the overshooting elements toward W0 instead, so that ``|W − W0| ≤ |ΔW|`` elementwise there. The
share of ΔW lost to rounding is measured, and one warning per merge call reports it when it exceeds
``MERGE_LOSS_WARN``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Optional

import torch


# Warn when rounding to the base dtype loses more than this share of ‖ΔW‖ in some layer.
MERGE_LOSS_WARN = 0.10

_state = threading.local()


def _norm(t: torch.Tensor, row_dim: Optional[int]) -> torch.Tensor:
    return t.norm() if row_dim is None else t.norm(dim=row_dim, keepdim=True)


def _step_toward(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The next representable value of ``x`` (in its dtype) in the direction of ``target``."""
    try:
        return torch.nextafter(x, target)
    except (RuntimeError, NotImplementedError):  # a device without nextafter for this dtype
        return torch.nextafter(x.cpu(), target.cpu()).to(x.device)


@torch.no_grad()
def merge_within_bound(
    w0: torch.Tensor, delta: torch.Tensor, rho: Optional[float], row_dim: Optional[int]
) -> tuple[torch.Tensor, float]:
    """``W0 + ΔW`` in the dtype of ``w0`` with ``‖W − W0‖ ≤ ρ‖W0‖`` (per matrix, or reduced over ``row_dim``).

    ``‖W0‖`` is that of ``w0`` itself, the weight in memory. Works in float64. Returns the merged tensor and the
    share of ``‖ΔW‖`` lost to rounding, ``‖(W − W0) − ΔW‖ / ‖ΔW‖``.
    """
    w0_64 = w0.double()
    d64 = delta.to(device=w0.device, dtype=torch.float64)
    if rho is not None:  # ΔW itself comes from float32 arithmetic: make it obey the bound in float64
        limit = rho * _norm(w0_64, row_dim)
        d64 = d64 * torch.clamp(limit / _norm(d64, row_dim).clamp_min(1e-300), max=1.0)
    merged = (w0_64 + d64).to(w0.dtype)
    if rho is not None:
        err = merged.double() - w0_64
        outside = _norm(err, row_dim) > limit
        if bool(outside.any()):
            overshoot = (err.abs() > d64.abs()) & outside
            merged = torch.where(overshoot, _step_toward(merged, w0), merged)
    d_norm = float(d64.norm())
    lost = float((merged.double() - w0_64 - d64).norm() / d_norm) if d_norm > 0 else 0.0
    return merged, lost


@contextlib.contextmanager
def collect_merge_losses() -> Iterator[None]:
    """Within the block, layers report their merge losses here; one summary warning is issued at the end."""
    outer = getattr(_state, "losses", None)
    _state.losses = [] if outer is None else outer
    try:
        yield
    finally:
        losses = _state.losses
        _state.losses = outer
        if outer is None:
            _warn_if_lossy(losses)


def report_merge_loss(lost: float, dtype: torch.dtype) -> None:
    """Record one layer's loss (or warn at once when no merge call collects)."""
    losses = getattr(_state, "losses", None)
    if losses is None:
        _warn_if_lossy([(lost, dtype)])
    else:
        losses.append((lost, dtype))


def _warn_if_lossy(losses: list[tuple[float, torch.dtype]]) -> None:
    lossy = [(lost, dtype) for lost, dtype in losses if lost > MERGE_LOSS_WARN]
    if not lossy:
        return
    worst, dtype = max(lossy, key=lambda item: item[0])
    warnings.warn(
        f"SLowED merge: rounding to the base dtype {dtype} lost {worst:.0%} of ΔW in the worst layer ({len(lossy)} of "
        f"{len(losses)} layers lost more than {MERGE_LOSS_WARN:.0%}); such small changes are below its resolution. "
        "The merged weights still obey the trust region, but they are not the trained model. Merge in float32 "
        "instead (`peft_model.to(torch.float32)` before `merge_and_unload()`) and keep the merged model in float32, "
        "or serve the unmerged adapter; casting the merged model back loses the same share.",
        UserWarning,
        stacklevel=3,
    )
