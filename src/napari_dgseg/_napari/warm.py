"""One-time work napari does for the first Labels layer of a session, done when a widget is built.

napari imports :mod:`pandas` (for a layer's feature table) lazily, when the first Labels layer of
the session is constructed. The Segment and Adapt widgets build their result and preview layers
in the GUI thread, so that import (1-3 s on a loaded two-core machine, measured by
``benchmarks/gui_stall.py``) froze the viewer at the end of a run or at the first adaptation
preview. Importing it in the worker thread does not help: loading pandas' compiled modules holds
the GIL for as long, which stalls the GUI thread just the same. So the widgets call
:func:`warm_layer_imports` when they are built, while napari is docking them and the viewer is
busy anyway.

Two more one-time costs of the first Labels layer, found by profiling it against a second one in
the same viewer (``benchmarks/gui_stall.py``; GUI-thread CPU, first about 0.23 s, second about
0.11 s): its default colormap imports :mod:`skimage.color` (and with it :mod:`scipy.linalg`), and
the first anti-aliased vispy line of the paint overlays fills vispy's dash-pattern cache.
:func:`warm_layer_imports` builds a throwaway Labels layer *model* (no viewer, no Qt) and a vispy
``DashAtlas`` for those. What is left, about 0.1 s per Labels layer (its controls, the vispy
visual and the paint overlays' visuals), is per layer and cannot be done ahead; the widgets add
their layers where a step of that size does not stall a running job (``slide_preview``), spread
over several event-loop turns (``staged_add``).

Full garbage collections stall the GUI too: Python's cyclic collector, whichever thread triggers
it, walks every tracked object while holding the GIL, and a napari + torch process has
several hundred thousand of them (a full collection measured 0.05-0.3 s on the build machine,
one of them inside napari's building of a Labels layer). :func:`freeze_gc` moves the objects
alive when a widget is built (the libraries, napari's and Qt's own) out of the collector's
reach (:func:`gc.freeze`), so later full collections walk only what was made since. They are
never collected; the objects that could leak that way are those of the start-up that later end up
in unreachable reference cycles, a bounded, small set.
Inference runs in worker threads, where glibc's per-thread arenas map every large array anew
(page faults for every tile); :func:`warm_layer_imports` also sets the allocator of
:mod:`napari_dgseg.core.heap` with one shared heap (a 2048 px HoVer-Net prediction in a thread
12.4 s -> 6.0 s; process-wide, as the CLI does; ``DGSEG_LEAN_HEAP=1`` keeps glibc's arenas).
No Qt and no viewer access here.
"""

from __future__ import annotations

import gc
import importlib

from napari_dgseg.core.heap import bound_heap

__all__ = ["freeze_gc", "warm_layer_imports"]

#: Modules a napari Labels layer imports on first construction.
_LAYER_MODULES = ("pandas",)


def warm_layer_imports() -> None:
    """Import the modules a first Labels layer needs; already imported ones cost nothing.

    A missing module is left for napari to report when it needs it.
    """
    for name in _LAYER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    try:
        import numpy as np
        from napari.layers import Labels
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:
        return
    Labels(np.zeros((1, 1), np.uint8))  # its colormap's imports (skimage.color, scipy.linalg)
    DashAtlas()  # vispy's cached dash patterns, built by the first anti-aliased line
    bound_heap(share_arena=True)  # worker-thread inference reuses its arrays (module docs)
    freeze_gc()


def freeze_gc() -> None:
    """Collect once, then keep every object alive now out of later collections (module docs).

    torch is imported first (every run needs it; the Segment widget imports it when built anyway),
    so that its many module objects are frozen too.
    """
    try:
        importlib.import_module("torch")
    except ImportError:
        pass
    gc.collect()
    gc.freeze()
