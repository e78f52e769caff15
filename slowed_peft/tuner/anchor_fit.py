"""Computing the safety anchor: one pass of the *initial* model over tokenized anchor batches, per wrapped layer the top
eigenvectors of its inputs' second moment.

The way PEFT fits its data-driven adapters (``peft/tuners/lora/eva.py::get_eva_state_dict``,
``corda.py::preprocess_corda`` with its cache file): a forward pre-hook on every SLowED layer accumulates the
uncentred second moment ``C = Σ x xᵀ`` of the tokens the ``attention_mask`` keeps (streamed per batch, summed in
float64: no ``[tokens × dim]`` kept); layers that read the same tensor (q/k/v, gate/up) share one sum; the forward
stops after the last wrapped layer (no LM head). Each layer's basis ``Q`` is the top eigenvectors of ``C``
(``anchor_rank`` and/or ``anchor_energy``), never below the noise floor of the precision the products ran in.
:func:`get_anchor_state_dict` returns them as a state dict (:mod:`slowed_peft.tuner.anchor`);
:func:`fit_anchor` also installs them. Since the anchor prompts' activations are unchanged by induction over the
layers, a full-span anchor leaves the model's outputs on those prompts exactly as they were, however long it trains.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from .anchor import (
    ENERGY_SUFFIX,
    SEQUENCES,
    SETTINGS,
    TOKENS,
    AnchorReport,
    anchored_layers,
    check_not_sharded,
    check_peft_model,
    check_refit,
    initialize_anchor_weights,
    record_report,
    resolve_adapter,
    whole_width_error,
)
from .anchor_moments import SecondMoments, StopForward, choose_rank, top_eigenpairs
from .registration import short_name


ForwardFn = Callable[[nn.Module, dict], Any]
NEW_FORM = "fit_anchor(peft_model, anchor_dataloader(tokenizer, prompts))"


def _check_dataloader(dataloader: Any, caller: str) -> None:
    """``TypeError`` for what the old string API took (a tokenizer, a string, a list of strings) or a lone batch."""
    from transformers import PreTrainedTokenizerBase

    hint = f"build the batches with slowed_peft.anchor_dataloader(tokenizer, prompts), e.g. {NEW_FORM}"
    if isinstance(dataloader, PreTrainedTokenizerBase) or hasattr(dataloader, "apply_chat_template"):
        raise TypeError(f"{caller} takes tokenized batches, not a tokenizer and prompts: {hint}.")
    if isinstance(dataloader, (str, bytes)):
        raise TypeError(f"{caller} takes tokenized batches, not a string: {hint}.")
    if isinstance(dataloader, Sequence) and len(dataloader) and isinstance(dataloader[0], str):
        raise TypeError(f"{caller} takes tokenized batches, not a list of strings: {hint}.")
    if isinstance(dataloader, Mapping):
        raise TypeError(f"{caller} takes an iterable of batches, not one batch (a dict): wrap it, e.g. [batch].")
    if not isinstance(dataloader, Iterable):
        raise TypeError(f"{caller}: dataloader must be a DataLoader or an iterable of dicts with input_ids.")


def _as_2d(value: Any, key: str, index: int) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"anchor batch {index}: {key!r} is not a rectangular tensor (pad the batch): {err}") from None
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2:
        raise ValueError(f"anchor batch {index}: {key!r} must be [batch, length]; got shape {tuple(tensor.shape)}.")
    if key == "input_ids" and (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool):
        raise ValueError(f"anchor batch {index}: 'input_ids' must hold integer token ids; got {tensor.dtype}.")
    return tensor


def _prepare(batch: Any, index: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """The batch on ``device`` (``input_ids`` / ``attention_mask`` as 2-D tensors) and its boolean token mask."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        what = f"a dict with keys {sorted(batch)}" if isinstance(batch, Mapping) else f"a {type(batch).__name__}"
        raise ValueError(f"anchor batch {index} has no 'input_ids' (got {what}); each batch needs input_ids.")
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    ids = _as_2d(batch["input_ids"], "input_ids", index).to(device)
    out["input_ids"] = ids
    if batch.get("attention_mask") is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        attention = _as_2d(batch["attention_mask"], "attention_mask", index).to(device)
        if attention.shape != ids.shape:
            raise ValueError(
                f"anchor batch {index}: attention_mask {tuple(attention.shape)} does not match input_ids "
                f"{tuple(ids.shape)}."
            )
        out["attention_mask"] = attention
        mask = attention.bool()
    return out, mask


