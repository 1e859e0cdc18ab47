"""The Codebook dock widget: SQ-VAE codebook-index maps, code usage and the domain-shift score.

Pick an image layer and an ``sqvae`` model, press *Run*: the image is segmented in a thread
worker (progress bar, *Cancel*), and the widget adds

* ``"<image> codebook (<model>)"``: a Labels layer of the ``e_alpha`` code index of every pixel,
  coloured with one hue family per class group (all background codes bluish, all nucleus codes
  reddish, ...), so the class a code stands for is visible at a glance; napari's status bar shows
  the code index under the cursor and the widget shows its class group;
* a bar plot of this image's code usage (coloured bars) against the training data's usage (black
  line), and the domain-shift score with a warning when it exceeds the model's calibrated
  threshold.

Only the layer creation happens in the GUI thread; inference, histograms and the colour table are
computed in the worker, so a 2048 x 2048 image does not freeze the viewer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.widgets._common import (
    LayerPicker,
    ModelPicker,
    TaskRunner,
    notify,
    provenance_metadata,
)
from napari_dgseg.core.errors import InputError

__all__ = ["CodebookWidget", "UsagePlot", "codebook_colormap"]

SQVAE = "sqvae"


def codebook_colormap(colors: dict[int, tuple[float, float, float, float]]) -> Any:
    """napari ``DirectLabelColormap`` from ``{code: rgba}`` (every code opaque, others clear)."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
    for code, rgba in colors.items():
        color_dict[int(code)] = np.asarray(rgba, dtype=np.float32)
    return DirectLabelColormap(color_dict=color_dict)


