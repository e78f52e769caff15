"""The save / load side of ``save_precision``: dense deltas compressed on save, reconstructed on load.

``compress_state_dict`` runs inside PEFT's ``save_pretrained`` (via ``SLowEDModel._get_adapter_state_dict``) and
replaces each dense ``slowed_delta`` by its compressed parts (see ``tuner/compress.py``); ``decompress_state_dict``
runs inside ``PeftModel.from_pretrained`` / ``load_adapter`` (via ``SLowEDModel._remap_adapter_state_dict_for_load``)
and turns them back into ``slowed_delta``, so everything downstream (key checks, ‖W0‖ checks, ``load_state_dict``)
sees a plain dense adapter. Nothing else of PEFT's loading path changes.

The safety anchor's bases go through the same two hooks, right after the deltas (``tuner/anchor_storage.py``): on
save, bit-identical bases of layers that read one input (q/k/v, gate/up) are stored once, the other layers of the
group holding a small ``slowed_anchor_ref`` (the owner's module path), optionally in bf16 (``anchor_save_dtype``); on
load each layer gets its float32 basis back (bf16 re-orthonormalised), so the checks downstream see one basis per
layer. A 4-bit delta is projected with the float32 bases before they are shared or rounded.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

from .compress import (
    COMPRESSED_PARTS,
    DELTA,
    check_reconstructed,
    compress_deltas,
    compressed_modules,
    decompress_matrix,
)
from .functional import project_out, sq_norm, trust_region_scale
from .registration import PREFIX, find_module


W0_NORM = f"{PREFIX}w0_norm"
ANCHOR = f"{PREFIX}anchor"
SOURCE_MARKER = "slowed_source.json"  # written by base_models next to a converted embedded model: {"hub_id": ...}


@torch.no_grad()
def compress_state_dict(model: nn.Module, config, adapter_name: str, state: dict[str, torch.Tensor]) -> dict:
    """``state`` (keys with the adapter name) with every dense delta of ``adapter_name`` compressed, if the config's
    ``save_precision`` asks for it; other tensors (low-rank factors, ‖W0‖, modules_to_save) are kept exact."""
    if getattr(config, "save_precision", "fp32") == "fp32":
        return state
    suffix = f".{DELTA}.{adapter_name}"
    gamma, rho = float(config.slow_factor), config.max_drift
    per_row = config.drift_granularity == "row"
    deltas, bounds, rows = {}, {}, {}
    for key in [k for k in state if k.endswith(suffix)]:
        module = key[: -len(suffix)]
        layer = find_module(model, module)
        conv1d = bool(getattr(layer, "is_conv1d", False))
        d = state[key]
        d = d.full_tensor() if hasattr(d, "full_tensor") else d
        d = d.detach().float()
        d = project_out(d, state.get(f"{module}.{ANCHOR}.{adapter_name}"), conv1d)  # the anchor: P(D) is what acts
        row_dim = (0 if conv1d else 1) if per_row else None
        w0n = state.get(f"{module}.{W0_NORM}.{adapter_name}")
        if rho is not None and w0n is None:
            raise ValueError(f"Cannot compress module {module!r}: its {W0_NORM!r} buffer is not in the state dict.")
        w0n = None if w0n is None else w0n.detach().float().to(d.device)
        scale = gamma if rho is None else trust_region_scale(sq_norm(d, row_dim), w0n, gamma, float(rho))
        delta = d * scale
        deltas[module] = delta.T if conv1d else delta
        bounds[module] = None if rho is None else float(rho) * w0n.reshape(-1)
        rows[module] = per_row
        del state[key]
    packed = compress_deltas(deltas, bounds, rows)
    for key, tensor in packed.items():
        module, part = key.rsplit(".", 1)
        state[f"{module}.{part}.{adapter_name}"] = tensor
    return state


def decompress_state_dict(model: nn.Module, config, state: dict[str, torch.Tensor], where: str) -> dict:
    """A checkpoint state dict (keys without the adapter name) with compressed deltas turned back into
    ``slowed_delta = ΔW_rec / γ``; ``ValueError`` naming ``where`` (the file) and the key if a part is missing or broken."""
    modules = compressed_modules(state)
    if not modules:
        return state
    gamma = float(config.slow_factor)
    out = {k: v for k, v in state.items() if k.rpartition(".")[2] not in COMPRESSED_PARTS}
    for module, parts in modules.items():
        missing = [p for p in COMPRESSED_PARTS if p not in parts]
        if missing:
            raise ValueError(
                f"Corrupt SLowED adapter {where}: module {module!r} has a compressed delta without "
                f"{', '.join(repr(f'{module}.{p}') for p in missing)} (a partial or edited file?)."
            )
        name = f"Corrupt SLowED adapter {where}, module {module!r}"
        delta = decompress_matrix(parts, name)  # ΔW_rec and its norm are checked finite there
        layer = find_module(model, module)
        if getattr(layer, "is_conv1d", False):
            delta = delta.T.contiguous()
        delta = delta / gamma
        check_reconstructed(delta, name, f"delta D = ΔW/γ (γ = {gamma:g})")  # what the layer's norms are taken of
        out[f"{module}.{DELTA}"] = delta
    return out


def weights_file_hint(folder: Optional[str]) -> str:
    """How load errors name the adapter file."""
    if not folder:
        return "(adapter_model.safetensors)"
    return repr(os.path.join(folder, "adapter_model.safetensors"))


def hub_id_of(name_or_path: Optional[str]) -> Optional[str]:
    """The Hub id recorded next to a local copy of a Hub model (``slowed_source.json``), else ``None``."""
    if not name_or_path or not os.path.isdir(name_or_path):
        return None
    marker = os.path.join(name_or_path, SOURCE_MARKER)
    try:
        with open(marker) as f:
            hub_id = json.load(f).get("hub_id")
    except (OSError, ValueError, AttributeError):
        return None
    return hub_id if isinstance(hub_id, str) and hub_id.count("/") == 1 else None
