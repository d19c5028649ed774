"""Giving the heap a big DNC import used back to the OS (glibc ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

__all__ = ["release_memory", "trim_heap"]


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to trim
    return trim


_MALLOC_TRIM = _load_trim()


def release_memory() -> None:
    """Give the heap that a big import used back to the OS (glibc ``malloc_trim``).

    Sorting N numbers briefly needs ~40 bytes each (a list of floats); glibc keeps the freed
    heap mapped, so without this a process that imported 10 million numbers would sit ~400 MB
    above what its lists hold. A no-op where there is no ``malloc_trim``.
    """
    gc.collect()  # a full collection also empties the interpreter's free lists
    trim_heap()


def trim_heap() -> None:
    """Hand the heap's free memory back to the OS (``malloc_trim``) without a collection.

    For a process that must not pause for a full collection (a running switch that just read
    a big list from the database in 8 MiB pieces); ctypes lets go of the GIL meanwhile, so a
    worker thread can run it. A no-op where there is no ``malloc_trim``.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
