"""Keep a long streamed run's memory flat: large buffers go back to the system between blocks.

Every block allocates and frees the same large arrays (the window, the blended maps, the
post-processing's working copies: 10-100 MB each). glibc's allocator raises its mmap threshold
after such frees (up to 32 MB), so later arrays of that size come from the heap, which fragments
and grows block after block: measured here, the peak resident memory of a 16k slide was 1.4x that
of a 4k slide with the same blocks. Fixing the threshold (arrays of :data:`MMAP_THRESHOLD` bytes
or more are always mapped, hence returned on free) and trimming the heap after each block keep it
at the memory of one block. Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["MMAP_THRESHOLD", "bound_heap", "release_memory"]

#: Allocations of at least this many bytes are mapped (and unmapped when freed).
MMAP_THRESHOLD = 1 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def bound_heap() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (once per process); True if set."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    libc.mallopt(_M_TRIM_THRESHOLD, 4 * MMAP_THRESHOLD)
    return ok


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