class UsagePlot(QWidget):
    """Bar plot of code usage: this image (bars in the code colours) vs training (black line).

    Codes are in index order, so each class group is a contiguous stretch of one hue family.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.usage: np.ndarray | None = None
        self.reference: np.ndarray | None = None
        self.colors: dict[int, tuple[float, float, float, float]] = {}
        self.groups: np.ndarray | None = None
        self.class_names: tuple[str, ...] = ()
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Fraction of pixels using each code: bars = this image, black line = the training data"
        )

    def set_data(
        self,
        usage: np.ndarray,
        reference: np.ndarray | None,
        colors: dict[int, tuple[float, float, float, float]],
        groups: np.ndarray,
        class_names: tuple[str, ...],
    ) -> None:
        """Show ``usage`` ``(N,)`` and ``reference`` ``(N,)`` (or None)."""
        self.usage = np.asarray(usage, np.float64)
        self.reference = None if reference is None else np.asarray(reference, np.float64)
        self.colors = dict(colors)
        self.groups = np.asarray(groups)
        self.class_names = tuple(class_names)
        self.update()

    def clear(self) -> None:
        self.usage = self.reference = None
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
            rect = QRectF(self.rect()).adjusted(4, 4, -4, -18)
            p.fillRect(self.rect(), self.palette().base())
            text_pen = QPen(self.palette().text().color())
            if self.usage is None:
                p.setPen(text_pen)
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter, "Run to plot the code usage")
                return
            n = self.usage.size
            top = float(self.usage.max())
            if self.reference is not None:
                top = max(top, float(self.reference.max()))
            top = top if top > 0 else 1.0
            w = rect.width() / max(n, 1)
            for i, v in enumerate(self.usage):
                if v <= 0:
                    continue
                r, g, b, _ = self.colors.get(i, (0.5, 0.5, 0.5, 1.0))
                h = rect.height() * float(v) / top
                p.fillRect(
                    QRectF(rect.left() + i * w, rect.bottom() - h, max(w, 1.0), h),
                    QColor.fromRgbF(r, g, b, 1.0),
                )
            if self.reference is not None:
                pen = QPen(
                    QColor(0, 0, 0)
                    if self.palette().base().color().lightness() > 128
                    else QColor(255, 255, 255)
                )
                pen.setWidthF(1.5)
                p.setPen(pen)
                pts = [
                    QPointF(
                        rect.left() + (i + 0.5) * w, rect.bottom() - rect.height() * float(v) / top
                    )
                    for i, v in enumerate(self.reference)
                ]
                for a, b in zip(pts[:-1], pts[1:], strict=True):
                    p.drawLine(a, b)
            # class-group ticks under the axis
            p.setPen(text_pen)
            if self.groups is not None and self.groups.size == n:
                for g in np.unique(self.groups):
                    idx = np.flatnonzero(self.groups == g)
                    x0 = rect.left() + idx[0] * w
                    x1 = rect.left() + (idx[-1] + 1) * w
                    name = self.class_names[g] if g < len(self.class_names) else str(g)
                    p.drawLine(QPointF(x0, rect.bottom() + 2), QPointF(x1 - 1, rect.bottom() + 2))
                    p.drawText(
                        QRectF(x0, rect.bottom() + 3, x1 - x0, 14),
                        Qt.AlignmentFlag.AlignCenter,
                        f"{name} codes",
                    )
        finally:
            p.end()


@dataclass
class _Result:
    """What the worker hands to the GUI thread."""

    indices: np.ndarray
    colors: dict[int, tuple[float, float, float, float]]
    report: Any
    kwargs: dict[str, Any]


class CodebookWidget(QWidget):
    """Dock widget: codebook-index map, code-usage plot and domain-shift score.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import napari

        self.viewer = napari_viewer
        self._layer: Any = None
        self._groups: np.ndarray | None = None
        self._class_names: tuple[str, ...] = ()
        self.last_report: Any = None

        self.image_picker = LayerPicker(napari_viewer, napari.layers.Image, "(open an image)")
        self.image_picker.setToolTip("Image layer to analyse (RGB, grey, multiscale: level 0)")
        self.model_picker = ModelPicker(self, autoload=False)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Compute the codebook-index map of the whole image")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.score_label = QLabel("Domain-shift score: run a model first.")
        self.score_label.setWordWrap(True)
        self.hover_label = QLabel("")
        self.hover_label.setStyleSheet("color: palette(mid);")
        self.plot = UsagePlot()

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Image"))
        layout.addWidget(self.image_picker)
        layout.addWidget(QLabel("SQ-VAE model"))
        layout.addWidget(self.model_picker)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(QLabel("Code usage: this image (bars) vs training (line)"))
        layout.addWidget(self.plot)
        layout.addWidget(self.score_label)
        layout.addWidget(self.hover_label)
        layout.addStretch(1)

        self.runner = TaskRunner("Codebook", self)
        self.runner.progressed.connect(self._on_progress)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.finished.connect(self._update_controls)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.model_picker.loading_changed.connect(lambda *_: self._update_controls())
        self.model_picker.model_changed.connect(self._on_model)
        self.image_picker.currentIndexChanged.connect(lambda *_: self._update_controls())
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._select_first_sqvae()
        self._update_controls()

    # -------------------------------------------------------------- model
    def _select_first_sqvae(self) -> None:
        combo = self.model_picker.combo
        for i in range(combo.count()):
            if f"({SQVAE}" in combo.itemText(i):
                combo.setCurrentIndex(i)
                self.model_picker.load(combo.itemData(i))
                return
        self.model_picker.info.setText(
            "No sqvae model found: train one with `dgseg train sqvae ...` or use Browse…"
        )

    def _on_model(self, bundle: Any) -> None:
        if bundle.family_name != SQVAE:
            self.score_label.setText(
                f"{bundle.name!r} is a {bundle.family_name!r} model; pick an sqvae model."
            )
        self._update_controls()

    @property
    def running(self) -> bool:
        return self.runner.running

    def _update_controls(self, *_: Any) -> None:
        try:
            bundle = self.model_picker.bundle
            ok = (
                bundle is not None
                and bundle.family_name == SQVAE
                and self.image_picker.layer() is not None
                and not self.model_picker.loading
            )
            self.run_button.setEnabled(ok and not self.runner.running)
            self.cancel_button.setEnabled(self.runner.running)
        except RuntimeError:  # widget already deleted
            return

    # -------------------------------------------------------------- run
    def run(self, block: bool = False) -> None:
        """Analyse the selected image with the selected model (in a worker unless ``block``)."""
        from napari_dgseg._napari.widgets.segment import _level0_plane

        layer = self.image_picker.layer()
        bundle = self.model_picker.bundle
        if layer is None:
            notify("open an image first", "warning")
            return
        if bundle is None or bundle.family_name != SQVAE:
            notify("pick an sqvae model (train one with `dgseg train sqvae`)", "warning")
            return
        try:
            plane, _ = _level0_plane(layer, self.viewer)
        except InputError as exc:
            notify(str(exc), "warning")
            return
        image_name = layer.name
        scale = tuple(float(v) for v in layer.scale[-2:])
        translate = tuple(float(v) for v in layer.translate[-2:])
        self.score_label.setText("Running…")
        self.progress_bar.setRange(0, 0)

        def work(progress: Callable[[int, int], None], cancel: threading.Event) -> _Result:
            return compute(
                bundle,
                plane,
                image_name=image_name,
                scale=scale,
                translate=translate,
                progress=progress,
                cancel=cancel,
            )

        self.runner.start(work, block=block, description=f"Codebook of {image_name}")
        self._update_controls()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_succeeded(self, result: _Result) -> None:
        from napari.layers import Labels

        from napari_dgseg._napari.layers import add_or_replace

        kwargs = dict(result.kwargs)
        kwargs["colormap"] = codebook_colormap(result.colors)
        (layer,) = add_or_replace(self.viewer, [(result.indices, kwargs, "labels")])
        if isinstance(layer, Labels):
            self._layer = layer
        report = result.report
        self.last_report = report
        self._groups = report.groups
        self._class_names = report.class_names
        self.plot.set_data(
            report.usage, report.reference, result.colors, report.groups, report.class_names
        )
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.score_label.setText(score_text(report))
        self.score_label.setStyleSheet(
            "color: #e05a00; font-weight: bold;" if report.out_of_domain else ""
        )
        if report.out_of_domain:
            notify(
                f"{kwargs['metadata']['source_layer']} looks out of the model's domain "
                f"(shift score {report.score:.3f} > {report.threshold:.3f})",
                "warning",
            )

    def _on_failed(self, message: str) -> None:
        notify(message)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.score_label.setText(f"Failed: {message}")

    def _on_cancelled(self) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.score_label.setText("Cancelled; nothing was added.")

    # -------------------------------------------------------------- cursor
    def _on_mouse_move(self, viewer: Any, event: Any) -> None:
        layer = self._layer
        if layer is None or self._groups is None or layer not in viewer.layers:
            return
        try:
            value = layer.get_value(event.position, world=True)
        except Exception:  # outside the data or a layer mid-update: nothing to show
            return
        try:
            self.hover_label.setText("" if value is None else self.describe_code(int(value)))
        except RuntimeError:  # the widget was deleted without being closed
            return

    def describe_code(self, code: int) -> str:
        """``"code 17 · class group: nucleus"`` for the last result's codebook."""
        if self._groups is None or not 0 <= code < self._groups.size:
            return f"code {code}"
        g = int(self._groups[code])
        name = self._class_names[g] if g < len(self._class_names) else str(g)
        return f"code {code} · class group: {name}"

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        super().closeEvent(event)


