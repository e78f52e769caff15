"""SLowED's Slow Tuning as a PEFT tuner (config / layer / model); importing this package registers ``SLOWED``.

As in ``peft/tuners/delora/__init__.py``, the package ``__init__`` registers the method and none of its modules
imports back up, so there is no cycle and no other import-time side effect.
"""

from peft.utils.peft_types import PeftType

from .anchor import AnchorReport, initialize_anchor_weights
from .anchor_fit import fit_anchor, get_anchor_state_dict
from .config import SLowEDConfig
from .layer import Linear, SLowEDLayer
from .loading import lenient_load
from .model import SLowEDModel
from .registration import register_peft_type


def register_slowed() -> PeftType:
    """Make PEFT aware of SLowED (``PeftType.SLOWED``). Safe to call any number of times; returns the member."""
    return register_peft_type(SLowEDConfig, SLowEDModel)


SLOWED = register_slowed()

__all__ = [
    "SLOWED",
    "AnchorReport",
    "Linear",
    "SLowEDConfig",
    "SLowEDLayer",
    "SLowEDModel",
    "fit_anchor",
    "get_anchor_state_dict",
    "initialize_anchor_weights",
    "lenient_load",
    "register_slowed",
]
