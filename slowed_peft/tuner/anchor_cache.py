"""The anchor fit's cache file (``get_anchor_state_dict(..., cache_file=...)``, as CorDA's ``cache_file``): the state
dict written with safetensors (a temporary file, then ``os.replace``, so a crash never leaves half a file), and read
back only when it matches the model and the adapter's settings."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .anchor import SETTINGS, check_state_dict


def save_anchor_cache(state: dict[str, torch.Tensor], path: str) -> None:
    """Write ``state`` to ``path`` (safetensors) atomically; creates the folder."""
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _expected(config: Any) -> dict[str, float]:
    return {
        SETTINGS["anchor_rank"]: -1 if config.anchor_rank is None else int(config.anchor_rank),
        SETTINGS["anchor_energy"]: -1.0 if config.anchor_energy is None else float(config.anchor_energy),
        SETTINGS["anchor_tokens"]: int(config.anchor_tokens == "prompt+response"),
    }


def load_anchor_cache(path: str, layers: dict[str, nn.Module], config: Any) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, checked: a readable safetensors file, fitted with this adapter's ``anchor_rank`` /
    ``anchor_energy`` / ``anchor_tokens``, with one basis of the right width per anchored layer and nothing else;
    ``ValueError`` naming the key and the file otherwise."""
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception as err:  # safetensors raises its own error types for truncated / foreign files
        raise ValueError(f"The anchor cache file {path!r} is not a readable safetensors file ({err}).") from None
    for (name, key), want in zip(SETTINGS.items(), _expected(config).values()):
        value = state.get(key)
        if value is None or value.numel() != 1:
            raise ValueError(f"The anchor cache file {path!r} has no {key!r} (not written by get_anchor_state_dict?).")
        if float(value) != want:
            shown: Any = "None" if float(value) == -1 else float(value)
            if name == "anchor_rank" and shown != "None":
                shown = int(value)
            elif name == "anchor_tokens":
                shown = "prompt+response" if float(value) else "prompt"
            raise ValueError(
                f"The anchor cache file {path!r} was fitted with {name}={shown} ({key!r}); this adapter has "
                f"{name}={getattr(config, name)!r}. Delete the file or pass another cache_file."
            )
    try:
        check_state_dict(state, layers, config, "get_anchor_state_dict", where=f"the anchor cache file {path!r}")
    except ValueError as err:
        raise ValueError(f"{err} Delete the file or pass another cache_file.") from None
    return state
