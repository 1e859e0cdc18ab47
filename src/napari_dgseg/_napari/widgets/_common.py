"""Building blocks shared by the napari-dgseg dock widgets.

* :class:`LayerPicker`: a combo box of the viewer's layers of some types, kept in sync with the
  layer list (inserted, removed, moved, renamed).
* :class:`ModelPicker`: shipped + user model bundles, a "Browse…" button for a ``.dgseg`` file and
  a one-line description of the loaded model; bundles load in a thread worker and a bad bundle
  leaves the previous model in place.
* :class:`TaskRunner`: runs ``func(progress, cancel)`` in a napari thread worker, relays progress
  to the GUI thread (and to a napari progress bar), and turns the outcome into one of three
  signals: ``succeeded``, ``failed`` (a one-line message, never a traceback) or ``cancelled``.
* :func:`provenance_metadata`: the ``layer.metadata`` dict every output layer carries.

Set the environment variable ``DGSEG_SYNC_WORKERS=1`` (or pass ``block=True``) to run the work in
the calling thread, which makes widget tests deterministic; the GUI path stays threaded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Qt, Signal, Slot
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.notify import notify, one_line
from napari_dgseg.core.errors import CancelledError, DgsegError

__all__ = [
    "LayerPicker",
    "ModelPicker",
    "TaskRunner",
    "notify",
    "provenance_metadata",
    "sync_workers",
]

log = logging.getLogger("napari_dgseg")

#: Environment variable that makes every widget worker run synchronously (tests, scripts).
SYNC_ENV = "DGSEG_SYNC_WORKERS"

#: Work function run by :class:`TaskRunner`: ``func(progress, cancel) -> result`` where
#: ``progress(done, total)`` may be called from the worker thread.
WorkFn = Callable[[Callable[[int, int], None], threading.Event], Any]


def sync_workers() -> bool:
    """True when ``$DGSEG_SYNC_WORKERS`` asks for workers to run in the calling thread."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes")


def provenance_metadata(provenance: dict[str, Any], source_layer: str) -> dict[str, Any]:
    """The ``layer.metadata`` of an output layer.

    Parameters
    ----------
    provenance : dict
        What made the layer (model, sha256, tile, overlap, device, region, source path, ...).
    source_layer : str
        Name of the image layer the output was computed from.

    Returns
    -------
    dict
        ``{"provenance": provenance, "source_layer": source_layer}`` (``provenance`` copied).
    """
    return {"provenance": dict(provenance), "source_layer": str(source_layer)}


# ---------------------------------------------------------------------- layer picker
class LayerPicker(QComboBox):
    """Combo box listing the viewer's layers of the given type(s), newest last.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layer list is followed.
    layer_types : type or tuple of types
        napari layer classes to offer (e.g. ``napari.layers.Image``).
    placeholder : str
        Text shown when no layer of these types exists.
    """

    def __init__(
        self,
        viewer: Any,
        layer_types: type | tuple[type, ...],
        placeholder: str = "(no layer)",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types if isinstance(layer_types, tuple) else (layer_types,)
        self._placeholder = placeholder
        self._exclude: Callable[[Any], bool] | None = None
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)
        events.moved.connect(self._refresh_event)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh_event)
        self.refresh()

    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        layer.events.name.connect(self._refresh_event)
        # A newly opened layer becomes the selection; outputs of napari-dgseg (which carry a
        # "source_layer") do not, so a result never replaces the image the user was working on.
        is_output = isinstance(layer.metadata, dict) and "source_layer" in layer.metadata
        fresh = isinstance(layer, self._types) and not is_output
        self.refresh(prefer=layer if fresh else None)

    def _on_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._refresh_event)
        self.refresh()

    def _refresh_event(self, event: Any = None) -> None:
        self.refresh()

    def layers(self) -> list[Any]:
        """Layers of the accepted types (and not excluded), in viewer order."""
        exclude = self._exclude
        return [
            lyr
            for lyr in self._viewer.layers
            if isinstance(lyr, self._types) and not (exclude is not None and exclude(lyr))
        ]

    def set_exclude(self, exclude: Callable[[Any], bool] | None) -> None:
        """Hide the layers for which ``exclude(layer)`` is True (None: offer all) and refresh."""
        self._exclude = exclude
        self.refresh()

    def refresh(self, prefer: Any = None) -> None:
        """Rebuild the list, keeping the current layer selected (or ``prefer`` if given)."""
        try:
            current = prefer if prefer is not None else self.layer()
            self.blockSignals(True)
            self.clear()
            candidates = self.layers()
            for lyr in candidates:
                self.addItem(lyr.name, lyr)
            if not candidates:
                self.addItem(self._placeholder, None)
            if current is not None and current in candidates:
                self.setCurrentIndex(candidates.index(current))
            elif candidates:
                self.setCurrentIndex(len(candidates) - 1)
            self.blockSignals(False)
            self.currentIndexChanged.emit(self.currentIndex())
        except RuntimeError:  # the Qt object is gone (widget closed before the viewer)
            return

    def layer(self) -> Any:
        """The selected layer, or None."""
        data = self.currentData()
        return data if data is not None and data in self._viewer.layers else None

    def set_layer(self, layer: Any) -> None:
        """Select ``layer`` (must be one of :meth:`layers`)."""
        candidates = self.layers()
        if layer in candidates:
            self.setCurrentIndex(candidates.index(layer))


