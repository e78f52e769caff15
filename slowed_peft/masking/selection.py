"""Which tokens Low-Entropy Masking drops: threshold or quantile over candidates, with a per-example floor.

Shared by the collator (initial-model entropies) and the trainer (live entropies), so both paths mask the same way.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_masking_args(threshold: Optional[float], quantile: Optional[float], min_kept: int, owner: str) -> None:
    """Exactly one of ``threshold`` (finite nats, >= 0) or ``quantile`` (in the open interval (0, 1)); ``min_kept``
    an integer >= 0. ``ValueError`` naming ``owner`` and the bad value otherwise.

    Why the bounds: an infinite threshold masks every label (only the ``min_kept`` floor would train); quantile 0
    masks nothing (no entropy is strictly below the minimum) and quantile 1 everything, so both are almost
    certainly mistakes: leave masking off (neither set) for plain SFT.
    """
    if (threshold is None) == (quantile is None):
        raise ValueError(
            f"{owner}: set exactly one of `threshold` (nats) or `quantile` (fraction in (0, 1)); got "
            f"threshold={threshold!r}, quantile={quantile!r}."
        )
    if threshold is not None and (not _is_number(threshold) or not math.isfinite(threshold) or threshold < 0):
        raise ValueError(
            f"{owner}: `threshold` must be a finite number of nats >= 0; got threshold={threshold!r} "
            "(leave both threshold and quantile unset to train without masking)."
        )
    if quantile is not None and (not _is_number(quantile) or not (0.0 < quantile < 1.0)):
        raise ValueError(
            f"{owner}: `quantile` must be in the open interval (0, 1); got quantile={quantile!r} "
            "(0 would mask nothing and 1 everything; leave both unset to train without masking)."
        )
    if not isinstance(min_kept, int) or isinstance(min_kept, bool) or min_kept < 0:
        raise ValueError(f"{owner}: `min_kept` must be an integer >= 0; got min_kept={min_kept!r}.")


def gather_candidates(values: torch.Tensor) -> torch.Tensor:
    """All processes' candidate entropies (a 1-D float tensor) when ``torch.distributed`` runs with > 1 process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values.detach().float().cpu())
    parts = [g for g in gathered if g.numel() > 0]
    return torch.cat(parts).to(values.device) if parts else values


def entropy_threshold(
    entropy: torch.Tensor, candidates: torch.Tensor, threshold: Optional[float], quantile: Optional[float]
) -> Optional[float]:
    """The cut in nats: ``threshold`` itself, or the ``quantile`` of the candidates' entropies (across processes)."""
    if threshold is not None:
        return float(threshold)
    values = gather_candidates(entropy[candidates].float())
    if values.numel() == 0:
        return None
    return float(torch.quantile(values, quantile))


def low_entropy_mask(
    entropy: torch.Tensor,
    candidates: torch.Tensor,
    threshold: Optional[float] = None,
    quantile: Optional[float] = None,
    min_kept: int = 1,
) -> torch.Tensor:
    """Boolean ``[batch, seq]`` mask of candidate tokens to drop (entropy strictly below the cut).

    ``entropy`` and ``candidates`` are aligned (same shape). If dropping would leave an example with no candidate,
    its ``min_kept`` highest-entropy candidates are kept, so the loss is never NaN nor silently zero.
    """
    candidates = candidates.bool()
    bad = candidates & torch.isnan(entropy)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"Low-Entropy Masking: NaN entropy at a label position (example {row}, position {col}); "
            "recompute the entropy column (annotate_entropy) or check the model for NaN logits."
        )
    cut = entropy_threshold(entropy, candidates, threshold, quantile)
    if cut is None:
        return torch.zeros_like(candidates)
    drop = candidates & (entropy < cut)
    if min_kept > 0:
        emptied = candidates.any(dim=1) & ~(candidates & ~drop).any(dim=1)
        for row in emptied.nonzero().flatten().tolist():
            scores = entropy[row].float().masked_fill(~candidates[row], float("-inf"))
            k = min(min_kept, int(candidates[row].sum()))
            keep = torch.topk(scores, k).indices
            drop[row, keep] = False
    return drop
