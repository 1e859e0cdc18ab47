"""Imports napari makes the first time a Labels layer is built, done when a widget is built.

napari imports :mod:`pandas` (for a layer's feature table) lazily, when the first Labels layer of
the session is constructed. The Segment and Adapt widgets build their result and preview layers
in the GUI thread, so that import (1-3 s on a loaded two-core machine, measured by
``benchmarks/gui_stall.py``) froze the viewer at the end of a run or at the first adaptation
preview. Importing it in the worker thread does not help: loading pandas' compiled modules holds
the GIL for as long, which stalls the GUI thread just the same. So the widgets call
:func:`warm_layer_imports` when they are built, while napari is docking them and the viewer is
busy anyway. No Qt and no viewer access here.
"""

from __future__ import annotations

import importlib

__all__ = ["warm_layer_imports"]

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
