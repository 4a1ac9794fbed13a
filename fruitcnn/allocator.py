"""Keep glibc from returning TensorFlow's working memory to the kernel after every step.

TensorFlow on the CPU allocates each step's activations and gradients with malloc.
glibc serves blocks above its mmap threshold with fresh ``mmap`` pages and unmaps them
on free, so every training step faults in (and the kernel zeroes) its whole working set
again. Measured here on the line model: 3.7 million page faults in one 121-step epoch
and 138 ms per step; with the settings below 0.18 million faults and 78 ms per step
(1.8x faster), identical results. Raising the mmap threshold to glibc's maximum (32 MiB)
and the trim threshold keeps freed blocks in the heap for reuse.

Applied once when ``fruitcnn`` is imported, on Linux with glibc only; set
``FRUITCNN_KEEP_MALLOC=1`` to leave the allocator untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# Largest mmap threshold glibc accepts on 64-bit systems (bytes).
_MMAP_THRESHOLD = 32 * 1024 * 1024
# Free heap memory kept before trimming, and extra heap requested per growth (bytes).
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_TOP_PAD = 256 * 1024 * 1024

_applied: bool | None = None


def tune_allocator() -> bool:
    """Apply the malloc settings once; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("FRUITCNN_KEEP_MALLOC") == "1":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:  # not glibc (e.g. musl): nothing to tune
        return False
    _applied = bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        and mallopt(_M_TOP_PAD, _TOP_PAD)
    )
    return _applied