def _default_forward(model: nn.Module, batch: dict) -> None:
    model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)


def _progress(dataloader: Any, show: bool) -> Iterable:
    from tqdm.auto import tqdm

    total = len(dataloader) if hasattr(dataloader, "__len__") else None
    return tqdm(dataloader, total=total, desc="fitting the anchor", unit="batch", disable=not show)


def _pass(peft_model: nn.Module, layers: dict, config: Any, dataloader: Any, forward_fn, show: bool):
    """The statistics pass: second moments per group of layers, sequences and tokens counted."""
    # Products in float64 when an energy share decides the rank (the whole spectrum matters); float32 for a plain
    # top-`anchor_rank` basis (2x faster, same top; the noise floor then is float32's).
    moments = SecondMoments(layers, exact=config.anchor_energy is not None)
    device = next(peft_model.parameters()).device
    forward_fn = forward_fn or _default_forward
    sequences = tokens = batches = 0
    was_training = peft_model.training
    handles = []
    peft_model.eval()
    try:
        with peft_model.disable_adapter(), torch.no_grad():
            handles = [m.register_forward_pre_hook(moments.hook(n), with_kwargs=True) for n, m in layers.items()]
            for index, raw in enumerate(_progress(dataloader, show)):
                batch, mask = _prepare(raw, index, device)
                batches += 1
                if not bool(mask.any()):
                    continue
                moments.start_batch(mask)
                sequences += int(mask.any(dim=1).sum())
                tokens += int(mask.sum())
                try:
                    forward_fn(peft_model, batch)
                except StopForward:
                    pass
                moments.flush()
    finally:
        for handle in handles:
            handle.remove()
        peft_model.train(was_training)
    if batches == 0:
        raise ValueError("get_anchor_state_dict: the dataloader yielded no batches (no anchor prompts).")
    if tokens == 0:
        raise ValueError("get_anchor_state_dict: every token of the anchor batches is masked (attention_mask all 0).")
    return moments, sequences, tokens


def _settings(config: Any) -> dict[str, torch.Tensor]:
    rank, energy = config.anchor_rank, config.anchor_energy
    return {
        SETTINGS["anchor_rank"]: torch.tensor(-1 if rank is None else int(rank), dtype=torch.int64),
        SETTINGS["anchor_energy"]: torch.tensor(-1.0 if energy is None else float(energy), dtype=torch.float64),
        SETTINGS["anchor_tokens"]: torch.tensor(int(config.anchor_tokens == "prompt+response"), dtype=torch.int64),
    }


