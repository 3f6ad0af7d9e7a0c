"""Process-level settings that decide how fast a jitted step runs on a CPU.

XLA:CPU allocates a compiled step's scratch buffers (tens of MB for a
Zaremba-small train step) from the C allocator at every call and frees them
after it.  glibc hands blocks that large back to the operating system
(``munmap`` / heap trimming), so the next call takes a page fault for every
4 KiB it touches again (the cost is measured in benchmarks/RESULTS.md).

:func:`keep_host_memory` tells glibc to keep freed memory in the process for
reuse, as PyTorch's and JAX's own GPU allocators do with device memory.  It
changes the whole process (every library's allocations, not only jrnn's) and
lasts until the process exits, so jrnn never does it on import: the ``jrnn``
command line calls it when it trains or evaluates on a CPU, and library users
call it themselves (``from jrnn.training.runtime import keep_host_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_host_memory"]

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGE = 2**31 - 1  # the largest int mallopt takes

_applied = False


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl and other C libraries have no mallopt (or ignore these parameters).
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_host_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the OS.

    Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to their
    maximum (large blocks come from the heap and stay there after ``free``)
    and ``M_ARENA_MAX`` to 1 (XLA's worker threads share one heap, so a block
    freed by one thread is reused by the next call on another).  The price is
    that the process's resident memory stays at its peak.

    Returns ``True`` when the settings took effect, ``False`` where they do
    not apply (not Linux, or a C library other than glibc): then nothing is
    changed.  Calling it again is harmless.  (No doctest: it would change the
    allocator of the whole test process.)
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = all(
        libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _LARGE),
            (_M_TRIM_THRESHOLD, _LARGE),
            (_M_ARENA_MAX, 1),
        )
    )
    _applied = ok
    return ok
