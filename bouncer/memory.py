"""Giving freed memory back to the system.

glibc keeps what a process freed in its arenas; a connection that died holding a
large partial stanza (thousands of lxml elements) would leave the process that much
bigger for good. ``malloc_trim`` returns it. Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc_name = ctypes.util.find_library("c")
_trim = getattr(ctypes.CDLL(_libc_name), "malloc_trim", None) if _libc_name else None


def give_back() -> None:
    """Return free heap memory to the system (a few ms on a small heap)."""
    if _trim is not None:
        _trim(0)
