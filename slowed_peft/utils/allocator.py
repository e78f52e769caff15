"""Keep freed tensor memory in the process on glibc, so CPU training stops page-faulting on every step.

glibc serves large blocks (every activation, gradient and logits tensor of a training step) with ``mmap`` and returns
them to the kernel on ``free``; the next step maps them again and the kernel zero-fills every page, about a fifth of
each training step on a 2-core CPU run. :func:`keep_freed_memory` sets glibc's documented tunables ``M_MMAP_MAX = 0``
and ``M_TRIM_THRESHOLD = 2**31 - 1`` (the largest ``mallopt`` takes; the in-process form of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``), so freed blocks are reused instead. The price: the process keeps
its peak heap until it exits. Other platforms and allocators are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_DISABLE_ENV = "SLOWED_KEEP_FREED_MEMORY"
_applied: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Apply the glibc settings once per process; ``True`` if they are in effect.

    Does nothing (``False``) off Linux/glibc, when ``SLOWED_KEEP_FREED_MEMORY=0``, or when the user already set
    ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES`` (their choice wins).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(_DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # M_TRIM_THRESHOLD takes an int: use the largest one (2**31 - 1 bytes is already "never" for a step's churn).
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if ok:
        logger.info("glibc malloc: mmap off and trimming off for this process (SLOWED_KEEP_FREED_MEMORY=0 to skip).")
    _applied = bool(ok)
    return _applied
