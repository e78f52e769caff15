"""`SLowEDTrainer`: TRL's ``SFTTrainer`` with Low-Entropy Masking (live or initial-model entropy) and drift logs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer

from .annotate import ENTROPY_COLUMN
from .annotate_rows import annotate_prepared, annotate_rows, rows_read
from .callbacks import TRLMetricsCallback
from .collator import EntropyMaskingCollator, MaskingStats
from .config import SLowEDSFTConfig
from .fused import token_outputs
from .selection import low_entropy_mask


# The TRL release whose `SFTTrainer.compute_loss` the live loss and `_log_trl_metrics` mirror; tests/test_trl_mirror.py
# fails when the installed TRL's mirrored lines differ from that release's.
TRL_MIRRORED_VERSION = "1.16.0"

# SLowEDConfig fields that shape what training does to the weights: a resumed run must use the checkpoint's values
# (fields this version of SLowEDConfig does not have are skipped; a field missing from an older checkpoint's
# adapter_config.json counts as its default).
RESUME_FIELDS = (
    "r",
    "slow_factor",
    "max_drift",
    "drift_granularity",
    "anchor_rank",
    "anchor_energy",
    "anchor_tokens",
)
SLOWED_TYPE = "SLOWED"


def _slowed_configs(model) -> dict:
    """``{adapter name: SLowEDConfig}`` of a PEFT model (empty for anything else)."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return {}
    return {name: c for name, c in configs.items() if getattr(c, "peft_type", None) == SLOWED_TYPE}


def check_resume_settings(model, checkpoint: str) -> None:
    """``ValueError`` unless every SLowED adapter of ``model`` has the settings (:data:`RESUME_FIELDS`) recorded in
    ``checkpoint``'s ``adapter_config.json``: the checkpoint's weights were trained under those, so continuing under
    others (a looser trust region, another γ) would silently change the run. Names each field, old and new value."""
    problems = []
    for name, config in _slowed_configs(model).items():
        path = os.path.join(checkpoint, "adapter_config.json" if name == "default" else f"{name}/adapter_config.json")
        if not os.path.isfile(path):
            continue  # no adapter saved under that name: PEFT's own loading reports what is missing
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"Cannot resume from {checkpoint}: {path} is unreadable ({err}).") from None
        defaults = {k: f.default for k, f in getattr(type(config), "__dataclass_fields__", {}).items()}
        differing = [
            f"{field}: {saved.get(field, defaults.get(field))!r} (checkpoint) -> {getattr(config, field)!r} (this run)"
            for field in RESUME_FIELDS
            if hasattr(config, field) and saved.get(field, defaults.get(field)) != getattr(config, field)
        ]
        if differing:
            problems.append(f"adapter {name!r} ({path}): " + "; ".join(differing))
    if problems:
        raise ValueError(
            f"Cannot resume from {checkpoint}: the checkpoint was trained under other adapter settings than this run "
            f"asks for: {' | '.join(problems)}. Its adapter_config.json is what its weights were trained under: resume "
            "with those settings, or start a new run (another output_dir, no resume_from_checkpoint)."
        )


