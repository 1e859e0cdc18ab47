"""Keep long CPU runs fast and their memory flat: glibc's allocator, set once per process.

Every tile and block allocates and frees the same large arrays (network activations of
20-100 MB, the window, the blended maps, the post-processing's working copies). With glibc's
defaults, arrays above its mmap threshold (dynamic, at most 32 MB) are mapped fresh for every
allocation: each one costs page faults and zero-filling in the kernel, and a network pass
allocates dozens. Measured on this project's 2 CPU cores (docs/whole-slides.md, "The
allocator"): a 2048 px HoVer-Net prediction spent 6.4 s of 13.7 s in the kernel (3 M page faults);
with arrays up to :data:`HEAP_THRESHOLD` served from the heap and reused it took 7.0 s (0.6 s in
the kernel); a streamed 4k slide with the U-Net ran 2.3x faster.

:func:`bound_heap` (called by the CLI at start, by whole-slide streaming, and by the widgets when
built, with every thread sharing the main heap) fixes the mmap and trim thresholds at
:data:`HEAP_THRESHOLD`, so large arrays are reused instead of re-mapped, and
:func:`release_memory` (after every streamed block) trims the heap, so the memory of one block is
given back before the next: the peak stays that of one block whatever the slide's size. The
price is a higher peak than mapping every array (4k slide, U-Net: 1.40 GB against 0.95 GB). On
a machine short of memory, ``DGSEG_LEAN_HEAP=1`` keeps the lean setting (arrays of 1 MB or more
always mapped, hence returned at once on free; slower). Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

__all__ = ["HEAP_THRESHOLD", "LEAN_THRESHOLD", "bound_heap", "heap_threshold", "release_memory"]

#: Allocations below this many bytes come from the heap and are reused (the default).
HEAP_THRESHOLD = 1 << 30
#: With ``DGSEG_LEAN_HEAP=1``: allocations of at least this many bytes are always mapped.
LEAN_THRESHOLD = 1 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc, or None (another C library, or none found). ``libc.so.6`` first: looking a library
    up by name (``ctypes.util.find_library``) runs ``ldconfig``, too slow for every CLI start."""
    for name in ("libc.so.6", None):
        if name is None:
            from ctypes.util import find_library

            name = find_library("c")
            if not name:
                return None
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


def heap_threshold() -> int:
    """The mmap threshold :func:`bound_heap` sets: lean with ``DGSEG_LEAN_HEAP=1``, else large."""
    lean = os.environ.get("DGSEG_LEAN_HEAP", "").strip().lower() in ("1", "true", "yes", "on")
    return LEAN_THRESHOLD if lean else HEAP_THRESHOLD


def bound_heap(share_arena: bool = False) -> bool:
    """Fix glibc's mmap and trim thresholds at :func:`heap_threshold`; True if set.

    ``share_arena``: every thread allocates from the main heap (``M_ARENA_MAX`` 1). glibc gives
    each new thread an arena of its own whose heaps hold at most 64 MB, so a worker thread's
    large arrays are mapped fresh whatever the threshold; napari runs inference in worker
    threads (the widgets set this when built: a 2048 px HoVer-Net prediction in a thread,
    12.4 s -> 6.0 s, ``benchmarks/heap_speed.py --where thread``). Threads that already have an arena keep it.
    """
    libc = _libc()
    if libc is None:
        return False
    threshold = heap_threshold()
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    libc.mallopt(_M_TRIM_THRESHOLD, threshold if threshold == HEAP_THRESHOLD else 4 * threshold)
    if share_arena and threshold == HEAP_THRESHOLD:
        ok = bool(libc.mallopt(_M_ARENA_MAX, 1)) and ok
    return ok


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
