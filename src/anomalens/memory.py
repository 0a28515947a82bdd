"""Give freed heap memory back to the OS between large batches (glibc keeps it otherwise, inflating peak RSS)."""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Optional

_trim: Optional[Callable[[int], int]] = None
_probed = False


def release_memory() -> None:
    """Run glibc's malloc_trim(0) where available (Linux); a no-op elsewhere."""
    global _trim, _probed
    if not _probed:
        _probed = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _trim = libc.malloc_trim
            _trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _trim = None
    if _trim is not None:
        _trim(0)