def _bases(moments: SecondMoments, layers: dict, config: Any) -> dict[str, torch.Tensor]:
    """Per layer the basis (float32, one clone per layer so ``save_file`` writes the dict) and its energy share."""
    state: dict[str, torch.Tensor] = {}
    by_group: dict[tuple, tuple[torch.Tensor, float]] = {}
    full = []
    for name, layer in layers.items():
        groups = tuple(sorted((g for g in moments.sums if name in g), key=lambda g: sorted(g)))
        if not groups:
            raise ValueError(f"get_anchor_state_dict: layer {short_name(name)!r} was not reached by the forward pass.")
        if groups not in by_group:
            second = sum(moments.sums[g] for g in groups)
            exact = config.anchor_energy is not None
            values, vectors = top_eigenpairs(second, None if exact else config.anchor_rank)
            k = choose_rank(values, config.anchor_rank, config.anchor_energy, second.shape[0], exact)
            if k == 0:
                raise ValueError(
                    f"get_anchor_state_dict: the inputs of layer {short_name(name)!r} carry no energy on the anchor "
                    "prompts (all zero); nothing to anchor there."
                )
            total = float(torch.diagonal(second).sum())  # trace: the whole energy, also when only the top is known
            kept = float(values.flip(0)[:k].clamp_min(0).sum())
            by_group[groups] = (vectors[:, -k:].flip(1).float().contiguous(), min(1.0, kept / total))
        q, share = by_group[groups]
        if q.shape[1] >= layer.in_features:
            full.append((name, layer.in_features))
        state[short_name(name)] = q.clone()
        state[short_name(name) + ENERGY_SUFFIX] = torch.tensor(share, dtype=torch.float64)
    if full:
        raise whole_width_error(full, config, "get_anchor_state_dict")
    return state


def get_anchor_state_dict(
    peft_model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    adapter_name: Optional[str] = None,
    forward_fn: Optional[ForwardFn] = None,
    show_progress_bar: bool = True,
    cache_file: Optional[str] = None,
) -> dict[str, torch.Tensor]:
    """Compute the safety anchor's bases of every SLowED layer of an adapter, without installing them.

    One pass of the initial model (adapters disabled, eval mode) over ``dataloader``; the tokens whose
    ``attention_mask`` is 1 count (right or left padding). How many directions each layer keeps (``anchor_rank`` /
    ``anchor_energy``) comes from the adapter's ``SLowEDConfig``; which tokens the batches hold (``anchor_tokens``)
    is the caller's: :func:`~slowed_peft.anchor_dataloader` builds prompt batches. Fit before sharding (FSDP): every
    rank then computes the same bases from the same batches.

    Args:
        peft_model: A ``peft.PeftModel`` with an anchored SLowED adapter (``SLowEDConfig(anchor_rank=...)`` and/or
            ``anchor_energy=...``), e.g. ``trainer.model`` before ``trainer.train()``.
        dataloader: A ``torch.utils.data.DataLoader`` or any iterable of dicts with ``input_ids`` and optionally
            ``attention_mask`` (tensors or lists, ``[batch, length]``).
        adapter_name: The anchored adapter (default: the active one).
        forward_fn: ``forward_fn(model, batch)`` runs the model on one batch (as in PEFT's EVA); default
            ``model(input_ids=..., attention_mask=..., use_cache=False)``.
        show_progress_bar: Show a ``tqdm`` bar over the batches.
        cache_file: A ``.safetensors`` path: loaded (and checked against this model and adapter) if it exists,
            otherwise computed and written there (atomically), as CorDA's ``cache_file``.

    Returns:
        ``dict[str, torch.Tensor]``: per layer its basis and energy share, the sequence and token counts and the
        settings it was fitted with (see :mod:`slowed_peft.tuner.anchor`); ``safetensors.torch.save_file`` writes it.

    Raises:
        TypeError: ``peft_model`` is not a ``PeftModel``; ``dataloader`` is a tokenizer, a string or a list of
            strings (use ``anchor_dataloader``).
        ValueError: Unknown or unanchored adapter, a sharded model, a batch without ``input_ids``, no batches or
            no unmasked token, non-finite activations, a layer with no input energy, bases that would cover a
            layer's whole input width, or a cache file that does not match (naming the key and the file).
    """
    caller = "get_anchor_state_dict"
    check_peft_model(peft_model, caller)
    _check_dataloader(dataloader, caller)
    adapter_name, config = resolve_adapter(peft_model, adapter_name, caller)
    check_not_sharded(peft_model, caller)
    layers = anchored_layers(peft_model, adapter_name, caller)
    rank = config.anchor_rank
    if rank is not None:
        too_wide = [(n, m.in_features) for n, m in layers.items() if rank >= m.in_features]
        if too_wide:
            name, width = too_wide[0]
            raise ValueError(
                f"{caller}: anchor_rank={rank} is not below the input width {width} of layer {short_name(name)!r} "
                f"({len(too_wide)} layer(s)): the layer could not learn at all. Use a smaller anchor_rank."
            )
    if cache_file is not None and os.path.exists(cache_file):
        from .anchor_cache import load_anchor_cache

        return load_anchor_cache(cache_file, layers, config)
    moments, sequences, tokens = _pass(peft_model, layers, config, dataloader, forward_fn, show_progress_bar)
    state = _bases(moments, layers, config)
    state[SEQUENCES] = torch.tensor(sequences, dtype=torch.int64)
    state[TOKENS] = torch.tensor(tokens, dtype=torch.int64)
    state.update(_settings(config))
    if cache_file is not None:
        from .anchor_cache import save_anchor_cache

        save_anchor_cache(state, cache_file)
    return state


