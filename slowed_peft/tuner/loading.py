"""Checks run while an adapter's weights are loaded: whole adapters only, and a trust region taken from the W0 in memory.

PEFT loads adapter weights with ``strict=False`` and only warns about missing keys, so an adapter for another
architecture or with a config that does not match its tensors would load half-random. SLowED instead raises
``ValueError`` naming the keys. The stored ``slowed_w0_norm`` is checked against the base weight in memory and then
replaced by it: the bound ``‖W − W0‖ ≤ ρ‖W0‖`` is always relative to the W0 the adapter is applied to. Both checks can
be relaxed for one load with :func:`lenient_load`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .registration import PREFIX, find_module, short_name


# Relative tolerance between the stored ‖W0‖ and the one of the base in memory. Casting the same weights to
# bfloat16/float16 changes each element by at most 2^-8 relative, hence every norm by at most 0.39%; a larger
# difference means another base (or an edited file).
W0_NORM_RTOL = 5e-3

_state = threading.local()


@contextlib.contextmanager
def lenient_load(partial: bool = False, other_base: bool = False) -> Iterator[None]:
    """Relax SLowED's load checks inside the ``with`` block (this thread only); each relaxed check warns instead.

    Args:
        partial: load an adapter whose keys do not match the model's (missing keys keep their fresh initial values,
            unexpected keys are dropped), e.g. an adapter trained on a deeper model of the same family.
        other_base: load onto a base whose ‖W0‖ differs from the stored one by more than ``W0_NORM_RTOL`` (e.g. a
            fine-tuned variant of the training base). The trust region is re-derived from the base in memory.

    Example: ``with lenient_load(other_base=True): PeftModel.from_pretrained(finetuned_base, path)``.
    """
    previous = getattr(_state, "flags", (False, False))
    _state.flags = (previous[0] or partial, previous[1] or other_base)
    try:
        yield
    finally:
        _state.flags = previous


def _flags() -> tuple[bool, bool]:
    return getattr(_state, "flags", (False, False))


def _refuse_unless_lenient(allowed: bool, message: str, how_to_allow: str, what_happens: str) -> None:
    """Raise ``message`` + how to opt in; or, inside the matching :func:`lenient_load`, warn with what happens."""
    if not allowed:
        raise ValueError(f"{message} {how_to_allow}")
    warnings.warn(f"{message} {what_happens}", UserWarning, stacklevel=5)


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(short_name(k)) for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _is_adapter_key(key: str, adapter_name: str) -> bool:
    """Whether a model state-dict key belongs to adapter ``adapter_name`` (SLowED tensors or modules_to_save)."""
    if f".{PREFIX}" in key and key.endswith(f".{adapter_name}"):
        return True
    return f".modules_to_save.{adapter_name}." in key


def check_keys(own: dict[str, torch.Tensor], remapped: dict[str, torch.Tensor], adapter_name: str, source: str) -> None:
    """Raise ``ValueError`` naming missing / unexpected keys unless ``lenient_load(partial=True)`` is active."""
    unexpected = [k for k in remapped if k not in own and short_name(k) not in own]
    present = set(remapped) | {short_name(k) for k in remapped}
    missing = [k for k in own if _is_adapter_key(k, adapter_name) and k not in present]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (the model has them, the file does not): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (in the file, not in the model): {_listing(unexpected)}")
    message = (
        f"SLowED adapter {adapter_name!r} does not match this model ({source}): " + "; ".join(parts) + ". The file "
        "belongs to another architecture, number of layers or target_modules, or its adapter_config.json (e.g. `r`) "
        "does not describe its tensors."
    )
    _refuse_unless_lenient(
        _flags()[0],
        message,
        "To load the matching part only, wrap the call in `slowed_peft.tuner.lenient_load(partial=True)`.",
        "Loading the matching part only (lenient_load(partial=True)).",
    )


@torch.no_grad()
def rebase_w0_norms(model: nn.Module, remapped: dict[str, torch.Tensor], adapter_name: str, source: str) -> None:
    """Check every stored ``slowed_w0_norm`` against the base weight in memory, then replace it by that norm.

    A relative difference above ``W0_NORM_RTOL`` raises ``ValueError`` naming the module (or warns under
    ``lenient_load(other_base=True)``). Layers whose base weight is on the meta device keep the stored norm.
    """
    from .layer import SLowEDLayer

    suffix = f".{PREFIX}w0_norm.{adapter_name}"
    worst: list[tuple[float, str, float, float]] = []
    checked = 0
    for key in list(remapped):
        if not key.endswith(suffix):
            continue
        layer = find_module(model, key[: -len(suffix)])
        if not isinstance(layer, SLowEDLayer) or adapter_name not in layer.drift_granularity:
            continue
        if layer.get_base_layer().weight.device.type == "meta":
            continue
        fresh = layer._initial_norm(adapter_name)
        stored = remapped[key]
        if tuple(stored.shape) != tuple(fresh.shape):
            continue  # the shape check reports it
        checked += 1
        rel = (stored.float().cpu() - fresh.cpu()).abs() / fresh.cpu().clamp_min(1e-30)
        rel = torch.where((fresh.cpu() == 0) & (stored.float().cpu() == 0), torch.zeros_like(rel), rel)
        i = int(rel.argmax())
        if float(rel.flatten()[i]) > W0_NORM_RTOL:
            worst.append((float(rel.flatten()[i]), key, float(stored.flatten()[i]), float(fresh.flatten()[i])))
        remapped[key] = fresh.to(device=stored.device)
    if not worst:
        return
    worst.sort(reverse=True)
    rel, key, stored, fresh = worst[0]
    message = (
        f"SLowED adapter {adapter_name!r} ({source}) was not trained on this base: its slowed_w0_norm of module "
        f"{short_name(key[: -len(suffix)])!r} is {stored:.6g} in the file but {fresh:.6g} for the base weight in memory "
        f"(relative difference {rel:.2%}, tolerance {W0_NORM_RTOL:.2%}); {len(worst)} of {checked} modules differ. "
        "Another base of the same shapes (or a fine-tuned one), or an edited file."
    )
    _refuse_unless_lenient(
        _flags()[1],
        message,
        "To apply it anyway, with the trust region taken from the weights in memory, wrap the call in "
        "`slowed_peft.tuner.lenient_load(other_base=True)`.",
        "The trust region now uses the ‖W0‖ of the weights in memory.",
    )


@torch.no_grad()
def prepare_anchor_buffers(model: nn.Module, remapped: dict[str, torch.Tensor], adapter_name: str, where: str) -> None:
    """Give each layer a fresh ``slowed_anchor`` buffer of the stored basis' size (its rank varies per layer), after
    checking the basis is finite and orthonormal; a basis of another width is left to the shape check, which names
    both shapes. Layers whose stored basis is one tensor (a group stored once, see ``anchor_storage.py``) get one
    shared buffer, as after the fit; a buffer a previous fit shared is never written through for another layer."""
    from .anchor import check_orthonormal
    from .layer import SLowEDLayer

    suffix = f".{PREFIX}anchor.{adapter_name}"
    buffers: dict[tuple[int, torch.device], torch.Tensor] = {}
    checked: set[int] = set()
    for key, stored in remapped.items():
        if not key.endswith(suffix):
            continue
        layer = find_module(model, key[: -len(suffix)])
        if not isinstance(layer, SLowEDLayer) or adapter_name not in layer.slowed_anchor:
            continue  # check_keys reports it as unexpected
        if stored.dim() != 2 or stored.shape[0] != layer.in_features:
            continue
        device = layer.slowed_anchor[adapter_name].device
        if id(stored) not in checked:
            check_orthonormal(stored, f"Corrupt SLowED adapter {where}: the anchor basis {short_name(key)!r}")
            checked.add(id(stored))
        if (id(stored), device) not in buffers:
            buffers[(id(stored), device)] = torch.zeros(stored.shape, dtype=torch.float32, device=device)
        layer.slowed_anchor[adapter_name] = buffers[(id(stored), device)]
        layer._weight_cache = None
