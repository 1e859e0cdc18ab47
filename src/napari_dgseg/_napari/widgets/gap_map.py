"""The Segment widget's "Domain-gap map" action: where is this image out of the model's domain?

For the chosen image (region) and model, a worker computes the model's features, fits Mind the
Gap's pixel-wise domain discriminator D1 (Su et al., 2023) on the model's source replay set
against this image for a few hundred steps (the model stays frozen) and adds the local feature
mask as an Image layer over the image (inferno, 0..1, translucent): dark where the model's features
look like its training data, bright where they do not. Progress goes to the bar and napari's
activity panel; Cancel stops between tiles and steps and adds nothing.
(:class:`~napari_dgseg._napari.gap_map_job.GapMapJob` does the work;
:mod:`napari_dgseg.core.local_align.gap_map` the maths.)
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_dgseg._napari.gap_map_job import GapMapJob, GapMapResult
from napari_dgseg._napari.geometry import MAX_PIXELS, level0_plane
from napari_dgseg._napari.layers import add_or_replace
from napari_dgseg._napari.notify import notify
from napari_dgseg._napari.runner import TaskRunner
from napari_dgseg._napari.segment_job import layer_pixel_size
from napari_dgseg.core.errors import InputError

__all__ = ["GapMapAction"]

TOOLTIP = (
    "Fit a domain discriminator (Mind the Gap's D1) to the model's features, its training replay "
    "set against this image, and show where the image is out of the model's domain (0 = looks "
    "like the training data, 1 = clearly not). Models adapted with local alignment show their "
    "local mask with every Run."
)


class GapMapAction(QWidget):
    """A "Domain-gap map" button, its Cancel, progress bar and status line.

    Parameters
    ----------
    segment : SegmentWidget
        The owner: its model, image picker, region, device and scale controls are used.
    """

    def __init__(self, segment: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.segment = segment
        self._runner = TaskRunner("Domain-gap map", self, error_prefix="domain-gap map: ")
        self.button = QPushButton("Domain-gap map")
        self.button.setToolTip(TOOLTIP)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the domain-gap map; nothing is added")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.button, 3)
        row.addWidget(self.cancel_button, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        self.last_layer: Any = None
        self.button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self._runner.progressed.connect(self._on_progress)
        self._runner.succeeded.connect(self._on_succeeded)
        self._runner.failed.connect(lambda msg: self.status_label.setText(msg))
        self._runner.cancelled.connect(lambda: self.status_label.setText(
            "Domain-gap map cancelled; nothing was added"))
        self._runner.finished.connect(self._on_finished)

    @property
    def running(self) -> bool:
        return self._runner.running

    @property
    def runner(self) -> TaskRunner:
        return self._runner

    def cancel(self) -> None:
        """Ask the running fit to stop."""
        if self.running:
            self._runner.cancel()
            self.status_label.setText("Cancelling…")

    def run(self, *, sync: bool = False, steps: int = 300) -> Any:
        """Start the map for the Segment widget's current model, image and region.

        Returns the added layer for a synchronous run (None if refused or failed), else None.
        """
        seg = self.segment
        if self.running or seg.running:
            notify("a job is already running; wait or press Cancel", "warning")
            return None
        bundle, layer = seg.bundle, seg.image_picker.layer()
        if bundle is None:
            notify("no model loaded; choose one under 'Model'")
            return None
        if layer is None:
            notify("no image; open an image and choose it under 'Image'")
            return None
        try:
            plane, _ = level0_plane(layer, seg.viewer)
            region = seg.current_region(layer)
        except InputError as exc:
            notify(str(exc))
            return None
        h, w = region.shape
        if h * w > MAX_PIXELS:
            notify(f"the region is {h} x {w} pixels, more than one run can hold "
                   f"({MAX_PIXELS / 1e6:.0f} Mpx); choose 'current view' or 'drawn rectangle'")
            return None
        job = GapMapJob(
            bundle=bundle,
            image=plane[region.y0 : region.y1, region.x0 : region.x1],
            image_name=layer.name,
            offset=(region.y0, region.x0),
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            device=seg.device_combo.currentText(),
            steps=int(steps),
            scale_kwargs=seg.scale_controls.predict_kwargs(layer_pixel_size(layer)),
            region=region.as_dict(),
        )
        self.last_layer = None
        self.progress_bar.setVisible(True)
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(f"Fitting the domain-gap map of {h} x {w} px of "
                                  f"'{layer.name}' with {bundle.name}…")
        self.button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        outcome = self._runner.start(job, sync=sync, description=f"Domain-gap map of {layer.name}")
        return None if outcome is None else self.last_layer

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_succeeded(self, result: Any) -> None:
        if not isinstance(result, GapMapResult):
            return
        added = add_or_replace(self.segment.viewer, [result.layer_data])
        self.last_layer = added[0] if added else None
        self.status_label.setText(result.summary)

    def _on_finished(self) -> None:
        self.button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
