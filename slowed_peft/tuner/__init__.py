"""SLowED as a PEFT tuner (config / layer / model), registered with PEFT on import."""

from .config import SLowEDConfig
from .layer import Linear, SLowEDLayer
from .model import SLowEDModel

__all__ = ["Linear", "SLowEDConfig", "SLowEDLayer", "SLowEDModel"]