def fit_anchor(
    peft_model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    forward_fn: Optional[ForwardFn] = None,
    *,
    adapter_name: Optional[str] = None,
    show_progress_bar: bool = True,
    cache_file: Optional[str] = None,
    overwrite: bool = False,
) -> AnchorReport:
    """Fit and install the safety anchor of every SLowED layer of an adapter: :func:`get_anchor_state_dict` then
    :func:`~slowed_peft.initialize_anchor_weights`.

    ```py
    report = fit_anchor(peft_model, anchor_dataloader(tokenizer, prompts))   # before training
    print(report.summary())
    ```

    Args:
        peft_model: A ``peft.PeftModel`` with an anchored SLowED adapter, not yet sharded (``trainer.model`` before
            ``trainer.train()`` works).
        dataloader: A ``DataLoader`` or any iterable of dicts with ``input_ids`` and optionally ``attention_mask``
            (:func:`~slowed_peft.anchor_dataloader` turns prompts into one).
        forward_fn: ``forward_fn(model, batch)`` runs the model on one batch; default ``model(input_ids=...,
            attention_mask=..., use_cache=False)``.
        adapter_name: The anchored adapter (default: the active one).
        show_progress_bar: Show a ``tqdm`` bar over the batches.
        cache_file: Load the bases from this ``.safetensors`` file if it exists (checked), else compute and write it.
        overwrite: Re-fit an adapter whose anchor is fitted and whose delta is no longer zero (a trained adapter);
            this changes the trained model's outputs, so it is refused otherwise.

    Returns:
        An :class:`~slowed_peft.AnchorReport`: per layer the directions protected and their energy share, the
        sequences and tokens counted, the seconds taken (``report.summary()``: one line).

    Raises:
        TypeError: ``peft_model`` is not a ``PeftModel``, or the old form ``fit_anchor(model, tokenizer, prompts)``
            (strings are turned into batches by ``anchor_dataloader``).
        ValueError: As :func:`get_anchor_state_dict` and :func:`~slowed_peft.initialize_anchor_weights`; a trained
            adapter's anchor re-fitted without ``overwrite=True``.
    """
    started = time.time()
    check_peft_model(peft_model, "fit_anchor")
    _check_dataloader(dataloader, "fit_anchor")
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(
            f"fit_anchor: forward_fn must be callable(model, batch); got {type(forward_fn).__name__} (the old form "
            f"fit_anchor(model, tokenizer, prompts) is now {NEW_FORM})."
        )
    adapter_name, _ = resolve_adapter(peft_model, adapter_name, "fit_anchor")
    check_not_sharded(peft_model, "fit_anchor")
    check_refit(anchored_layers(peft_model, adapter_name), adapter_name, overwrite, "fit_anchor")  # before the pass
    state = get_anchor_state_dict(peft_model, dataloader, adapter_name, forward_fn, show_progress_bar, cache_file)
    report = initialize_anchor_weights(peft_model, state, adapter_name, overwrite=overwrite)
    report.seconds = round(time.time() - started, 2)
    record_report(peft_model, report)
    return report
