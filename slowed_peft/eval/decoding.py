"""Greedy decoding that drops finished rows (and their KV cache) from the batch as it goes.

``model.generate`` carries every row until the longest one ends. A decode step of a small model on CPU costs
roughly in proportion to the rows it carries, and evaluation answers vary a lot in length (a refusal ends after a
dozen tokens, a compliance runs to the limit; CoT answers range from 15 to 128+ tokens), so most steps are spent
on rows that are done. :func:`greedy_decode_pruned` returns exactly what greedy ``generate`` returns (checked by the
test suite) and is used by :func:`~slowed_peft.eval.generation.generate_ids` whenever
:func:`supports_pruned_decoding` says the model and its generation config allow it; otherwise ``generate`` runs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig


__all__ = [
    "common_prefix_length",
    "forward_parameters",
    "greedy_decode_pruned",
    "prefix_pad",
    "supports_pruned_decoding",
]

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate forward

# Generation-config fields that would add a logits processor to greedy ``generate``, with their neutral values.
# A model whose own generation config sets any of them (e.g. a repetition penalty) is decoded by ``generate``.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "stop_strings": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "num_beams": (None, 1),
    "do_sample": (None, False),
    "assistant_model": (None,),
    "prompt_lookup_num_tokens": (None,),
}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_parameters(model) -> frozenset[str]:
    """Names the forward of ``model`` (of its base model, for a ``PeftModel``) accepts; empty if unknown."""
    forward = getattr(_base(model), "forward", None)
    try:
        return frozenset(inspect.signature(forward).parameters) if forward is not None else frozenset()
    except (TypeError, ValueError):
        return frozenset()


def supports_pruned_decoding(model, generation_config: GenerationConfig) -> bool:
    """Whether :func:`greedy_decode_pruned` reproduces ``model.generate(generation_config=...)`` for ``model``.

    Needs a decoder-only model whose forward takes ``cache``, ``position_ids`` and ``attention_mask``, and plain
    greedy search after the model's own generation defaults are merged in (no penalties, forced or suppressed tokens).
    """
    base = _base(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if not {"cache", "position_ids", "attention_mask"} <= forward_parameters(model):
        return False
    merged = copy.deepcopy(generation_config)
    own = getattr(base, "generation_config", None)
    if isinstance(own, GenerationConfig):
        merged.update(**own.to_dict(), defaults_only=True)
    return all(getattr(merged, key, None) in neutral for key, neutral in _NEUTRAL.items())


def common_prefix_length(batch: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by every sequence of ``batch``, leaving each at least one token after it."""
    if len(batch) < 2:
        return 0
    limit = min(len(ids) for ids in batch) - 1
    first = batch[0]
    n = 0
    while n < limit and all(ids[n] == first[n] for ids in batch):
        n += 1
    return n


def prefix_pad(batch: Sequence[Sequence[int]], pad_id: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` laid out as ``shared prefix | padding | own suffix`` per row.

    Padding sits between the first ``prefix`` tokens (identical in every row) and the rest, so the prefix can be
    prefilled once for the whole batch (:func:`greedy_decode_pruned` with ``shared_prefix=prefix``).
    """
    width = prefix + max(len(ids) - prefix for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, :prefix] = torch.tensor(ids[:prefix], dtype=torch.long)
        mask[i, :prefix] = 1
        if len(ids) > prefix:
            input_ids[i, width - len(ids) + prefix :] = torch.tensor(ids[prefix:], dtype=torch.long)
            mask[i, width - len(ids) + prefix :] = 1
    return input_ids, mask


def _prefill(model, input_ids, attention_mask, position_ids, cache, shared_prefix: int, keep_last: dict):
    """Prefill the cache; a ``shared_prefix`` is run once with batch 1 and its cache repeated for every row."""
    rows = input_ids.shape[0]
    if shared_prefix:
        if not bool((input_ids[:, :shared_prefix] == input_ids[:1, :shared_prefix]).all()) or not bool(
            attention_mask[:, :shared_prefix].all()
        ):
            raise ValueError(
                f"shared_prefix={shared_prefix}: the first {shared_prefix} tokens differ between rows "
                "or are padding; lay the batch out with prefix_pad."
            )
        if shared_prefix >= input_ids.shape[1]:
            raise ValueError(
                f"shared_prefix={shared_prefix} leaves no suffix in a batch of width {input_ids.shape[1]}."
            )
        head = slice(0, shared_prefix)
        model(
            input_ids=input_ids[:1, head],
            attention_mask=attention_mask[:1, head],
            position_ids=position_ids[:1, head],
            cache=cache,
            use_cache=True,
            **keep_last,
        )
        cache.batch_repeat_interleave(rows)
    return model(
        input_ids=input_ids[:, shared_prefix:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, shared_prefix:],
        cache=cache,
        use_cache=True,
        **keep_last,
    ).logits


@torch.no_grad()
def greedy_decode_pruned(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: list[int],
    shared_prefix: int = 0,
) -> list[list[int]]:
    """Greedy continuations of left-padded ``input_ids`` (each cut after its first EOS, which is kept).

    Rows leave the batch, and the KV cache, as soon as they emit an EOS token, so later steps only compute the rows
    still running. Position ids follow ``generate``'s rule for left padding (cumulative attention mask), so padding
    may also sit in the middle: with ``shared_prefix=n`` (a batch laid out by :func:`prefix_pad`) the first ``n``
    tokens, the same in every row (a system prompt, few-shot examples), are prefilled once instead of once per row.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if shared_prefix < 0:
        raise ValueError(f"shared_prefix must be >= 0, got {shared_prefix}.")
    base = _base(model)
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(model) else {}
    rows = input_ids.shape[0]
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache = DynamicCache(config=base.config)
    logits = _prefill(model, input_ids, attention_mask, position_ids, cache, shared_prefix, keep_last)
    eos = torch.tensor(eos_token_ids, dtype=torch.long, device=input_ids.device)
    alive = torch.arange(rows, device=input_ids.device)
    last_position = position_ids[:, -1:]
    results: list[list[int]] = [[] for _ in range(rows)]
    for step in range(max_new_tokens):
        next_tokens = logits[:, -1].float().argmax(-1)
        for row, token in zip(alive.tolist(), next_tokens.tolist()):
            results[row].append(token)
        done = torch.isin(next_tokens, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, next_tokens = alive[keep], next_tokens[keep]
            attention_mask, last_position = attention_mask[keep], last_position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        last_position = last_position + 1
        logits = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=last_position,
            cache=cache,
            use_cache=True,
        ).logits
    return results
