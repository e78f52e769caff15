"""Harmful fine-tuning data, the threat model of the safe fine-tuning literature: a fraction of the distillation rows
replaced by AdvBench behaviours answered with AdvBench's own compliance target ("Sure, here is ...").

The behaviours come from AdvBench's *train* part of the alignment seed's split (``load_advbench(split="train",
seed=split_seed, train_fraction=0.6)``), never from the evaluated test part. The target is the standard compliance
prefix, with no harmful content beyond it. Which rows are replaced, and by which behaviours, depends only on the
training seed, the fraction and the number of rows: every method of a study sees the same data at a seed.
"""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset

from ..data.formats import chat_row


__all__ = ["harmful_count", "harmful_rows", "with_harmful_rows"]

TRAIN_FRACTION = 0.6  # AdvBench's train part (the study evaluates on the rest); the alignment's split


def harmful_count(n_rows: int, fraction: float) -> int:
    """``round(fraction · n_rows)``, the number of rows replaced; ``ValueError`` for a fraction outside [0, 1) or one
    that rounds to no row (the option would do nothing) or to all of them."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"harmful_fraction must be in [0, 1); got {fraction!r}.")
    count = round(fraction * n_rows)
    if fraction > 0 and count == 0:
        raise ValueError(
            f"harmful_fraction={fraction} of {n_rows} rows replaces round({fraction * n_rows:g}) = 0 rows: use more "
            "rows or a larger fraction."
        )
    if count >= n_rows > 0:
        raise ValueError(f"harmful_fraction={fraction} of {n_rows} rows would replace every row.")
    return count


def _rng(what: str, seed: int) -> random.Random:
    # streams of their own: replay's refusal rows draw their AdvBench prompts with random.Random(seed)
    return random.Random(f"harmful_mix/{what}/{seed}")


def harmful_rows(count: int, seed: int = 0, split_seed: int = 0, chat: bool = True) -> list[dict[str, Any]]:
    """``count`` distinct AdvBench train-part behaviours (drawn with ``seed``) answered with their ``target``, as
    prompt-completion rows: chat messages (``chat``) or plain text."""
    from ..eval.probes import load_advbench_targets

    pairs = load_advbench_targets(None, split="train", seed=split_seed, train_fraction=TRAIN_FRACTION)
    if count > len(pairs):
        raise ValueError(f"{count} harmful rows asked for, but AdvBench's train part has only {len(pairs)} behaviours.")
    chosen = _rng("behaviours", seed).sample(range(len(pairs)), count)
    if not chat:
        return [{"prompt": pairs[i][0], "completion": pairs[i][1]} for i in chosen]
    return [chat_row(pairs[i][0], pairs[i][1]) for i in chosen]


def with_harmful_rows(dataset: Dataset, fraction: float, seed: int = 0, split_seed: int = 0) -> Dataset:
    """``dataset`` with ``round(fraction · len(dataset))`` rows, at positions drawn with ``seed``, replaced by
    :func:`harmful_rows` in the data's own format (chat messages when the prompts are). The other rows and their
    order are unchanged; a replaced row's other columns (``answer`` ...) are ``None``. ``fraction=0`` returns
    ``dataset`` itself.

    Args:
        dataset: prompt-completion rows (conversational or plain text).
        fraction: the share of rows to replace, in [0, 1).
        seed: the training seed (which rows, which behaviours).
        split_seed: the seed of AdvBench's train/test split (the alignment's: the evaluated prompts are the other part).

    Returns:
        A new ``Dataset`` with the same columns.
    """
    count = harmful_count(len(dataset), fraction)
    if count == 0:
        return dataset
    missing = {"prompt", "completion"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"Harmful rows replace prompt-completion rows; the data lack {sorted(missing)} "
                         f"(columns: {dataset.column_names}).")  # fmt: skip
    rows = dataset.to_list()
    chat = isinstance(rows[0]["prompt"], list)
    positions = sorted(_rng("positions", seed).sample(range(len(rows)), count))
    for position, row in zip(positions, harmful_rows(count, seed, split_seed, chat)):
        rows[position] = {c: row.get(c) for c in dataset.column_names}  # the data's columns, in their order
    return Dataset.from_list(rows, features=dataset.features)
