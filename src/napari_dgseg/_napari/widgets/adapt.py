"""The Adapt dock widget: MaNi label-free adaptation of a model to the open target images.

The user picks a model and one or more target Image layers (tiles, regions of a slide), the number
of iterations and the learning rate, and presses Run. The adaptation
(:func:`napari_dgseg.core.train.adapt.adapt_steps`) runs in a napari thread worker on a deep copy
of the model; every iteration its losses reach the live plot, and every few iterations a preview
of the current prediction on the first target replaces the "adapt preview" labels layer (in the
GUI thread). Cancel stops the run: the loaded model is untouched, and what was adapted so far can
still be saved or dropped. Save writes a new versioned bundle (``<parent>-adapted-<n>``) into the
user model folder. Compare shows the parent's and the adapted model's labels side by side.
Labels layers with the shape of a target image (corrected masks) can join the run as labelled
target data.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.notify import notify, one_line
from napari_dgseg._napari.widgets._common import ModelPicker, sync_workers
from napari_dgseg.core.errors import CancelledError, DgsegError, InputError

PREVIEW_NAME = "adapt preview"
#: Largest target plane the widget reads into memory (pixels per side).
MAX_SIDE = 4096


class LossPlot(QWidget):
    """A small line plot of the segmentation and MI losses (QPainter; no extra dependency)."""

    SERIES = (("seg", QColor(66, 135, 245)), ("mi", QColor(245, 130, 48)))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.data: dict[str, list[tuple[int, float]]] = {k: [] for k, _ in self.SERIES}

    def clear(self) -> None:
        """Remove every point."""
        self.data = {k: [] for k, _ in self.SERIES}
        self.update()

    def add(self, iteration: int, logs: dict[str, float]) -> None:
        """Append the losses of one iteration (MI points only once the warm-up is over)."""
        self.data["seg"].append((iteration, float(logs.get("seg", np.nan))))
        if not logs.get("warmup"):
            self.data["mi"].append((iteration, float(logs.get("mi", np.nan))))
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 36, 8, 8, 18
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QPen(QColor(140, 140, 140), 1))
        p.drawRect(left, top, w - left - right, h - top - bottom)
        pts = [v for s in self.data.values() for _, v in s if np.isfinite(v)]
        its = [i for s in self.data.values() for i, _ in s]
        if not pts:
            p.drawText(left + 6, top + 16, "losses appear here during Run")
            p.end()
            return
        lo, hi = min(0.0, min(pts)), max(pts) * 1.05 + 1e-9
        n = max(its) if its else 1
        pw, ph = w - left - right, h - top - bottom

        def xy(i: int, v: float) -> QPointF:
            return QPointF(
                left + pw * (i - 1) / max(1, n - 1), top + ph * (1 - (v - lo) / (hi - lo))
            )

        p.drawText(2, top + 10, f"{hi:.2g}")
        p.drawText(2, h - bottom, f"{lo:.2g}")
        p.drawText(left, h - 4, "1")
        p.drawText(w - right - 40, h - 4, f"{n}")
        for k, (name, color) in enumerate(self.SERIES):
            series = [(i, v) for i, v in self.data[name] if np.isfinite(v)]
            p.setPen(QPen(color, 2))
            for a, b in zip(series, series[1:], strict=False):
                p.drawLine(xy(*a), xy(*b))
            p.drawText(left + 8 + 70 * k, top + 14, f"— {name}")
        p.end()


def layer_plane(layer: Any) -> np.ndarray:
    """The 2-D level-0 plane of an Image layer as ``(H, W, 3)`` uint8 (read into memory)."""
    from napari_dgseg.core.data.datasets import to_rgb_uint8

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    spatial = data.ndim - (1 if layer.rgb else 0)
    if spatial != 2:
        raise InputError(
            f"layer {layer.name!r} is not a 2-D image ({spatial} spatial axes); use 2-D tiles as targets"
        )
    h, w = data.shape[:2]
    if max(h, w) > MAX_SIDE:
        raise InputError(
            f"layer {layer.name!r} is {h}x{w} px; adapt on tiles or regions of at most {MAX_SIDE} px "
            "(crop regions of the slide into new layers)"
        )
    return to_rgb_uint8(np.asarray(data), f"layer {layer.name!r}")


class AdaptWidget(QWidget):
    """Dock widget: adapt a model to target image layers with MaNi, preview, compare, save."""

    run_finished = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: Any = None  # the adapted Bundle of the last run
        self.saved_path: Path | None = None
        self._worker: Any = None
        self._running = False
        self._cancel = threading.Event()
        self._preview_source: str | None = None
        self._before: np.ndarray | None = None

        self.model_picker = ModelPicker(self)
        self.targets = QListWidget()
        self.targets.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.targets.setToolTip(
            "Target image layers (unlabelled images of the new domain); select one or many"
        )
        self.targets.setMaximumHeight(110)
        self.use_labels = QCheckBox("Use matching Labels layers as labelled target data")
        self.use_labels.setToolTip(
            "A Labels layer with the shape of a target image (a corrected mask) joins the run"
        )
        self.labels_info = QLabel("")
        self.labels_info.setWordWrap(True)
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText(
            "(optional) labelled source folder; default: the model's replay set"
        )
        self.source_button = QPushButton("…")
        self.source_button.setFixedWidth(32)
        self.iters_spin = QSpinBox()
        self.iters_spin.setRange(1, 100000)
        self.iters_spin.setValue(200)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1e-1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-4)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(32, 1024)
        self.size_spin.setSingleStep(32)
        self.size_spin.setValue(256)
        self.size_spin.setToolTip("Crop side; targets must be at least this large")
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(1, 10000)
        self.preview_spin.setValue(20)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.save_button = QPushButton("Save as new version")
        self.compare_button = QPushButton("Compare before / after")
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText(
            "new bundle path (default: next <model>-adapted-<n> in your model folder)"
        )
        self.plot = LossPlot()
        self.status = QLabel("Pick a model and target image layers, then Run.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model", self.model_picker)
        form.addRow("Targets", self.targets)
        form.addRow("", self.use_labels)
        form.addRow("", self.labels_info)
        src_row = QHBoxLayout()
        src_row.addWidget(self.source_edit, 1)
        src_row.addWidget(self.source_button)
        form.addRow("Source", src_row)
        form.addRow("Iterations", self.iters_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Crop size", self.size_spin)
        form.addRow("Preview every", self.preview_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        after = QHBoxLayout()
        after.addWidget(self.save_button)
        after.addWidget(self.compare_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addWidget(self.save_edit)
        layout.addLayout(after)
        layout.addStretch(1)

        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save())
        self.compare_button.clicked.connect(self.compare)
        self.source_button.clicked.connect(self._browse_source)
        self.targets.itemSelectionChanged.connect(self._update_controls)
        self.model_picker.model_changed.connect(lambda *_: self._update_controls())
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self.refresh_layers)
        self.refresh_layers()

    # ------------------------------------------------------------------ layers
    def refresh_layers(self, *_: Any) -> None:
        """Re-list the Image layers, keeping the selection."""
        from napari.layers import Image

        chosen = {it.text() for it in self.targets.selectedItems()}
        self.targets.blockSignals(True)
        self.targets.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                item = QListWidgetItem(layer.name)
                self.targets.addItem(item)
                item.setSelected(layer.name in chosen)
        self.targets.blockSignals(False)
        self._update_controls()

    def select_targets(self, names: list[str]) -> None:
        """Select the target layers by name."""
        for i in range(self.targets.count()):
            item = self.targets.item(i)
            item.setSelected(item.text() in names)

    def selected_layers(self) -> list[Any]:
        """The selected target layers, in layer-list order."""
        names = {it.text() for it in self.targets.selectedItems()}
        return [lay for lay in self.viewer.layers if lay.name in names]

    def matching_labels(self, layers: list[Any]) -> dict[str, Any]:
        """Target name -> a Labels layer of the same 2-D shape (a corrected mask), where one exists."""
        from napari.layers import Labels

        out: dict[str, Any] = {}
        for target in layers:
            shape = (
                target.data.shape[:2]
                if not getattr(target, "multiscale", False)
                else target.data[0].shape[:2]
            )
            for lay in self.viewer.layers:
                if (
                    isinstance(lay, Labels)
                    and "what"
                    not in (lay.metadata or {}).get("provenance", {})  # preview, before/after
                    and tuple(lay.data.shape) == tuple(shape)
                ):
                    out[target.name] = lay
                    break
        return out

    def _update_controls(self, *_: Any) -> None:
        layers = self.selected_layers()
        matches = self.matching_labels(layers)
        self.use_labels.setEnabled(bool(matches) and not self._running)
        self.labels_info.setText(
            ", ".join(f"{t} ← {lab.name}" for t, lab in matches.items()) if matches else ""
        )
        self.run_button.setEnabled(not self._running)
        self.cancel_button.setEnabled(self._running)
        self.save_button.setEnabled(self.result is not None and not self._running)
        self.compare_button.setEnabled(self.result is not None and not self._running)

    def _browse_source(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Labelled source folder (images/ + labels/)"
        )
        if folder:
            self.source_edit.setText(folder)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._running

    def run(self, targets: list[Any] | None = None, *, block: bool = False) -> bool:
        """Start adapting; returns False (with a notification) on bad input.

        Parameters
        ----------
        targets : list of layers, optional
            Target layers (default: the selected ones).
        block : bool
            Run in the calling thread (tests; also with ``$DGSEG_SYNC_WORKERS=1``).
        """
        from napari.layers import Image, Labels

        if self._running:
            notify("an adaptation is already running; cancel it first", "warning")
            return False
        bundle = self.model_picker.bundle
        layers = self.selected_layers() if targets is None else list(targets)
        try:
            if bundle is None:
                raise InputError("no model loaded; pick one in the Model list")
            if not layers:
                raise InputError(
                    "no target layers selected; select one or more Image layers of the new domain"
                )
            for lay in layers:
                if isinstance(lay, Labels):
                    raise InputError(
                        f"{lay.name!r} is a Labels layer; targets are images. Tick 'Use matching Labels "
                        "layers' to use corrected masks as labelled target data"
                    )
                if not isinstance(lay, Image):
                    raise InputError(
                        f"{lay.name!r} is not an Image layer; choose image layers as targets"
                    )
            images = [layer_plane(lay) for lay in layers]
            labels = None
            if self.use_labels.isChecked():
                matches = self.matching_labels(layers)
                labels = [
                    np.asarray(matches[lay.name].data) if lay.name in matches else None
                    for lay in layers
                ]
            source = self.source_edit.text().strip() or None
        except DgsegError as exc:
            notify(exc)
            self.status.setText(one_line(exc))
            return False
        self._preview_source = layers[0].name
        self._cancel = threading.Event()
        self.result = None
        self.plot.clear()
        params = {
            "source": source,
            "target_labels": labels,
            "iters": int(self.iters_spin.value()),
            "lr": float(self.lr_spin.value()),
            "size": int(self.size_spin.value()),
            "preview": images[0],
            "preview_every": int(self.preview_spin.value()),
            "name": None,
            "command": f"napari AdaptWidget on layers {[lay.name for lay in layers]}",
        }
        self._running = True
        self._update_controls()
        self.status.setText(f"Adapting {bundle.name} to {len(layers)} target layer(s)…")
        gen_func = _adapt_generator(bundle, images, params, self._cancel)
        if block or sync_workers():
            self._drive_sync(gen_func)
            return True
        from napari.qt.threading import create_worker

        worker = create_worker(gen_func, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return True

    def _drive_sync(self, gen_func: Any) -> None:
        gen = gen_func()
        try:
            while True:
                try:
                    self._on_yielded(next(gen))
                except StopIteration as stop:
                    self._on_returned(stop.value)
                    break
        except Exception as exc:  # the same path as the worker's errored signal
            self._on_errored(exc)
        self._on_finished()

    def cancel(self) -> None:
        """Stop the run; the adapted-so-far model can still be saved, the loaded one is untouched."""
        if self._running:
            self._cancel.set()
            self.status.setText("Stopping…")

    def _on_yielded(self, item: Any) -> None:
        kind, value = item
        if kind == "before":
            self._before = value
            return
        step = value
        self.plot.add(step.iteration, step.logs)
        self.status.setText(
            f"iteration {step.iteration}/{step.iters}: seg {step.logs['seg']:.3f}"
            + ("" if step.logs.get("warmup") else f", MI {step.logs['mi']:.3f}")
            + (" (warm-up)" if step.logs.get("warmup") else "")
        )
        if step.preview is not None:
            self._show_labels(PREVIEW_NAME, step.preview)

    def _on_returned(self, bundle: Any) -> None:
        self.result = bundle
        prov = bundle.provenance
        from napari_dgseg.core.bundle import user_dir
        from napari_dgseg.core.train.adapt import next_version_path

        self.save_edit.setText(str(next_version_path(self.model_picker.bundle.name, user_dir())))
        stopped = " (stopped early)" if prov.get("stopped_early") else ""
        self.status.setText(
            f"Adapted for {prov['iterations']} iterations{stopped} in {prov['seconds']} s. "
            "Save keeps it as a new model; Compare shows before / after."
        )

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, CancelledError):
            self.status.setText("Cancelled; nothing changed.")
            return
        message = (
            one_line(exc)
            if isinstance(exc, DgsegError)
            else one_line(f"unexpected error ({type(exc).__name__}: {exc})")
        )
        notify(message)
        self.status.setText(message)

    def _on_finished(self) -> None:
        self._running = False
        self._worker = None
        self._update_controls()
        self.run_finished.emit()

    # ------------------------------------------------------------------ layers out
    def _show_labels(
        self, name: str, labels: np.ndarray, translate: tuple[float, float] | None = None
    ) -> Any:
        src = (
            self.viewer.layers[self._preview_source]
            if self._preview_source in self.viewer.layers
            else None
        )
        meta = {"source_layer": self._preview_source, "provenance": {"what": name}}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = labels
        else:
            layer = self.viewer.add_labels(labels, name=name, metadata=meta, opacity=0.5)
            if src is not None:
                layer.scale = src.scale[-2:]
                layer.translate = src.translate[-2:]
        if translate is not None:
            layer.translate = translate
        return layer

    def compare(self) -> None:
        """Labels of the parent (before) and of the adapted model (after), side by side."""
        if (
            self.result is None
            or self._before is None
            or self._preview_source not in self.viewer.layers
        ):
            notify(
                "run an adaptation first (Compare needs its before / after predictions)", "warning"
            )
            return
        from napari_dgseg.core.train.adapt import predict_labels

        src = self.viewer.layers[self._preview_source]
        after = predict_labels(self.result.model, self.result, layer_plane(src), device="cpu")
        width = after.shape[1] * float(src.scale[-1])
        t0 = tuple(float(v) for v in src.translate[-2:])
        self._show_labels(f"{src.name} before (parent)", self._before, t0)
        self._show_labels(f"{src.name} after (adapted)", after, (t0[0], t0[1] + width + 16))
        if PREVIEW_NAME in self.viewer.layers:
            self.viewer.layers[PREVIEW_NAME].visible = False
        self.viewer.reset_view()

    # ------------------------------------------------------------------ saving
    def save(
        self, path: str | Path | None = None, *, cancel: threading.Event | None = None
    ) -> Path | None:
        """Save the adapted model as a new bundle (never over the parent); returns its path."""
        from napari_dgseg.core.bundle import user_dir
        from napari_dgseg.core.train.adapt import next_version_path

        if self.result is None:
            notify("nothing to save yet: run an adaptation first", "warning")
            return None
        parent = self.model_picker.bundle
        text = str(path) if path is not None else self.save_edit.text().strip()
        target = Path(text) if text else next_version_path(parent.name, user_dir())
        if not target.name.endswith(".dgseg"):
            target = target.with_name(target.name + ".dgseg")
        if (
            parent is not None
            and parent.path is not None
            and target.exists()
            and target.resolve() == Path(parent.path).resolve()
        ):
            notify(
                f"{target} is the parent model; choose a new file name (the parent is never overwritten)"
            )
            return None
        self.result.manifest["name"] = target.name[: -len(".dgseg")]
        try:
            saved = self.result.save(target, cancel=cancel)
        except CancelledError:
            self.status.setText(
                f"Save cancelled; {target.name} was not written and every other file is unchanged."
            )
            return None
        except OSError as exc:
            notify(f"could not save {target}: {exc.strerror or exc}")
            return None
        self.saved_path = saved
        self.save_edit.setText(str(next_version_path(parent.name, user_dir())))
        self.status.setText(
            f"Saved {saved.name} (parent sha256 {self.result.provenance['parent']['sha256'][:12]}…)"
        )
        notify(f"saved adapted model {saved}", "info")
        self.model_picker.refresh()
        return saved


def _adapt_generator(
    bundle: Any, images: list[np.ndarray], params: dict, cancel: threading.Event
) -> Any:
    """A generator function for the worker: yields ("before", labels), then ("step", AdaptStep)."""

    def run():
        from napari_dgseg.core.train.adapt import adapt_steps, predict_labels

        yield ("before", predict_labels(bundle.model, bundle, params["preview"], device="cpu"))
        gen = adapt_steps(
            bundle, images, cancel=cancel, stop_on_cancel=True, device="auto", **params
        )
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            yield ("step", step)

    return run
