"""The ``SLOWED`` PEFT type: add it to ``PeftType`` at runtime and register a config/tuner pair idempotently.

PEFT 0.21 has no plugin mechanism: ``register_peft_method`` only accepts names that already are ``PeftType``
members, and registering twice raises. We extend the enum (name == value, so PEFT's lookups with the raw string from
``adapter_config.json`` hash to the member) and guard the registration so that a second import, an
``importlib.reload`` or a duplicated module path never raises nor disturbs built-in methods. This module imports
nothing of the tuner, so the config can use :func:`ensure_peft_type` without an import cycle.
"""

from __future__ import annotations

from typing import Optional

from peft.utils.peft_types import PeftType
from torch import nn


PEFT_TYPE_NAME = "SLOWED"
PREFIX = "slowed_"
MODEL_PREFIX = "base_model.model."  # what PeftModel puts before the base model's module names


def short_name(name: str) -> str:
    """A module name or state-dict key without PEFT's ``base_model.model.`` prefix (as messages and files spell it)."""
    return name.removeprefix(MODEL_PREFIX)


def find_module(model: nn.Module, path: str) -> Optional[nn.Module]:
    """The submodule at ``path``, with or without PEFT's prefix; ``None`` when there is none."""
    for candidate in (path, short_name(path)):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def ensure_peft_type(name: str = PEFT_TYPE_NAME) -> PeftType:
    """Return ``PeftType[name]``, adding the member (name == value) if it does not exist yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses to rebind members; this is a new one
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    return member


def register_peft_type(config_cls: type, model_cls: type) -> PeftType:
    """Register ``config_cls`` / ``model_cls`` as the ``SLOWED`` method; a repeated call rebinds to these classes."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type(PEFT_TYPE_NAME)
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        # Re-import or reload: point the mappings at the classes of this module instance.
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = PREFIX
    else:
        register_peft_method(name=PEFT_TYPE_NAME.lower(), config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
    return peft_type
