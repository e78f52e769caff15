"""`annotate_entropy`: add a ``token_entropy`` column (the initial model's entropies) aligned to ``input_ids``."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Optional

import torch
from datasets import Dataset, Features, Sequence, Value
from torch import nn
from transformers.utils import logging

from .entropy import model_token_entropy


logger = logging.get_logger(__name__)

ENTROPY_COLUMN = "token_entropy"
_FORMAT_VERSION = "slowed-entropy-v1"


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes, bytes): same weights ⇒ same fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.device.type == "meta":
            continue
        h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ tokenization
def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_like_trl(example: dict, tokenizer) -> dict:
    """Tokenize one raw row the way TRL's ``SFTTrainer`` does (prompt-completion, text or messages).

    Returns ``input_ids`` (+ ``completion_mask`` for prompt-completion rows). A dataset carrying ``input_ids`` is
    used by ``SFTTrainer`` as is, so the entropy column stays aligned with what the trainer feeds the model.
    """
    eos = tokenizer.eos_token or ""
    if "prompt" in example and "completion" in example:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):  # conversational
            prompt_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
            full_ids = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True))
        else:
            if eos and not completion.endswith(eos):
                completion = completion + eos
            prompt_ids = _ids(tokenizer(prompt))
            full_ids = _ids(tokenizer(prompt + completion))
        n = _common_prefix(prompt_ids, full_ids)
        return {"input_ids": full_ids, "completion_mask": [0] * n + [1] * (len(full_ids) - n)}
    if "messages" in example:
        return {"input_ids": _ids(tokenizer.apply_chat_template(example["messages"], tokenize=True))}
    if "text" in example:
        text = example["text"]
        return {"input_ids": _ids(tokenizer(text if not eos or text.endswith(eos) else text + eos))}
    raise ValueError(
        "annotate_entropy: cannot tokenize a row with columns "
        f"{sorted(example)}; expected 'input_ids' (already tokenized), 'prompt'+'completion', 'messages' or 'text'."
    )


# ------------------------------------------------------------------------------------------------ annotation
def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def annotate_entropy(
    dataset: Dataset,
    model: nn.Module,
    tokenizer=None,
    batch_size: int = 8,
    column: str = ENTROPY_COLUMN,
    cache_dir: Optional[str] = None,
    desc: str = "Annotating token entropy",
) -> Dataset:
    """Add ``column``: for each row, the entropy (nats) of ``model``'s distribution that predicts each input id.

    ``dataset`` is either tokenized (``input_ids``, e.g. prepared by TRL) or raw (prompt-completion, conversational,
    ``text`` or ``messages``) together with ``tokenizer``; raw rows are tokenized like ``SFTTrainer`` does and keep
    their new ``input_ids`` / ``completion_mask`` columns. Batches are right-padded; the LM head runs through TRL's
    fused, chunked kernel, so full ``[batch, seq, vocab]`` logits are never built. The result is cached by
    ``datasets`` under a fingerprint of the data *and the model weights*: the same model on the same data is never
    recomputed (``cache_dir`` enables this for in-memory datasets too).
    """
    if len(dataset) == 0:
        raise ValueError("annotate_entropy: the dataset is empty.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"annotate_entropy: batch_size must be an integer >= 1; got batch_size={batch_size!r}.")
    if "input_ids" not in dataset.column_names:
        if tokenizer is None:
            raise ValueError(
                "annotate_entropy: the dataset has no 'input_ids' column (columns: "
                f"{dataset.column_names}); pass tokenizer=... to tokenize it like SFTTrainer does."
            )
        dataset = dataset.map(tokenize_like_trl, fn_kwargs={"tokenizer": tokenizer}, desc="Tokenizing")
    pad_id = getattr(tokenizer, "pad_token_id", None) or getattr(getattr(model, "config", None), "pad_token_id", 0) or 0

    cached = bool(dataset.cache_files) or cache_dir is not None
    # Hashing every weight costs about a second per GB; it is only worth it when the result can come from a cache.
    model_key = weights_fingerprint(model) if cached else uuid.uuid4().hex
    fingerprint = hashlib.blake2b(
        f"{dataset._fingerprint}|{model_key}|{column}|{_FORMAT_VERSION}".encode(), digest_size=16
    ).hexdigest()
    kwargs: dict[str, Any] = {}
    if not dataset.cache_files and cache_dir is not None:  # in-memory data: cache in cache_dir
        os.makedirs(cache_dir, exist_ok=True)
        kwargs["cache_file_name"] = os.path.join(cache_dir, f"entropy-{fingerprint}.arrow")
    device = next(model.parameters()).device
    was_training = model.training

    def annotate_batch(batch: dict) -> dict:
        rows = batch["input_ids"]
        if any(len(r) == 0 for r in rows):
            raise ValueError("annotate_entropy: a row has empty input_ids.")
        ids, mask = _pad(rows, pad_id)
        ent = model_token_entropy(model, ids.to(device), mask.to(device)).cpu()
        return {column: [ent[i, : len(r)].tolist() for i, r in enumerate(rows)]}

    features = Features({**dataset.features, column: Sequence(Value("float32"))})
    model.eval()
    try:
        return dataset.map(
            annotate_batch,
            batched=True,
            batch_size=batch_size,
            features=features,
            new_fingerprint=fingerprint,
            desc=desc,
            **kwargs,
        )
    finally:
        model.train(was_training)
