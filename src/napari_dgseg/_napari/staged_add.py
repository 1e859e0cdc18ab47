"""A result layer put into napari one step per event-loop turn, so that no one turn stalls it.

The Segment widget (a streamed slide's result) and the Adapt widget (its preview) add a Labels
layer when Run is pressed (``slide_preview``). napari builds such a layer in the GUI thread, in
the one call that inserts it; measured on the build machine
(``benchmarks/gui_stall.py --scenario run-turns``, GUI-thread CPU at load 0.3-0.9) the whole Run
took 76-156 ms in one turn of the event loop, against the 100 ms the viewer may freeze:

* building the layer model (``Layer.create``): 4-13 ms;
* the vispy visuals of the two paint-tool overlays napari gives every Labels layer (polygon and
  brush circle; 19-33 ms together), built at insertion although no paint tool is active;
* the layer's own vispy visual (8-14 ms), its first slicing and draw call (4-20 ms), its
  controls (10-20 ms), the viewer model's and the layer list's own handling of the insertion
  and the activation of the new layer (18-32 ms).

:class:`StagedAdd` splits that over several turns, each started by a zero ``QTimer``, so that
the viewer repaints and handles input between them: the layer is built in the turn of Run with
its paint overlays hidden (napari builds an overlay's visual only once it is visible), a layer
of the same name left by an earlier run is removed in the next turn, the new one is inserted in
the next (hidden, and not yet made the active layer), shown in the next (napari slices and
draws it then), made active in the next, then each paint overlay is shown again in a turn of its
own (the user sees nothing of this: the overlays draw only while
their paint tool is active). The job's worker waits for
:attr:`StagedAdd.ready` (:func:`after_ready`), so it does not compete with those turns for the
interpreter lock; a synchronous run does every step at once.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari_dgseg.core.errors import CancelledError

__all__ = ["PAINT_OVERLAYS", "StagedAdd", "after_ready", "hide_paint_overlays"]

log = logging.getLogger("napari_dgseg")

#: Keys of the paint-tool overlays of a napari Labels layer (``layer._overlays``).
PAINT_OVERLAYS = ("polygon", "brush_stroke")


def hide_paint_overlays(layer: Any) -> list[Any]:
    """Hide the paint-tool overlays of ``layer`` that are visible; returns those hidden.

    napari builds an overlay's vispy visual when the overlay is (or becomes) visible, so a layer
    inserted with them hidden is inserted without that work. Nothing is hidden for a layer
    without them (another layer type, or a napari that keeps them elsewhere).
    """
    overlays = getattr(layer, "_overlays", None)
    hidden = []
    for key in PAINT_OVERLAYS:
        try:
            overlay = overlays[key] if overlays is not None and key in overlays else None
        except (KeyError, TypeError):
            overlay = None
        if overlay is not None and bool(getattr(overlay, "visible", False)):
            overlay.visible = False
            hidden.append(overlay)
    return hidden


class StagedAdd:
    """Insert ``layer`` into ``viewer`` over several event-loop turns (see the module docstring).

    A layer of the same name and type already in the viewer (an earlier run's result) is
    replaced at its place in the list, keeping its visibility and opacity.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Layer
        Built, not yet in the viewer.

    Nothing happens until :meth:`start_job`.

    Attributes
    ----------
    ready : threading.Event
        Set when every step is done (or the staging was aborted or failed): the worker may go.
    """

    def __init__(self, viewer: Any, layer: Any) -> None:
        self.viewer = viewer
        self.layer = layer
        self.ready = threading.Event()
        self._aborted = False
        self._index: int | None = None
        hidden = hide_paint_overlays(layer)
        self._steps: list[Callable[[], None]] = []
        if self._old_layer() is not None:
            self._steps.append(self._remove_old)
        self._steps.append(self._insert)
        self._steps += [lambda o=overlay: setattr(o, "visible", True) for overlay in hidden]

    def start_job(self, start: Callable[..., Any], job: Callable[..., Any], *, sync: bool,
                  **kwargs: Any) -> Any:
        """Start ``job`` with ``start`` (a :meth:`TaskRunner.start`), its worker waiting for
        :attr:`ready` (:func:`after_ready`); returns what ``start`` returns.

        ``sync``: every step now, then the job in this thread. Otherwise the worker starts first
        and the steps from the next turn of the event loop on: ``start`` opens napari's progress
        bar, which runs the event loop itself, and a step run there would join this turn.
        """
        gated = after_ready(job, self.ready)
        if sync:
            while self._steps and not self._aborted:
                self._run_one()
            self.ready.set()
            return start(gated, sync=True, **kwargs)
        outcome = start(gated, sync=False, **kwargs)
        if self._steps and not self._aborted:
            self._schedule()
        else:
            self.ready.set()
        return outcome

    @property
    def done(self) -> bool:
        """True when nothing is left to do (all steps done, or aborted)."""
        return self.ready.is_set()

    def abort(self) -> None:
        """Do no further step (a cancelled run whose layer is dropped); releases the worker."""
        self._aborted = True
        self._steps.clear()
        self.ready.set()

    def _old_layer(self) -> Any:
        name = self.layer.name
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if old is None or old is self.layer or old._type_string != self.layer._type_string:
            return None
        return old

    def _remove_old(self) -> None:
        old = self._old_layer()
        if old is None:
            return
        self.layer.visible = old.visible
        self.layer.opacity = old.opacity
        self._index = self.viewer.layers.index(old)
        self.viewer.layers.remove(old)

    def _insert(self) -> None:
        layers = self.viewer.layers
        # napari makes an inserted layer the active one (its controls shown, the others'
        # hidden, ~8 ms); that is a later step's work where the list lets it be put off
        defer = hasattr(layers, "_activate_on_insert") and bool(layers._activate_on_insert)
        if defer:
            layers._activate_on_insert = False
            self._steps.insert(0, self._select)
        # napari slices a visible layer (twice for a multiscale one) and draws it when it is
        # inserted; inserted hidden, that is the next step's work
        if self.layer.visible:
            self.layer.visible = False
            self._steps.insert(0, self._show)
        try:
            layers.insert(len(layers) if self._index is None else self._index, self.layer)
        finally:
            if defer:
                layers._activate_on_insert = True

    def _show(self) -> None:
        self.layer.visible = True

    def _select(self) -> None:
        if self.layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.layer

    def _schedule(self) -> None:
        from qtpy.QtCore import QTimer

        # a lambda, not the bound method: PyQt holds a bound method's object weakly, and nothing
        # else may hold this staging while its steps are pending
        QTimer.singleShot(0, lambda: self._next())

    def _next(self) -> None:
        if self._aborted:
            return
        self._run_one()
        if self._steps and not self._aborted:
            self._schedule()
        else:
            self.ready.set()

    def _run_one(self) -> None:
        step = self._steps.pop(0)
        try:
            step()
        except Exception:  # a viewer closed meanwhile: stop here, let the job go on
            log.debug("adding the result layer in steps failed", exc_info=True)
            self.abort()


def _wait(ready: threading.Event, cancel: threading.Event) -> None:
    """Wait for ``ready``; a cancel meanwhile ends the job before it starts."""
    while not ready.wait(0.02) and not cancel.is_set():
        pass
    if cancel.is_set():
        raise CancelledError("cancelled before the run started")


class _After:
    """A plain job started once ``ready`` is set."""

    def __init__(self, job: Callable[..., Any], ready: threading.Event) -> None:
        self.job, self.ready = job, ready

    def __call__(self, progress: Callable[[int, int], Any], cancel: threading.Event) -> Any:
        _wait(self.ready, cancel)
        return self.job(progress, cancel)


class _AfterGen:
    """A generator job started once ``ready`` is set."""

    def __init__(self, job: Callable[..., Any], ready: threading.Event) -> None:
        self.job, self.ready = job, ready

    def __call__(self, progress: Callable[[int, int], Any],
                 cancel: threading.Event) -> Generator[Any, None, Any]:
        _wait(self.ready, cancel)
        return (yield from self.job(progress, cancel))


def after_ready(job: Callable[..., Any], ready: threading.Event) -> Callable[..., Any]:
    """``job`` (a :class:`~napari_dgseg._napari.runner.TaskRunner` job) that first waits for
    ``ready`` in the worker; a generator job stays one (the runner relays what it yields)."""
    gen = inspect.isgeneratorfunction(job) or inspect.isgeneratorfunction(
        getattr(job, "__call__", None))  # noqa: B004 (a callable object's generator method)
    return _AfterGen(job, ready) if gen else _After(job, ready)
