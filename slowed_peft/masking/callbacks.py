"""Log ``lem/masked_fraction`` and ``slowed/drift_*``: into any trainer's logs, or into TRL's ``_metrics``."""

from __future__ import annotations

from typing import Optional

from transformers import TrainerCallback
from transformers.utils import logging

from ..tuner.drift import weight_drift
from ..tuner.layer import SLowEDLayer


logger = logging.get_logger(__name__)

LOGGED_DRIFT = ("slowed/drift_max", "slowed/drift_mean")  # of WeightDrift.as_metrics(); the row max is not logged


def has_slowed_layers(model) -> bool:
    """Whether ``model`` carries at least one SLowED layer (so that drift can be measured)."""
    return model is not None and any(isinstance(m, SLowEDLayer) for m in model.modules())


def slowed_metrics(model, masking_stats=None, new_window: bool = True) -> dict[str, float]:
    """Metrics for one log step: drift (if the model carries SLowED adapters) and the masked fraction since last log.

    ``new_window=False`` reads the masked fraction without restarting its count (for a log that may not happen)."""
    metrics: dict[str, float] = {}
    if masking_stats is not None:
        frac = masking_stats.pop_fraction() if new_window else masking_stats.peek_fraction()
        if frac is not None:
            metrics["lem/masked_fraction"] = frac
    if has_slowed_layers(model):
        drift = weight_drift(model).as_metrics()
        metrics.update({key: drift[key] for key in LOGGED_DRIFT})
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


class TRLMetricsCallback(TrainerCallback):
    """Feeds SLowED metrics to a TRL trainer's ``_metrics["train"]``, which TRL's own ``log`` averages and emits.

    Used by ``SLowEDTrainer``. Each value is stored as a one-element list (as TRL does for ``num_tokens``), set just
    before a log, so the logged value is the drift at that step and the masked fraction since the previous log:
    on ``on_step_end`` / ``on_epoch_end`` when ``control.should_log`` is set (the default flow callback, which runs
    first, decided it), and at the end of every epoch for the summary log of ``train()``.
    """

    def __init__(self, trainer, masking_stats=None, log_drift: bool = True) -> None:
        self.trainer = trainer
        self.stats = masking_stats
        self.log_drift = log_drift

    def _feed(self, new_window: bool) -> None:
        model = self.trainer.model if self.log_drift else None
        metrics = self.trainer._metrics["train"]
        for key, value in slowed_metrics(model, self.stats, new_window=new_window).items():
            metrics[key] = [value]

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log:
            self._feed(new_window=True)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._feed(new_window=control.should_log)
