"""Keeping the serving process's resident memory down: allocator settings and handing freed memory back.

glibc keeps the pages of freed heap memory mapped (per thread arena) until `malloc_trim`, so the
transient copies made while a bundle loads (the ONNX graph before optimisation, the float64 index
data, the item table) and a whole replaced bundle would otherwise stay in the RSS for good. (The item
table is JSON since bundle format 2: no Arrow allocator, whose cached pages `malloc_trim` cannot reach.)
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8   # glibc's mallopt parameters


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_allocator(mmap_threshold_bytes: int, arena_max: int = 0) -> bool:
    """Fix glibc's mmap threshold (setting it also stops glibc raising it after each large free) and cap
    its arenas (each thread's arena keeps freed pages of its own; 0 leaves glibc's default)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = True
    if mmap_threshold_bytes > 0:
        ok &= bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold_bytes)))
    if arena_max > 0:
        ok &= bool(mallopt(M_ARENA_MAX, int(arena_max)))
    return ok


def trim_heap() -> bool:
    """Return free heap pages to the OS (no garbage collection: cheap enough after each large request)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_memory() -> bool:
    """Collect reference cycles, then return free heap pages to the OS; True when glibc trimmed."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
