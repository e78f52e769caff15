"""Former home of the registration helpers, kept so ``from slowed_peft._registration import ...`` keeps working.

Registration now happens in :mod:`slowed_peft.tuner` (its ``__init__`` registers, as PEFT's own tuners do); this
module only re-exports, so it imports downward and creates no cycle.
"""

from .tuner import register_slowed
from .tuner.registration import PEFT_TYPE_NAME, PREFIX, ensure_peft_type

__all__ = ["PEFT_TYPE_NAME", "PREFIX", "ensure_peft_type", "register_slowed"]
