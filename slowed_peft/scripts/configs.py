"""The YAML configs shipped with the package, and the ``TrlParser`` that takes one by name or by path.

``--config`` accepts a YAML file or the name of a shipped config (``smollm2-135m-demo``, ``replicate``, the GPU
recipes ``qwen2.5-1.5b``, ``llama-3.2-1b``, ``bloom-1b1``; the ``.yaml`` suffix is optional). An existing file wins
over a shipped name, so a local copy can be edited and passed by its path.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from typing import Optional

from trl import TrlParser


__all__ = ["SLowEDParser", "config_help", "resolve_config", "shipped_configs"]


def _config_dir():
    return importlib.resources.files("slowed_peft") / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs shipped as package data (``slowed_peft/configs/*.yaml``), sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def resolve_config(name_or_path: str) -> str:
    """The file a ``--config`` value names: an existing path as given, else the shipped config of that name."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if name in shipped_configs():
        return str(_config_dir() / f"{name}.yaml")
    raise FileNotFoundError(
        f"--config {name_or_path!r} is neither a YAML file nor a shipped config; shipped: {', '.join(shipped_configs())}."
    )


def config_help() -> str:
    return (
        f"--config NAME_OR_PATH: a YAML file of defaults (CLI flags override them) or a shipped config: "
        f"{', '.join(shipped_configs())}."
    )


class SLowEDParser(TrlParser):
    """``TrlParser`` whose ``--config`` (also ``--config=PATH``) may name a shipped config; listed in ``--help``."""

    def __init__(self, dataclass_types, **kwargs) -> None:
        kwargs.setdefault("epilog", config_help())
        super().__init__(dataclass_types, **kwargs)

    def parse_args_and_config(self, args: Optional[Iterable[str]] = None, **kwargs):
        import sys

        args = [
            part
            for arg in (sys.argv[1:] if args is None else args)
            for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])
        ]
        if "--config" in args:
            i = args.index("--config") + 1
            if i < len(args):
                args[i] = resolve_config(args[i])
        return super().parse_args_and_config(args=args, **kwargs)
