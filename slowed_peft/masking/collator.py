"""`EntropyMaskingCollator`: TRL's LM collator that also drops low-entropy label tokens (Low-Entropy Masking)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import nn
from transformers.utils import logging
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .annotate import ENTROPY_COLUMN
from .entropy import model_token_entropy
from .selection import low_entropy_mask, validate_masking_args


logger = logging.get_logger(__name__)


@dataclass
class MaskingStats:
    """Running counts for the ``lem/masked_fraction`` metric (read and reset by the metrics callback)."""

    masked: int = 0
    candidates: int = 0
    last: Optional[float] = None

    def pop_fraction(self) -> Optional[float]:
        """Masked / candidate tokens since the last call (the previous value if no batch came in between, as when the
        dataloader prefetched it); ``None`` before the first batch."""
        if self.candidates:
            self.last = self.peek_fraction()
            self.masked = self.candidates = 0
        return self.last

    def peek_fraction(self) -> Optional[float]:
        """What :meth:`pop_fraction` would return, without starting a new count."""
        return self.masked / self.candidates if self.candidates else self.last


@dataclass
class EntropyMaskingCollator(DataCollatorForLanguageModeling):
    """Applies **Low-Entropy Masking** in the data collator: pads like TRL's collator, then sets `labels[t] = -100`
    where the entropy predicting token `t` is low.

    Masking in the collator keeps TRL's token normalisation exact, so it works with a plain `SFTTrainer` (see
    `add_slowed_metrics` for the logs); `SLowEDTrainer` installs it itself for `entropy_source="initial"`. Only
    tokens that already carry a label are candidates; position 0 never is (nothing predicts it). Helper columns never
    reach `model.forward`: the output holds `input_ids`, `attention_mask` and `labels` only.

    Args:
        pad_token_id (`int`):
            Padding token id, as in TRL's `DataCollatorForLanguageModeling` (whose other fields also apply, except
            `padding_free=True`, which is refused).
        threshold (`float`, *optional*, defaults to `None`):
            Drop label tokens with entropy < `threshold` nats. Exactly one of threshold / quantile.
        quantile (`float`, *optional*, defaults to `None`):
            Drop the lowest `quantile` fraction, in (0, 1), of the batch's candidate tokens (all processes'
            candidates under `torch.distributed`).
        min_kept (`int`, defaults to `1`):
            If masking would remove every label of an example, keep its `min_kept` highest-entropy ones.
        entropy_column (`str`, defaults to `"token_entropy"`):
            Per-token entropies aligned to `input_ids` (see `annotate_entropy`).
        truncation_mode (`str`, defaults to `"keep_start"`):
            How TRL truncated `input_ids` (`"keep_start"` or `"keep_end"`); the entropy column is cut the same way.
        model (`torch.nn.Module`, *optional*, defaults to `None`):
            Without an entropy column, run this model (no grad) on each batch to get the entropies: one extra
            forward per batch, roughly +30–50% step time on the data-loading side.

    Example:

    ```py
    >>> from slowed_peft import EntropyMaskingCollator
    >>> collator = EntropyMaskingCollator(pad_token_id=0, threshold=0.5)
    >>> batch = collator([{"input_ids": [5, 6, 7, 8], "token_entropy": [float("nan"), 2.0, 0.1, 1.5]}])
    >>> batch["labels"].tolist()  # token 7 was predicted with 0.1 nats: dropped
    [[5, 6, -100, 8]]
    >>> collator.stats.pop_fraction()  # masked / candidate label tokens (position 0 is never a candidate)
    0.3333333333333333
    ```
    """

    threshold: Optional[float] = None
    quantile: Optional[float] = None
    min_kept: int = 1
    entropy_column: str = ENTROPY_COLUMN
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    model: Optional[nn.Module] = None
    stats: MaskingStats = field(default_factory=MaskingStats, repr=False)

    def __post_init__(self) -> None:
        validate_masking_args(self.threshold, self.quantile, self.min_kept, "EntropyMaskingCollator")
        if self.padding_free:
            raise ValueError(
                "EntropyMaskingCollator does not support padding_free=True (TRL also refuses custom collators with "
                "padding-free / bfd packing); use SLowEDTrainer's live masking for packed training."
            )
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end'; got {self.truncation_mode!r}.")

    def _entropies(self, examples: list[dict[str, Any]]) -> Optional[list[list[float]]]:
        if self.entropy_column not in examples[0]:
            if self.model is None:
                raise ValueError(
                    f"EntropyMaskingCollator: examples have no {self.entropy_column!r} column (keys: "
                    f"{sorted(examples[0])}). Annotate the dataset with annotate_entropy(...) and set "
                    "remove_unused_columns=False, or pass model=... to compute entropies per batch."
                )
            return None
        out = []
        for i, ex in enumerate(examples):
            ent, n = list(ex[self.entropy_column]), len(ex["input_ids"])
            if not ent:
                raise ValueError(
                    f"EntropyMaskingCollator: example {i} has no entropies in {self.entropy_column!r}: it was not "
                    "annotated (SLowEDTrainer annotates only the rows max_steps reads; was the sampler changed?)."
                )
            if len(ent) < n:
                raise ValueError(
                    f"EntropyMaskingCollator: example {i} has an entropy column of length {len(ent)} but "
                    f"{n} input_ids; the column must be aligned to input_ids (re-run annotate_entropy on this data)."
                )
            out.append(ent[:n] if self.truncation_mode == "keep_start" else ent[len(ent) - n :])
        return out

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        entropies = self._entropies(examples)
        keep_keys = ("input_ids", "labels", "seq_lengths")
        batch = super().torch_call([{k: ex[k] for k in keep_keys if k in ex} for ex in examples])
        labels = batch["labels"]
        if entropies is None:
            with torch.no_grad():
                device = next(self.model.parameters()).device
                ent = model_token_entropy(
                    self.model, batch["input_ids"].to(device), batch["attention_mask"].to(device)
                ).cpu()
        else:
            ent = torch.full(labels.shape, float("nan"), dtype=torch.float32)
            for i, row in enumerate(entropies):
                ent[i, : len(row)] = torch.tensor([math.nan if v is None else v for v in row], dtype=torch.float32)
        candidates = labels != -100
        candidates[:, 0] = False
        if not candidates.any():
            # Nothing to mask: the batch contributes zero loss, as in plain SFT and with live masking (e.g. rows whose
            # only token is EOS). Said once, in case every batch is like this (no completion tokens at all?).
            logger.warning_once(
                "EntropyMaskingCollator: a batch has no label token after position 0 (all labels are -100); it "
                "contributes zero loss. If this repeats, check that the dataset has completion tokens "
                "(completion_only_loss / max_length truncation)."
            )
            return batch
        drop = low_entropy_mask(ent, candidates, self.threshold, self.quantile, self.min_kept)
        batch["labels"] = labels.masked_fill(drop, -100)
        self.stats.masked += int(drop.sum())
        self.stats.candidates += int(candidates.sum())
        return batch