def score_text(report: Any) -> str:
    """The score line of the widget (and its warning)."""
    used = f"{report.codes_used} of {report.usage.size} codes used"
    if report.score is None:
        return f"{used}. This model stores no training code usage, so no shift score."
    head = f"Domain-shift score {report.score:.3f} (warning above {report.threshold:.3f}); {used}."
    if report.out_of_domain:
        return (
            "⚠ Out of domain: this image uses codes unlike the training data; check the "
            "segmentation carefully. " + head
        )
    return "In domain. " + head


def compute(
    bundle: Any,
    plane: Any,
    *,
    image_name: str,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> _Result:
    """Worker side: predict, analyse, build the colour table and the layer kwargs."""
    from napari_dgseg.core.codebook import analyse_prediction, group_colors

    pred = bundle.predict(plane, progress=progress, cancel=cancel)
    report = analyse_prediction(pred, bundle)
    n = int(bundle.config["codebook_size"])
    colors = group_colors(n, len(bundle.class_names), bundle.class_colors)
    prov = dict(pred.provenance)
    meta = provenance_metadata(prov, image_name)
    meta["code_groups"] = report.groups.tolist()
    meta["class_names"] = list(report.class_names)
    kwargs = {
        "name": f"{image_name} codebook ({bundle.name})",
        "scale": list(scale),
        "translate": list(translate),
        "metadata": meta,
        "opacity": 0.7,
    }
    return _Result(
        indices=np.asarray(pred.codebook_indices, np.int32),
        colors=colors,
        report=report,
        kwargs=kwargs,
    )
