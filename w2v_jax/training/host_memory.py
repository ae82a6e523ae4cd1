"""Host memory allocation: keep freed memory for reuse instead of returning it to the kernel.

Why: glibc's malloc serves every request above its mmap threshold (at most 32 MiB) with a fresh
`mmap` and unmaps it on `free`, and worker threads' arenas, which cannot grow beyond 64 MiB, fall
back to `mmap` for large blocks too. XLA:CPU allocates each execution's temporaries as large
blocks, so every step touched all of them for the first time again: hundreds of thousands of
minor page faults per step (zeroed pages), a slower step, and slower still for PyTorch, whose CPU
allocator goes through the same malloc (the costs: docs/performance.md).

`keep_freed_memory` switches glibc's malloc to one heap that is never trimmed, so blocks freed by
one step are reused by the next. The cost: the process's resident memory stays at its high-water
mark, which is what a training process reaches anyway. It changes nothing but speed: the values
computed are the same bit for bit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

MODES = ("reuse", "system")
FLAG_HELP = (
    "Host malloc: 'reuse' keeps freed memory for the next step (w2v_jax.host_memory; no page "
    "faults for XLA:CPU's per-step buffers), 'system' leaves glibc's defaults."
)
_applied = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


def supported() -> bool:
    """Whether this process's C library is glibc, whose malloc `keep_freed_memory` configures."""
    return _glibc() is not None


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse (see the module docstring).

    Three `mallopt` settings: one arena (`M_ARENA_MAX=1`, so no allocation lands in a thread
    arena that must `mmap` large blocks), no `mmap` (`M_MMAP_MAX=0`) and no trimming
    (`M_TRIM_THRESHOLD=-1`). Process-wide and not undone; call it first thing in a launcher,
    before the first large allocation (arenas made earlier by other threads stay in use).

    Returns:
      True when applied; False, changing nothing, where the C library is not glibc (macOS,
      musl).

    Raises:
      OSError: glibc refused a setting.
    """
    libc = _glibc()
    if libc is None:
        logging.info("host_memory: not glibc; malloc left as it is")
        return False
    for name, param, value in (
        ("M_ARENA_MAX", _M_ARENA_MAX, 1),
        ("M_MMAP_MAX", _M_MMAP_MAX, 0),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, -1),
    ):
        if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success
            raise OSError(f"glibc mallopt({name}, {value}) failed")
    global _applied
    _applied = True
    return True


def mode() -> str:
    """ "reuse" once `keep_freed_memory` has been applied in this process, else "system"."""
    return "reuse" if _applied else "system"


def configure(mode: str) -> bool:
    """Applies a launcher's `--host_malloc` flag: "reuse" (`keep_freed_memory`) or "system".

    Returns:
      whether freed memory is now kept for reuse.
    """
    if mode not in MODES:
        raise ValueError(f"host malloc mode must be one of {MODES}, got {mode!r}")
    return keep_freed_memory() if mode == "reuse" else False
