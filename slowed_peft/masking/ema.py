"""`ParameterEMACallback`: an exponential moving average of the trainable weights, evaluated and kept at the end.

A baseline for Slow Tuning (Kim et al. 2025, "Rethinking Safety in LLM Fine-tuning"): averaging the fine-tuned
weights in parameter space, starting from the initial weights, keeps them nearer the aligned model. For a SLowED dense
delta ``W = W0 + D`` the average of ``W`` is ``W0 + EMA(D)``, so averaging the trainable tensors is enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import TrainerCallback


__all__ = ["ParameterEMACallback"]


class ParameterEMACallback(TrainerCallback):
    """After every optimizer step, ``avg ← decay·avg + (1 − decay)·θ`` for each trainable tensor ``θ``; the average
    starts at the weights training starts from (no bias correction: the pull toward them is the point).

    At the end of training the averaged weights replace the trained ones, so ``trainer.model`` (and what is saved
    from it) is the EMA model. :meth:`swapped` evaluates the average during training.
    """

    def __init__(self, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"ParameterEMACallback: decay must be a number in [0, 1); got decay={decay!r}.")
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] = {}
        self._model: nn.Module | None = None

    def _trainable(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.average:
            self._model = model
            self.average = {n: p.detach().clone() for n, p in self._trainable(model)}
            if not self.average:
                raise ValueError("ParameterEMACallback: the model has no trainable parameters to average.")

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, p in self._trainable(model):
            self.average[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights in place of the trained ones, restored on exit."""
        params = dict(self._trainable(model))
        saved = {n: params[n].detach().clone() for n in self.average}
        self._copy(params, self.average)
        try:
            yield model
        finally:
            self._copy(params, saved)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._copy(dict(self._trainable(model)), self.average)

    @staticmethod
    @torch.no_grad()
    def _copy(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            params[name].copy_(value)  # in place: bumps the version counter, so SLowED's weight cache rebuilds
