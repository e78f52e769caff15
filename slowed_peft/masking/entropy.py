"""Per-token entropy in nats: a chunked function on logits, and the model's entropies without full logits.

Alignment convention used everywhere: ``entropy[t]`` is the entropy of the distribution that *predicts*
``input_ids[t]`` (computed from the logits at position ``t - 1``); position 0 has no prediction and holds NaN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
import trl
import trl.trainer.utils as trl_utils
from torch import nn


# TRL's fused LM head with per-token entropy (TRL >= 1.15); without it, entropies come from full logits.
HAS_FUSED_HEAD = hasattr(trl_utils, "add_fused_lm_head")

# Elements per float32 working chunk (64 MiB): bounds memory whatever the batch, sequence or vocabulary size.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def token_entropy(logits: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Entropy (nats, float32) of ``softmax(logits)`` over the last dim, for any leading shape.

    Rows are processed ``chunk_size`` at a time (default: as many as fit 2^24 float32 elements), so a float32 copy of
    the whole ``[batch, seq, vocab]`` tensor is never built. bf16/fp16 inputs are upcast per chunk; ``-inf`` logits
    (banned tokens) contribute 0. Infinite logits take softmax's limit: a row with ``k`` logits at ``+inf`` is the
    uniform distribution over those ``k`` tokens (every finite logit gets probability 0), so its entropy is
    ``log k`` (0, a one-hot distribution, for a single ``+inf``) rather than the NaN of ``inf - inf``. A row of all
    ``-inf``, or one with a NaN logit, has no distribution and gives NaN.
    """
    if logits.dim() == 0:
        raise ValueError("token_entropy expects logits with a vocabulary dimension; got a scalar.")
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    rows = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
    if rows < 1:
        raise ValueError(f"token_entropy: chunk_size must be >= 1; got chunk_size={chunk_size!r}.")
    parts = []
    for start in range(0, flat.shape[0], rows):
        z = flat[start : start + rows].float()
        top = torch.isposinf(z)
        if top.any():  # the limit of softmax: uniform over the +inf logits (a new tensor: never edit the input)
            hit = top.any(-1, keepdim=True)
            z = torch.where(hit, torch.where(top, 0.0, float("-inf")), z)
        log_p = torch.log_softmax(z, dim=-1)
        p = log_p.exp()
        parts.append(-(p * log_p.masked_fill(p == 0, 0.0)).sum(-1))
    out = torch.cat(parts).clamp_min(0.0) + 0.0 if parts else flat.new_empty(0, dtype=torch.float32)
    return out.view(logits.shape[:-1])


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (the object TRL's fused head patches)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def fused_entropy_head(model: nn.Module) -> Iterator[nn.Module]:
    """Give ``model`` TRL's fused LM head (chunked log-prob + entropy, no full logits) for the ``with`` block.

    The model's forward is restored afterwards, including a fused head ``SFTTrainer`` installed before (TRL's head
    is patched onto the instance, so we save and put back whatever instance-level ``forward`` was there).
    """
    if not HAS_FUSED_HEAD:
        raise RuntimeError(
            f"fused_entropy_head needs TRL >= 1.15 (trl.trainer.utils.add_fused_lm_head); installed: TRL "
            f"{trl.__version__}. model_token_entropy falls back to the model's full logits."
        )
    inner = _unwrap(model)
    previous = inner.__dict__.get("forward")
    trl_utils.add_fused_lm_head(inner, outputs=("log_probs", "entropy"))
    try:
        yield model
    finally:
        if previous is None:
            inner.__dict__.pop("forward", None)
        else:
            inner.forward = previous


_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _plain_lm_head(inner: nn.Module) -> bool:
    """True when logits are exactly ``lm_head(hidden)`` (no softcapping / logit scaling in the config)."""
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    return all(getattr(cfg, a, None) in (None, 1, 1.0) for a in _SCALING_ATTRS)


@torch.no_grad()
def head_entropy(hidden: torch.Tensor, lm_head: nn.Module, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Entropy of ``softmax(lm_head(hidden))`` for ``hidden`` of shape ``[N, H]``, projecting ``chunk_size`` rows at a
    time into one reused buffer (one matmul, then in-place max-shift, exp and a batched dot per chunk). Logits that
    overflow to ``+inf`` follow :func:`token_entropy`'s rule (uniform over the ``+inf`` tokens)."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    vocab, n = weight.shape[0], hidden.shape[0]
    rows = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // vocab)
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    logits = torch.empty(min(rows, n), vocab, dtype=torch.float32, device=hidden.device)
    exps = torch.empty_like(logits)
    w = weight.float().T if weight.dtype != torch.float32 else weight.T
    for start in range(0, n, rows):
        k = min(rows, n - start)
        z, e = logits[:k], exps[:k]
        torch.mm(hidden[start : start + k].float(), w, out=z)
        if bias is not None:
            z.add_(bias.float())
        z.sub_(z.amax(-1, keepdim=True))
        torch.exp(z, out=e)
        total = e.sum(-1)
        dot = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)
        values = total.log() - dot / total
        bad = torch.isnan(values)
        if bad.any():  # rare: a logit overflowed to +inf (inf - inf above); redo those rows with its limit rule
            rows_bad = hidden[start : start + k][bad].float() @ w
            values[bad] = token_entropy(rows_bad + bias.float() if bias is not None else rows_bad)
        out[start : start + k] = values
    return out.clamp_min(0.0)


@torch.no_grad()
def model_token_entropy(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``[batch, seq]`` entropies aligned to ``input_ids`` (NaN at position 0 and on padding), no full logits.

    Runs the backbone once and projects only the real (non-padding) positions through the LM head in chunks; models
    whose logits are scaled or soft-capped go through TRL's fused head instead, which knows those configs (on TRL
    < 1.15, which has none, through the model's own full logits).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    inner = _unwrap(model)
    ent = torch.full(input_ids.shape, float("nan"), dtype=torch.float32, device=input_ids.device)
    if not _plain_lm_head(inner):  # scaled / soft-capped logits: TRL's fused head, or the model's own full logits
        if not HAS_FUSED_HEAD:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            valid = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
            ent[:, 1:][valid] = token_entropy(out.logits[:, :-1][valid]).to(ent.device)
            return ent
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        with fused_entropy_head(model):
            out = model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False
            )
        ent[:, 1:] = out.entropy.float().to(ent.device)
        ent[:, 1:][~out.label_mask.to(ent.device)] = float("nan")
        return ent
    hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    valid = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
    lm_head = inner.get_output_embeddings()
    values = head_entropy(hidden[:, :-1][valid].to(lm_head.weight.device), lm_head)
    ent[:, 1:][valid] = values.to(ent.device)
    return ent
