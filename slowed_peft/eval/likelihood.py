"""Multiple-choice accuracy by log-likelihood (lm-evaluation-harness's ``arc_challenge`` ``acc``): no generation, so a
capability that distillation should leave alone can be checked at every checkpoint in seconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..data.readers import read_arc
from .generation import eval_mode, model_device, pad_token_id


def arc_loglik_items(
    split: str = "test", data_dir: Union[str, Path, None] = None, limit: Optional[int] = None
) -> list[tuple[str, list[str], int]]:
    """ARC-Challenge as lm-eval scores it: context ``"Question: …\\nAnswer:"``, continuations ``" <choice text>"``,
    and the index of the gold choice."""
    items = []
    for row in read_arc(split, data_dir, limit):
        choices = row["question"]["choices"]
        labels = [str(c["label"]) for c in choices]
        gold = str(row["answerKey"])
        if gold not in labels:
            raise ValueError(f"ARC row {row.get('id')!r}: answerKey {gold!r} is not one of its labels {labels}.")
        context = f"Question: {row['question']['stem'].strip()}\nAnswer:"
        items.append((context, [f" {c['text'].strip()}" for c in choices], labels.index(gold)))
    return items


@torch.no_grad()
def choice_loglik_accuracy(
    model, tokenizer, items: Sequence[tuple[str, list[str], int]], batch_size: int = 32
) -> dict[str, float]:
    """``{"accuracy", "n", "correct", "hits"}`` (``hits``: per item, for paired intervals): the share of items whose gold continuation has the highest summed
    log-probability given the context (right-padded batches of context + continuation, one forward each)."""
    if not items:
        raise ValueError("choice_loglik_accuracy: no items to score.")
    pairs, owners = [], []
    for i, (context, continuations, _) in enumerate(items):
        ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
        for cont in continuations:
            pairs.append((ctx, tokenizer(cont, add_special_tokens=False)["input_ids"]))
            owners.append(i)
    scores = continuation_logprobs(model, pad_token_id(tokenizer), pairs, batch_size)
    best: dict[int, tuple[float, int]] = {}
    counters: dict[int, int] = {}
    for owner, score in zip(owners, scores):
        j = counters.get(owner, 0)
        counters[owner] = j + 1
        if owner not in best or score > best[owner][0]:
            best[owner] = (score, j)
    hits = [best[i][1] == gold for i, (_, _, gold) in enumerate(items)]
    return {"accuracy": sum(hits) / len(items), "n": len(items), "correct": sum(hits), "hits": hits}


@torch.no_grad()
def continuation_logprobs(
    model, pad_id: int, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32
) -> list[float]:
    """Summed log-probability of each ``(context ids, continuation ids)`` pair's continuation given its context, in
    order (right-padded batches, one forward each).

    The log-softmax runs over each continuation's own positions only, never over the whole ``[batch, width, vocab]``
    logits: at Gemma 3's 262,144-token vocabulary that float32 copy is 3 GB for 32 ARC pairs of ~90 tokens. Each row
    is normalised exactly as before, so the scores are the same numbers."""
    device = model_device(model)
    scores: list[float] = []
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            seqs = [c + k for c, k in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, (c, k) in enumerate(chunk):
                positions = torch.arange(len(c) - 1, len(c) + len(k) - 1, device=device)
                logp = F.log_softmax(logits[row, positions].float(), dim=-1)  # [len(k), vocab]
                targets = torch.tensor(k, device=device)
                scores.append(float(logp[torch.arange(len(k), device=device), targets].sum()))
    return scores