class SLowEDTrainer(SFTTrainer):
    """``SFTTrainer`` that masks low-entropy label tokens and logs ``lem/masked_fraction`` and ``slowed/drift_*``.

    * ``entropy_source="live"``: the entropy comes from the fused LM head of the very forward pass that computes
      the loss (``FusedCausalLMOutput.entropy``), so masking costs no extra forward. The loss is the mean NLL over
      the *kept* tokens of the whole gradient-accumulation window (and all processes): each micro-batch is first
      normalised by the window's label count (known in advance), then the accumulated gradients are rescaled by
      ``#labels / #kept`` just before clipping — exact, because the gradient is linear in the summed loss.
    * ``entropy_source="initial"``: after TRL prepared the dataset (tokenized, labels built, truncated), the model
      as it is at construction (adapters at ΔW = 0, i.e. the initial model) annotates ``token_entropy`` once
      (cached by ``datasets``) and an :class:`EntropyMaskingCollator` masks per batch. When ``max_steps`` ends the
      run inside its first epoch, only the rows the run's own sampler will read are annotated (the others get an
      empty entropy list, which the collator refuses with a clear error should they ever be read).

    The SLowED metrics go into ``self._metrics["train"]`` (see :class:`TRLMetricsCallback`), so TRL's own ``log``
    emits them next to its ``entropy`` / ``mean_token_accuracy`` / ``num_tokens``. Everything else — PEFT wrapping
    from ``peft_config`` (e.g. ``SLowEDConfig``), saving — is ``SFTTrainer``'s.
    """

    def __init__(self, model, args: Optional[SLowEDSFTConfig] = None, *pargs, **kwargs) -> None:
        if args is not None and not isinstance(args, SLowEDSFTConfig):
            raise TypeError(f"SLowEDTrainer expects args of type SLowEDSFTConfig; got {type(args).__name__}.")
        if args is None:
            name = (
                model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
            )
            args = SLowEDSFTConfig(f"{str(name).split('/')[-1]}-SLowED")
        self._initial_masking = args.masking_enabled and args.entropy_source == "initial"
        if self._initial_masking and kwargs.get("data_collator") is not None:
            raise ValueError("entropy_source='initial' installs its own EntropyMaskingCollator; drop data_collator.")
        super().__init__(model, args, *pargs, **kwargs)
        self._lem_stats = MaskingStats()
        self._window = {"kept": 0, "labels": 0, "loss": 0.0}
        if self.args.masking_enabled:
            self._check_supported()
        if self._initial_masking:
            self._install_initial_masking()
        self.add_callback(TRLMetricsCallback(self, self._lem_stats, log_drift=self.args.log_drift))

    # ------------------------------------------------------------------------------------------------ set-up
    def _check_supported(self) -> None:
        if self.compute_loss_func is not None or self.label_smoother is not None:
            raise ValueError("Low-Entropy Masking cannot be combined with compute_loss_func or label smoothing.")
        if self._initial_masking and self.padding_free:
            raise ValueError(
                "entropy_source='initial' needs padded batches (EntropyMaskingCollator); packing / padding_free are "
                "supported with entropy_source='live'."
            )

    def _install_initial_masking(self) -> None:
        """Annotate the prepared datasets with the model as it is now and mask through an EntropyMaskingCollator."""
        batch_size = self.args.per_device_eval_batch_size
        self.train_dataset = annotate_rows(self.train_dataset, rows_read(self), self.model, batch_size)
        self.eval_dataset = annotate_prepared(self.eval_dataset, self.model, batch_size)
        collator = EntropyMaskingCollator(
            pad_token_id=self.data_collator.pad_token_id,
            pad_to_multiple_of=self.args.pad_to_multiple_of,
            threshold=self.args.entropy_threshold,
            quantile=self.args.entropy_quantile,
            min_kept=self.args.entropy_min_kept,
            truncation_mode=self.args.truncation_mode,
        )
        self.data_collator = collator
        self._lem_stats = collator.stats

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._initial_masking and ENTROPY_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ENTROPY_COLUMN]

    # ------------------------------------------------------------------------------------------------ checkpoints
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; resuming first checks that the checkpoint was trained under this run's adapter
        settings (:func:`check_resume_settings`: ``max_drift``, ``slow_factor``, ``r``, ...)."""
        if resume_from_checkpoint:
            checkpoint = resume_from_checkpoint
            if isinstance(checkpoint, bool):
                checkpoint = get_last_checkpoint(self.args.output_dir)  # None: Trainer.train raises its own error
            if checkpoint is not None:
                check_resume_settings(self.model, str(checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    @contextmanager
    def _exact_adapter_saves(self) -> Iterator[None]:
        """Trainer checkpoints store the exact adapter: ``save_precision`` is ``"fp32"`` while one is written (a
        ``"4bit"`` run's checkpoint would otherwise resume from a rounded delta); the final ``save_model`` keeps the
        run's own setting."""
        configs = [c for c in _slowed_configs(self.model).values() if getattr(c, "save_precision", "fp32") != "fp32"]
        previous = [c.save_precision for c in configs]
        for config in configs:
            config.save_precision = "fp32"
        try:
            yield
        finally:
            for config, precision in zip(configs, previous):
                config.save_precision = precision

    def create_model_card(self, *args, **kwargs) -> None:
        """A SLowED model gets the SLowED card (``tuner/card.py``: config, storage precision, usage) in ``output_dir``,
        not TRL's generic one, which would otherwise also keep the final adapter's own card from being written."""
        if not _slowed_configs(self.model):
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero() and hasattr(self.model, "create_or_update_model_card"):
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.model.create_or_update_model_card(self.args.output_dir)
        return None

    def _save_checkpoint(self, model, trial):
        with self._exact_adapter_saves():
            return super()._save_checkpoint(model, trial)

    def _tune_save_checkpoint(self, checkpoint_dir: str) -> None:
        with self._exact_adapter_saves():
            return super()._tune_save_checkpoint(checkpoint_dir)

    # ------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, over the kept (not low-entropy) label tokens when masking with the live entropy.

        The live branch mirrors the default branch of ``trl.SFTTrainer.compute_loss`` (TRL ``TRL_MIRRORED_VERSION``:
        fused forward, ``dft``, token normalisation, device scaling, MoE aux loss) with ``keep`` for ``label_mask``."""
        if not (self.args.masking_enabled and self.args.entropy_source == "live"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = token_outputs(model, inputs)  # TRL's fused head; full logits on TRL < 1.15
        label_mask = outputs.label_mask
        drop = low_entropy_mask(
            outputs.entropy.detach(),
            label_mask,
            self.args.entropy_threshold,
            self.args.entropy_quantile,
            self.args.entropy_min_kept,
        )
        keep = label_mask & ~drop
        per_token_loss = -outputs.log_probs * keep
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        counted = label_mask if self.args.entropy_normalization == "labels" else keep
        denom = counted.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(denom).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        if mode == "train" and num_items_in_batch is not None:
            self._window["kept"] += int(keep.sum())
            self._window["labels"] += int(label_mask.sum())
            self._window["loss"] += float(loss.detach())
        if mode == "train":
            self._lem_stats.masked += int(drop.sum())
            self._lem_stats.candidates += int(label_mask.sum())
        self._log_trl_metrics(mode, inputs, outputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return (loss, outputs) if return_outputs else loss

    def _log_trl_metrics(self, mode: str, inputs: dict, outputs) -> None:
        """TRL's own per-step metrics (entropy over all label tokens, token accuracy, token count).

        COPY of the metrics block of ``trl.SFTTrainer.compute_loss`` (TRL ``TRL_MIRRORED_VERSION``; the lines from
        ``num_valid = ...`` to the ``aux_loss`` append), because the live loss replaces that method whole."""
        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                n = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            elif "position_ids" in inputs:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                n = self.accelerator.gather_for_metrics(local).sum().item()
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
            self._total_train_tokens += n // getattr(self, "_tp_size", 1)  # TRL < 1.14 has no tensor-parallel count
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

    # ------------------------------------------------------------------------------------------------ GA-exact rescale
    def _rescale_to_kept_tokens(self, model) -> None:
        """Turn the window's gradients from ``Σ kept NLL / #labels`` into ``Σ kept NLL / #kept`` (all processes)."""
        window, self._window = self._window, {"kept": 0, "labels": 0, "loss": 0.0}
        if window["labels"] == 0 or self.args.entropy_normalization == "labels":  # already Σ kept NLL / #labels
            return
        counts = torch.tensor([window["kept"], window["labels"]], dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        kept, labels = counts.tolist()
        factor = labels / max(kept, 1.0)
        if factor == 1.0:
            return
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        if hasattr(self, "_tr_loss"):  # make the logged training loss the mean over kept tokens as well
            self._tr_loss += window["loss"] * (factor - 1.0)

    def _clip_grad_norm(self, model):
        self._rescale_to_kept_tokens(model)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:
            self._rescale_to_kept_tokens(model)
        return super()._get_grad_norm(model, grad_norm=grad_norm)
