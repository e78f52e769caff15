"""Initial-model annotation for a trainer: annotate the prepared datasets, only the rows ``max_steps`` will read.

``entropy_source="initial"`` needs entropies only for the training rows the run actually reads. When ``max_steps``
stops inside the first epoch, those rows are known before training from the trainer's own train dataloader (same
sampler, seed and sharding as ``train()``); the other rows get an empty entropy list, which
``EntropyMaskingCollator`` refuses with a clear error should they ever be read.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Union

import torch
from accelerate.data_loader import SeedableRandomSampler
from datasets import Dataset, Sequence, Value
from torch import nn
from torch.utils.data import SequentialSampler
from transformers.utils import logging

from .annotate import ENTROPY_COLUMN, annotate_entropy


logger = logging.get_logger(__name__)

PreparedData = Union[None, Dataset, dict[str, Dataset]]


def annotate_prepared(dataset: PreparedData, model: nn.Module, batch_size: int) -> PreparedData:
    """``annotate_entropy`` on a dataset TRL prepared (or each of a dict of them); ``None`` stays ``None``."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {k: annotate_prepared(v, model, batch_size) for k, v in dataset.items()}
    if not isinstance(dataset, Dataset):
        raise ValueError("entropy_source='initial' needs a map-style datasets.Dataset (not an IterableDataset).")
    return annotate_entropy(dataset, model, batch_size=batch_size, desc="Annotating initial-model entropy")


def rows_read(trainer) -> Optional[list[int]]:
    """Indices of the training rows this process reads when ``max_steps`` stops within epoch 0, else None.

    The order comes from the trainer's own train dataloader, iterated over batch indices only, with the global RNG
    state restored afterwards and the loader unregistered from accelerate (``train()`` builds its own).
    """
    args, dataset = trainer.args, trainer.train_dataset
    if args.max_steps is None or args.max_steps <= 0 or not isinstance(dataset, Dataset):
        return None
    with torch.random.fork_rng(devices=[]):
        loader = trainer.get_train_dataloader()
        try:
            return _first_batches_rows(loader, args)
        finally:
            registered = getattr(trainer.accelerator, "_dataloaders", None)
            if isinstance(registered, list) and loader in registered:  # not a loader train() will use
                registered.remove(loader)


def _first_batches_rows(loader, args) -> Optional[list[int]]:
    batches = getattr(loader, "batch_sampler", None)
    sampler = getattr(getattr(batches, "batch_sampler", batches), "sampler", None)
    if not isinstance(sampler, (SeedableRandomSampler, SequentialSampler)):
        return None  # e.g. length-grouped: its order depends on the global RNG at train() time
    for obj in (loader, batches, getattr(batches, "batch_sampler", None), sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(0)
    # accelerate's loader fetches one batch ahead; worker processes prefetch more
    workers = args.dataloader_num_workers
    lookahead = 1 + (workers * (args.dataloader_prefetch_factor or 2) if workers > 0 else 0)
    needed = args.max_steps * args.gradient_accumulation_steps + lookahead
    if needed >= len(batches):
        return None  # the run reads the whole first epoch (or more)
    return sorted({int(i) for _, batch in zip(range(needed), iter(batches)) for i in batch})


def annotate_rows(dataset: Dataset, rows: Optional[list[int]], model: nn.Module, batch_size: int) -> Dataset:
    """Annotate only ``rows`` of ``dataset`` (all rows if ``rows`` is None); the others get an empty entropy list."""
    if rows is None or len(rows) >= len(dataset):
        return annotate_prepared(dataset, model, batch_size)
    logger.info(f"entropy_source='initial': annotating the {len(rows)} of {len(dataset)} training rows the run reads.")
    annotated = annotate_prepared(dataset.select(rows), model, batch_size)
    column: list[list[float]] = [[] for _ in range(len(dataset))]
    for index, values in zip(rows, annotated[ENTROPY_COLUMN]):
        column[index] = values
    fingerprint = hashlib.blake2b(f"{dataset._fingerprint}|{annotated._fingerprint}".encode(), digest_size=16)
    return dataset.add_column(
        ENTROPY_COLUMN, column, new_fingerprint=fingerprint.hexdigest(), feature=Sequence(Value("float32"))
    )
