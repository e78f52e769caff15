"""One forward's per-token outputs (log-prob, entropy, top-1, label mask): TRL's fused head, or full logits before it.

TRL >= 1.15 patches ``SFTTrainer``'s model with a fused LM head (``trl.trainer.utils.add_fused_lm_head``) that
returns these tensors without building ``[batch, seq, vocab]`` logits. Older TRL (1.12–1.14) has no such head
(its ``chunked_nll`` loss returns only sums), so :func:`token_outputs` computes the same fields from the model's own
logits: exact for every model (the model applies its logit scaling itself), at the memory cost of full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .entropy import HAS_FUSED_HEAD


@dataclass
class TokenOutputs:
    """The fields of TRL's ``FusedCausalLMOutput`` that masking and TRL's metrics read, each ``[batch, seq - 1]``
    (``[batch, seq]`` with pre-shifted ``shift_labels``); masked-out positions hold 0."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    is_top1: torch.Tensor
    label_mask: torch.Tensor
    aux_loss: Optional[torch.Tensor] = None


def token_outputs(model: nn.Module, inputs: dict) -> TokenOutputs:
    """Run ``model`` on a training batch (``labels`` or ``shift_labels`` among ``inputs``) and return per-token outputs.

    Uses the fused head ``SFTTrainer`` installed when TRL has one; otherwise one ordinary forward without labels and
    the fields from its logits (the log-prob keeps its gradient; entropy and top-1 are detached, as in TRL's head)."""
    if HAS_FUSED_HEAD:
        return model(**inputs, fused_lm_head=True)
    forward_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    outputs = model(**forward_inputs)
    logits = outputs.logits
    if inputs.get("shift_labels") is not None:
        labels = inputs["shift_labels"]
    else:
        labels, logits = inputs["labels"][:, 1:], logits[:, :-1]
    labels = labels.to(logits.device)
    mask = labels != -100
    picked = logits[mask].float()
    log_probs = logits.new_zeros(mask.shape, dtype=torch.float32)
    entropy = torch.zeros_like(log_probs)
    is_top1 = torch.zeros(mask.shape, dtype=torch.bool, device=logits.device)
    if picked.numel():
        target = labels[mask]
        log_p = torch.log_softmax(picked, -1)  # one softmax for the log-prob, entropy and top-1
        log_probs = log_probs.masked_scatter(mask, log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1))
        with torch.no_grad():
            entropy[mask] = torch.special.entr(log_p.exp()).sum(-1)  # entr(0) = 0: no NaN from 0 * log 0
            is_top1[mask] = log_p.argmax(-1) == target
    else:  # keep the loss connected to the model, as TRL's head does for an all-masked micro-batch
        log_probs = log_probs + 0.0 * logits.sum()
    return TokenOutputs(log_probs, entropy, is_top1, mask, getattr(outputs, "aux_loss", None))
