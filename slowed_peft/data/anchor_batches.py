"""Anchor prompts as tokenized batches: the thin layer between plain user requests and the tuner's
:func:`~slowed_peft.fit_anchor`, which (like PEFT's EVA and CorDA) takes batches of ``input_ids`` /
``attention_mask`` and never strings, tokenizers or chat templates.

```py
from slowed_peft import anchor_dataloader, fit_anchor

report = fit_anchor(peft_model, anchor_dataloader(tokenizer, prompts))
```
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from .formats import format_prompts


def format_anchor_prompts(
    tokenizer: Any, prompts: Sequence[str], chat_template: Optional[bool] = None
) -> list[list[int]]:
    """Token ids of each prompt as one user turn, chat-formatted with a generation prompt when the tokenizer has a
    chat template.

    Args:
        tokenizer: A transformers tokenizer.
        prompts: Non-empty user requests.
        chat_template: Force the chat template on (``True``) or off (``False``); default: on when the tokenizer has one.

    Returns:
        One list of token ids per prompt, uncut.

    Raises:
        TypeError: ``prompts`` is a single string or not a sequence of strings.
        ValueError: No prompts, or an empty prompt (its index is named).
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"anchor prompts must be a list of strings; got {type(prompts).__name__}.")
    if len(prompts) == 0:
        raise ValueError("No anchor prompts given (need a non-empty list of strings).")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"Anchor prompt(s) at index {bad[:5]} are empty or not strings.")
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    ids = []
    for prompt in prompts:
        if use_template:
            (text,) = format_prompts(tokenizer, [prompt])
            ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            ids.append(list(tokenizer(prompt)["input_ids"]))
    return ids


def token_dataloader(
    sequences: Sequence[Sequence[int]], pad_token_id: int = 0, batch_size: int = 16, max_length: Optional[int] = None
) -> DataLoader:
    """Right-padded batches (``input_ids``, ``attention_mask``) of token sequences, in order.

    Args:
        sequences: Token ids per sequence (each non-empty).
        pad_token_id: Id written into padding positions (masked out, so any valid id works).
        batch_size: Sequences per batch.
        max_length: Cut longer sequences to this many tokens, warning with how many were cut (``None``: no cut).

    Returns:
        A ``torch.utils.data.DataLoader`` yielding dicts of ``[batch, width]`` int64 tensors.

    Raises:
        ValueError: ``batch_size`` or ``max_length`` below 1, no sequences, or an empty sequence.
    """
    if batch_size < 1 or (max_length is not None and max_length < 1):
        raise ValueError(
            f"batch_size and max_length must be >= 1; got batch_size={batch_size}, max_length={max_length}."
        )
    if len(sequences) == 0:
        raise ValueError("No sequences to batch.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError(f"Sequence {next(i for i, s in enumerate(sequences) if len(s) == 0)} is empty.")
    if max_length is not None:
        cut = sum(len(s) > max_length for s in sequences)
        if cut:
            longest = max(len(s) for s in sequences)
            warnings.warn(
                f"{cut} of {len(sequences)} anchor sequence(s) are longer than max_length={max_length} tokens "
                f"(longest {longest}) and were cut; their later tokens are not protected. Raise max_length to keep "
                "them whole.",
                stacklevel=3,
            )
        sequences = [list(s[:max_length]) for s in sequences]

    def collate(chunk: list[Sequence[int]]) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in chunk)
        return {
            "input_ids": torch.tensor([list(s) + [pad_token_id] * (width - len(s)) for s in chunk], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], dtype=torch.long),
        }

    return DataLoader(list(sequences), batch_size=batch_size, shuffle=False, collate_fn=collate)


DEFAULT_ANCHOR_PROMPTS = 80


def default_anchor_prompts(limit: int = DEFAULT_ANCHOR_PROMPTS) -> list[str]:
    """The package's generic chat requests (the train part of :func:`~slowed_peft.data.alignment.benign_instructions`,
    the ``benign`` anchor source of ``slowed-sft``; never the held-out ones the studies evaluate), first ``limit``."""
    from .alignment import benign_instructions

    return benign_instructions(seed=0)[0][:limit]


def anchor_dataloader(
    tokenizer: Any,
    prompts: Optional[Sequence[str]] = None,
    batch_size: int = 16,
    max_length: int = 1024,
    chat_template: Optional[bool] = None,
) -> DataLoader:
    """Batches of anchor prompts for :func:`~slowed_peft.fit_anchor` / :func:`~slowed_peft.get_anchor_state_dict`.

    Each prompt becomes one user turn, chat-formatted with a generation prompt when the tokenizer has a template (what
    the model sees before it answers), tokenized, cut to ``max_length`` (with a warning naming how many were cut) and
    right-padded; the ``attention_mask`` says which tokens count. For ``anchor_tokens="prompt+response"`` use
    ``slowed_peft.scripts.anchoring.response_dataloader``, which appends the initial model's own greedy answers.

    Args:
        tokenizer: A transformers tokenizer (its ``pad_token_id`` pads, else 0; padding is masked out).
        prompts: Non-empty user requests; default: 80 generic requests shipped with the package
            (:func:`default_anchor_prompts`: no safety data needed).
        batch_size: Prompts per batch (memory of one forward pass).
        max_length: Longest sequence kept, in tokens.
        chat_template: Force the chat template on or off; default: on when the tokenizer has one.

    Returns:
        A ``torch.utils.data.DataLoader`` of dicts with ``input_ids`` and ``attention_mask`` (``[batch, width]``).

    Raises:
        TypeError: ``prompts`` is a single string or not a sequence of strings.
        ValueError: No prompts, an empty prompt, or ``batch_size`` / ``max_length`` below 1.
    """
    ids = format_anchor_prompts(tokenizer, default_anchor_prompts() if prompts is None else prompts, chat_template)
    pad = getattr(tokenizer, "pad_token_id", None)
    return token_dataloader(ids, pad if pad is not None else 0, batch_size, max_length)
