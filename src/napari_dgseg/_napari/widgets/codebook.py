"""The Codebook dock widget: codebook-index maps, code usage and the domain-shift score.

Pick an image layer and a model whose family declares the ``codebook`` capability (SQ-VAE), press
*Run*: the image is analysed in a thread worker (progress bar, *Cancel*) by
:func:`napari_dgseg._napari.codebook_job.compute`, and the widget adds

* ``"<image> codebook (<model>)"``: a Labels layer of the ``e_alpha`` code index of every pixel,
  coloured with one hue family per class group (all background codes bluish, all nucleus codes
  reddish, ...), so the class a code stands for is visible at a glance; napari's status bar shows
  the code index under the cursor and the widget shows its class group;
* a bar plot (:class:`~napari_dgseg._napari.widgets.usage_plot.UsagePlot`) of this image's code
  usage against the training data's usage, and the domain-shift score with a warning when it
  exceeds the model's calibrated threshold.

Only the layer creation happens in the GUI thread, so a 2048 x 2048 image does not freeze the
viewer. The model list holds only codebook-capable models: the family name is read from each
manifest and the registry is asked whether that family supports the capability.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.codebook_job import (
    CODEBOOK,
    CODEBOOK_DCIN_MODES,
    THRESHOLD_TIP,
    CodebookResult,
    codebook_colormap,
    compute,
    legend_entries,
    score_text,
)
from napari_dgseg._napari.dcin_info import BANK_HINT, BANK_MODES
from napari_dgseg._napari.geometry import level0_plane
from napari_dgseg._napari.layers import add_or_replace
from napari_dgseg._napari.notify import notify
from napari_dgseg._napari.runner import ProgressFn, TaskRunner
from napari_dgseg._napari.widgets._common import disable_unavailable, scroll_content
from napari_dgseg._napari.widgets.layer_picker import LayerPicker
from napari_dgseg._napari.widgets.model_picker import ModelPicker
from napari_dgseg._napari.widgets.usage_plot import UsagePlot
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.registry import families_supporting

__all__ = ["DEFAULT_MAP_OPACITY", "CodebookWidget"]

#: Opacity of a new codebook-index map (the tissue shows through).
DEFAULT_MAP_OPACITY = 0.5


def no_model_hint() -> str:
    """What to do when no model with a codebook is installed (families asked, not named)."""
    names = " / ".join(families_supporting(CODEBOOK)) or "FAMILY"
    return (
        f"no model with a codebook found: train one with `dgseg train {names} ...` or use Browse…"
    )


def _strip(colours: list[tuple[float, float, float, float]], width: int = 64, height: int = 14) -> Any:
    """A pixmap of ``colours`` side by side (a class group's hue family, code order)."""
    from qtpy.QtGui import QImage, QPixmap

    rgb = (np.asarray([c[:3] for c in colours], np.float64) * 255).round().astype(np.uint8)
    cols = rgb[(np.arange(width) * len(rgb)) // width]
    img = np.ascontiguousarray(np.broadcast_to(cols[None], (height, width, 3)))
    qimg = QImage(img.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(qimg.copy())


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
        self.model_picker = ModelPicker(
            self, autoload=False, capability=CODEBOOK, capability_hint=no_model_hint()
        )
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Compute the codebook-index map of the whole image")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the analysis; nothing is added")
        self.cancel_button.setEnabled(False)
        self.input_combo = QComboBox()
        self.input_combo.addItems(list(CODEBOOK_DCIN_MODES))
        self.input_combo.setToolTip(
            "What the model is fed for the map and the score. 'none' (default): the image as is, "
            "like the training images the warning threshold was calibrated on, so the verdict "
            "describes the image. Choose the DCIN mode you segment with to see whether colour "
            "normalisation brings the image into the model's domain."
        )
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(round(DEFAULT_MAP_OPACITY * 100)))
        self.opacity_slider.setToolTip(
            "Show tissue: opacity of the codebook-index map (left: the image only, right: the map "
            "only)"
        )
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setToolTip("Tiles analysed")
        self.score_label = QLabel("Domain-shift score: run a model first.")
        self.score_label.setWordWrap(True)
        self.score_label.setToolTip(THRESHOLD_TIP)
        self.hover_label = QLabel("")
        self.hover_label.setStyleSheet("color: palette(mid);")
        self.plot = UsagePlot()
        self.legend = QWidget()
        self.legend.setToolTip(
            "Each class group of codes has one hue family: a code's hue says which class it "
            "stands for, its shade which code of the group it is"
        )
        self._legend_grid = QGridLayout(self.legend)
        self._legend_grid.setContentsMargins(0, 0, 0, 0)
        self.legend.setVisible(False)

        layout = QVBoxLayout(scroll_content(self))  # scrolls, never squeezes
        layout.addWidget(QLabel("Image"))
        layout.addWidget(self.image_picker)
        layout.addWidget(QLabel("SQ-VAE model"))
        layout.addWidget(self.model_picker)
        form = QFormLayout()
        form.addRow("Model input", self.input_combo)
        form.addRow("Show tissue", self.opacity_slider)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.legend)
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
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self.model_picker.loading_changed.connect(lambda *_: self._update_controls())
        self.model_picker.model_changed.connect(self._on_model)
        self.image_picker.currentIndexChanged.connect(lambda *_: self._update_controls())
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._select_first_model()
        self._update_controls()

    # -------------------------------------------------------------- model
    def _select_first_model(self) -> None:
        """Load the first listed model (the picker lists only codebook-capable ones)."""
        combo = self.model_picker.combo
        if combo.count() > 0 and combo.itemData(0) is not None:
            combo.setCurrentIndex(0)
            self.model_picker.load(combo.itemData(0))

    def _on_model(self, bundle: Any) -> None:
        has_bank = bundle is not None and bundle.extra("bank") is not None
        available = [has_bank or m not in BANK_MODES for m in CODEBOOK_DCIN_MODES]
        disable_unavailable(self.input_combo, available, BANK_HINT)
        if not available[self.input_combo.currentIndex()]:
            self.input_combo.setCurrentIndex(0)
        self._update_controls()

    def _on_opacity(self, value: int) -> None:
        layer = self._layer
        if layer is not None and layer in self.viewer.layers:
            layer.opacity = value / 100.0

    def set_legend(self, result: CodebookResult) -> None:
        """One row per class group: a swatch of its hue family, its class name, its codes."""
        while self._legend_grid.count():
            item = self._legend_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        rows = legend_entries(result.report.groups, result.colors, result.report.class_names)
        for i, (name, family, codes) in enumerate(rows):
            swatch = QLabel()
            swatch.setPixmap(_strip(family))
            swatch.setToolTip(f"the {len(family)} code colours of class group '{name}'")
            self._legend_grid.addWidget(swatch, i, 0)
            self._legend_grid.addWidget(QLabel(name), i, 1)
            self._legend_grid.addWidget(QLabel(codes), i, 2)
        self.legend.setVisible(bool(rows))

    @property
    def running(self) -> bool:
        return self.runner.running

    def _update_controls(self, *_: Any) -> None:
        try:
            bundle = self.model_picker.bundle
            ok = (
                bundle is not None
                and bundle.family.supports(CODEBOOK)
                and self.image_picker.layer() is not None
                and not self.model_picker.loading
            )
            self.run_button.setEnabled(ok and not self.runner.running)
            self.cancel_button.setEnabled(self.runner.running)
        except RuntimeError:  # widget already deleted
            return

    # -------------------------------------------------------------- run
    def run(self, sync: bool = False) -> Any:
        """Analyse the selected image with the selected model (in a worker unless ``sync``).

        Returns
        -------
        CodebookReport or None
            For a synchronous run, the report of the analysis (None if it failed or was
            refused); None when the run goes on in a worker.
        """
        layer = self.image_picker.layer()
        bundle = self.model_picker.bundle
        if layer is None:
            notify("open an image first", "warning")
            return None
        if bundle is None or not bundle.family.supports(CODEBOOK):
            notify(f"pick a model with a codebook; {no_model_hint()}", "warning")
            return None
        try:
            plane, _ = level0_plane(layer, self.viewer)
        except InputError as exc:
            notify(str(exc), "warning")
            return None
        image_name = layer.name
        scale = tuple(float(v) for v in layer.scale[-2:])
        translate = tuple(float(v) for v in layer.translate[-2:])
        dcin = self.input_combo.currentText()
        self.score_label.setText("Running…")
        self.progress_bar.setRange(0, 0)

        def work(progress: ProgressFn, cancel: threading.Event) -> CodebookResult:
            return compute(
                bundle,
                plane,
                image_name=image_name,
                scale=scale,
                translate=translate,
                progress=progress,
                cancel=cancel,
                dcin=dcin,
            )

        self.last_report = None
        outcome = self.runner.start(work, sync=sync, description=f"Codebook of {image_name}")
        self._update_controls()
        return None if outcome is None else self.last_report

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_succeeded(self, result: CodebookResult) -> None:
        from napari.layers import Labels

        kwargs = dict(result.kwargs)
        kwargs["colormap"] = codebook_colormap(result.colors)
        kwargs["opacity"] = self.opacity_slider.value() / 100.0
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
        layer.opacity = self.opacity_slider.value() / 100.0  # also for a replaced layer
        self.set_legend(result)
        self.score_label.setText(score_text(report, result.dcin_mode))
        self.score_label.setStyleSheet(
            "color: #e05a00; font-weight: bold;" if report.out_of_domain else ""
        )
        if report.out_of_domain:
            notify(
                f"{kwargs['metadata']['source_layer']} looks out of the model's domain "
                f"(shift score {report.score:.3f} > {report.threshold:.3f})",
                "warning",
            )

    def _on_failed(self, message: str) -> None:  # the runner has shown the notification
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
