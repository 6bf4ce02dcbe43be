"""The process's C allocator: keep freed memory for reuse instead of handing it back to the system.

The vocoder and the long forward passes allocate temporaries of tens of MB. glibc serves a block above its mmap
threshold (32 MB at most) with a fresh mapping and unmaps it when freed, so every call faults the same pages
in again: a full-size BigVGAN call over 13.7 s of audio spent 1.2-2.7 s of its 7.3-9.2 s in the kernel doing
that on a 2-core CPU. With mappings off and trimming off (``keep_freed_memory``) the same call took 5.4 s and
4.3 s of audio 1.58 s instead of 1.77 s. The cost: the process keeps its peak heap after a call.

This is what glibc's own tunables do (``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=N``)
and what jemalloc or tcmalloc with retained memory do for PyTorch on a CPU; ``mallopt`` sets it from inside the
process, so it needs no extra library and no environment. The command line calls it; a Python program may too.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest int mallopt takes: freed memory is never given back


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no mmap'd blocks, no trimming); True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
