"""Giving memory back to the operating system after a large request.

glibc keeps freed heap memory in its arenas (one per thread that allocated), so after one
large importance-sampling request a process can keep hundreds of MB it no longer uses.
`release_memory` asks glibc to return free pages (malloc_trim); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_lock = threading.Lock()


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_memory() -> bool:
    """Return free heap pages of every malloc arena to the OS; False where unsupported.

    Blocking (milliseconds): call it from a worker thread. Calls that overlap are skipped.
    """
    if _TRIM is None or not _lock.acquire(blocking=False):
        return False
    try:
        _TRIM(0)
        return True
    finally:
        _lock.release()
