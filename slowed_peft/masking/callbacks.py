"""`SLowEDMetricsCallback`: log ``lem/masked_fraction`` and ``slowed/drift_*`` with the trainer's own logs."""

from __future__ import annotations

from typing import Optional

from transformers import TrainerCallback
from transformers.utils import logging

from ..tuner.drift import weight_drift
from ..tuner.layer import SLowEDLayer

logger = logging.get_logger(__name__)


def has_slowed_layers(model) -> bool:
    return model is not None and any(isinstance(m, SLowEDLayer) for m in model.modules())


def slowed_metrics(model, masking_stats=None) -> dict[str, float]:
    """Metrics for one log step: drift (if the model carries SLowED adapters) and the masked fraction since last log."""
    metrics: dict[str, float] = {}
    if masking_stats is not None:
        frac = masking_stats.pop_fraction()
        if frac is not None:
            metrics["lem/masked_fraction"] = frac
    if has_slowed_layers(model):
        drift = weight_drift(model)
        metrics["slowed/drift_max"] = drift.max
        metrics["slowed/drift_mean"] = drift.mean
    return metrics


class SLowEDMetricsCallback(TrainerCallback):
    """Adds SLowED metrics to every log (works with any ``Trainer``, e.g. plain ``SFTTrainer`` + the collator).

    Pass the ``EntropyMaskingCollator`` to get ``lem/masked_fraction``. Insert it first so reporting callbacks see the
    metrics: ``trainer.callback_handler.callbacks.insert(0, SLowEDMetricsCallback(collator))`` or use
    :func:`add_slowed_metrics`. With ``dataloader_num_workers > 0`` the collator's counts live in worker processes
    and the masked fraction is not available (a warning says so once).
    """

    def __init__(self, collator=None) -> None:
        self.stats = getattr(collator, "stats", None)
        self._warned = False

    def on_log(self, args, state, control, logs: Optional[dict] = None, model=None, **kwargs):
        if logs is None or any(k.startswith("eval_") for k in logs):
            return
        if self.stats is not None and args.dataloader_num_workers > 0 and not self._warned:
            logger.warning("lem/masked_fraction is unavailable with dataloader_num_workers > 0.")
            self._warned = True
        metrics = slowed_metrics(model, self.stats)
        logs.update(metrics)
        if state.log_history and metrics:
            state.log_history[-1].update(metrics)


def add_slowed_metrics(trainer, collator=None) -> SLowEDMetricsCallback:
    """Register :class:`SLowEDMetricsCallback` on ``trainer`` ahead of the reporting callbacks; returns it."""
    callback = SLowEDMetricsCallback(collator if collator is not None else trainer.data_collator)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