# ---------------------------------------------------------------------- task runner
class TaskRunner(QObject):
    """Run one piece of long work at a time off the GUI thread, with progress and cancel.

    Signals (all delivered in the GUI thread)
    -----------------------------------------
    progressed(int, int)
        ``done, total`` as reported by the work function.
    succeeded(object)
        The work function's return value (not emitted if cancel was requested meanwhile).
    failed(str)
        One-line user message (from a :class:`DgsegError` or an unexpected exception, which is
        also logged with its traceback).
    cancelled()
        The user cancelled; no result.
    finished()
        Always last, after one of the three above.
    """

    progressed = Signal(int, int)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, description: str = "Working", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.description = description
        self._cancel = threading.Event()
        self._running = False
        self._worker: Any = None
        self._pbar: Any = None
        self._pbar_done = 0
        self.progressed.connect(self._on_progress)

    @property
    def running(self) -> bool:
        """True from :meth:`start` until ``finished`` has been emitted."""
        return self._running

    @property
    def worker(self) -> Any:
        """The napari worker of the current/last threaded run (None for blocking runs)."""
        return self._worker

    def cancel(self) -> None:
        """Ask the running work to stop (it checks the event between steps)."""
        if self._running:
            self._cancel.set()

    def start(self, func: WorkFn, *, block: bool = False, description: str | None = None) -> None:
        """Run ``func(progress, cancel)``.

        Parameters
        ----------
        func : callable
            ``func(progress, cancel) -> result``; ``progress(done, total)`` may be called from
            the worker thread; ``cancel`` is a :class:`threading.Event`.
        block : bool
            Run in the calling thread (also when ``$DGSEG_SYNC_WORKERS=1``).
        description : str
            Text of the napari progress bar.

        Raises
        ------
        RuntimeError
            If a run is already in progress (callers disable their buttons meanwhile).
        """
        if self._running:
            raise RuntimeError(f"{self.description}: a run is already in progress")
        if description:
            self.description = description
        self._cancel = threading.Event()
        self._running = True
        self._pbar_done = 0
        cancel = self._cancel

        def progress(done: int, total: int) -> None:
            self.progressed.emit(int(done), int(total))

        if block or sync_workers():
            self._worker = None
            self._on_outcome(_guarded(func, progress, cancel))
            self._on_finished()
            return
        from napari.qt.threading import create_worker

        worker = create_worker(_guarded, func, progress, cancel, _start_thread=False)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    @Slot(int, int)
    def _on_progress(self, done: int, total: int) -> None:
        if total <= 0:
            return
        try:
            if self._pbar is None:
                from napari.utils import progress as napari_progress

                self._pbar = napari_progress(total=total, desc=self.description)
                self._pbar_done = 0
            step = done - self._pbar_done
            if step > 0:
                self._pbar.update(step)
                self._pbar_done = done
        except Exception:  # a progress bar must never break the work it reports on
            log.debug("progress bar update failed", exc_info=True)

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:
                log.debug("closing the progress bar failed", exc_info=True)
            self._pbar = None

    def _on_outcome(self, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        self._close_pbar()
        if kind == "ok" and self._cancel.is_set():
            kind = "cancelled"
        if kind == "ok":
            self.succeeded.emit(value)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(str(value))

    def _on_finished(self) -> None:
        self._close_pbar()
        self._running = False
        self.finished.emit()


def _guarded(
    func: WorkFn, progress: Callable[[int, int], None], cancel: threading.Event
) -> tuple[str, Any]:
    """Call ``func`` and turn every exception into an outcome, so no traceback reaches the user."""
    try:
        return "ok", func(progress, cancel)
    except CancelledError:
        return "cancelled", None
    except DgsegError as exc:
        return "error", one_line(exc)
    except MemoryError:
        return "error", (
            "not enough memory for this image; segment a drawn rectangle or the current view, "
            "or use a smaller tile size"
        )
    except Exception as exc:  # unexpected: keep the viewer alive, log the details
        log.exception("napari-dgseg: unexpected error")
        return "error", one_line(
            f"unexpected error ({type(exc).__name__}: {exc}); the details are in the terminal log"
        )


# ---------------------------------------------------------------------- model picker
def describe_bundle(manifest: dict[str, Any]) -> str:
    """One line about a model: family, classes, training domains, validation scores."""
    parts = [str(manifest.get("family", "?"))]
    classes = [c.get("name", "?") for c in manifest.get("classes", [])]
    if classes:
        parts.append("classes: " + ", ".join(classes))
    prov = manifest.get("provenance", {}) or {}
    domains = [s.get("domain") for s in prov.get("sources", []) if isinstance(s, dict)]
    domains = [d for d in domains if d]
    if domains:
        parts.append("trained on: " + ", ".join(domains))
    metrics = prov.get("val_metrics", {}) or {}
    scores = [f"{k} {float(metrics[k]):.3f}" for k in ("dice", "aji", "pq") if k in metrics]
    if scores:
        parts.append("validation " + ", ".join(scores))
    elif prov:
        parts.append("no validation scores recorded")
    return " · ".join(parts)


class ModelPicker(QWidget):
    """Pick and load a model bundle.

    A combo box of the shipped and user bundles (``name (family)``), a "Browse…" button for a
    ``.dgseg`` file anywhere, a refresh button, and an info line. Loading runs in a thread worker;
    a bundle that fails to load is reported in a notification and the previous model stays.

    Signals
    -------
    model_changed(object)
        The newly loaded :class:`~napari_dgseg.core.bundle.Bundle`.
    loading_changed(bool)
        True while a bundle is being loaded.
    """

    model_changed = Signal(object)
    loading_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, *, autoload: bool = True) -> None:
        super().__init__(parent)
        self._bundle: Any = None
        self._loaded_key: str | None = None
        self._runner = TaskRunner("Loading model", self)
        self._runner.succeeded.connect(self._on_loaded)
        self._runner.failed.connect(self._on_failed)
        self._runner.finished.connect(lambda: self.loading_changed.emit(False))
        self._pending_key: str | None = None

        self.combo = QComboBox()
        self.combo.setToolTip("Shipped models and those in your model folder")
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(14)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setToolTip("Open a .dgseg model file")
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Re-scan the model folders (after training or adapting)")
        self.refresh_button.setFixedWidth(32)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setStyleSheet("color: palette(mid);")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info)

        self.browse_button.clicked.connect(self.browse)
        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.combo.activated.connect(self._on_activated)
        self.refresh()
        if autoload and self.combo.currentData() is not None:
            self.load(self.combo.currentData())

    # -------------------------------------------------------------- state
    @property
    def bundle(self) -> Any:
        """The loaded bundle, or None."""
        return self._bundle

    @property
    def loading(self) -> bool:
        return self._runner.running

    @property
    def runner(self) -> TaskRunner:
        return self._runner

    def refresh(self) -> None:
        """Re-list the shipped and user bundles, keeping the loaded model selected."""
        from napari_dgseg.core.bundle import list_bundles

        try:
            rows = list_bundles()
        except OSError as exc:
            rows = []
            notify(f"cannot list the model folders: {exc}", "warning")
        self.combo.blockSignals(True)
        self.combo.clear()
        for row in rows:
            label = f"{row['name']} ({row['family']}{', yours' if row['where'] == 'user' else ''})"
            self.combo.addItem(label, str(row["path"]))
            self.combo.setItemData(
                self.combo.count() - 1, row.get("description", ""), Qt.ItemDataRole.ToolTipRole
            )
        if self._loaded_key is not None and self._find(self._loaded_key) < 0:
            self._add_file_item(self._loaded_key)
        if self._loaded_key is not None:
            self.combo.setCurrentIndex(self._find(self._loaded_key))
        self.combo.blockSignals(False)
        if self.combo.count() == 0:
            self.info.setText(
                "No models found. Use Browse… to open a .dgseg file, or train one with "
                "`dgseg train`."
            )

    def _find(self, key: str) -> int:
        for i in range(self.combo.count()):
            if self.combo.itemData(i) == key:
                return i
        return -1

    def _add_file_item(self, path: str) -> int:
        self.combo.addItem(f"{Path(path).name} (file)", path)
        return self.combo.count() - 1

    # -------------------------------------------------------------- loading
    def browse(self) -> None:
        """Ask for a ``.dgseg`` file and load it."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a napari-dgseg model", "", "napari-dgseg models (*.dgseg);;All files (*)"
        )
        if path:
            self.load(path)

    def _on_activated(self, index: int) -> None:
        key = self.combo.itemData(index)
        if key is not None and key != self._loaded_key:
            self.load(key)

    def load(self, name_or_path: str | os.PathLike, *, block: bool = False) -> None:
        """Load a bundle by name or path in a worker; on failure keep the previous model."""
        if self._runner.running:
            notify("a model is already loading; wait for it to finish", "warning")
            return
        key = str(name_or_path)
        self._pending_key = key
        self.info.setText(f"Loading {Path(key).name}…")
        self.loading_changed.emit(True)

        def work(progress: Callable[[int, int], None], cancel: threading.Event) -> Any:
            from napari_dgseg.core.bundle import load_bundle

            bundle = load_bundle(key)
            _ = bundle.model  # build the network now: weight/config mismatches surface here
            return bundle

        self._runner.start(work, block=block, description="Loading model")

    def _on_loaded(self, bundle: Any) -> None:
        key = str(bundle.path) if bundle.path is not None else self._pending_key
        self._bundle = bundle
        self._loaded_key = key
        self.combo.blockSignals(True)
        index = self._find(key) if key is not None else -1
        if index < 0 and key is not None:
            index = self._add_file_item(key)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)
        self.info.setText(describe_bundle(bundle.manifest))
        self.info.setToolTip(str(bundle.manifest.get("description", "")))
        self.model_changed.emit(bundle)

    def _on_failed(self, message: str) -> None:
        notify(f"could not load the model: {message}", "error")
        self.combo.blockSignals(True)
        if self._loaded_key is not None:
            self.combo.setCurrentIndex(self._find(self._loaded_key))
        self.combo.blockSignals(False)
        if self._bundle is not None:
            self.info.setText(describe_bundle(self._bundle.manifest))
        else:
            self.info.setText("No model loaded. Pick one above or use Browse….")


def disable_unavailable(combo: QComboBox, available: Sequence[bool], reason: str) -> None:
    """Grey out the items of ``combo`` whose ``available`` flag is False (tooltip ``reason``)."""
    model = combo.model()
    for i, ok in enumerate(available):
        item = model.item(i) if hasattr(model, "item") else None
        if item is None:
            continue
        item.setEnabled(bool(ok))
        if not ok:
            item.setToolTip(reason.format(name=combo.itemText(i)))
