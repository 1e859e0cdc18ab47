"""The "Segment" dock widget: pick a model and an image, press Run, get masks.

The widget only gathers parameters: the work is a
:class:`~napari_dgseg._napari.segment_job.SegmentJob` (``Bundle.predict`` tile by tile) run by the
widget's :class:`~napari_dgseg._napari.runner.TaskRunner`, and the result becomes layers through
:mod:`napari_dgseg._napari.layers`. The image is never read in the GUI thread: the selected region
(:mod:`napari_dgseg._napari.geometry`) of full-resolution level 0 (numpy, dask or zarr) is sliced
lazily and the core reads it tile by tile in the worker. The "Colour normalisation (DCIN)" group is
:class:`~napari_dgseg._napari.widgets.dcin_controls.DcinControls`.

Scripts drive the widget through :meth:`SegmentWidget.set_model`,
:meth:`SegmentWidget.set_image_layer` and :meth:`SegmentWidget.run` (``sync=True`` returns the
added layers). Results replace an existing layer of the same name and type (see
:func:`~napari_dgseg._napari.layers.add_or_replace`).
"""

from __future__ import annotations

import os
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.display import (
    default_contour,
    instance_colormap,
    semantic_colormap,
    task_colours,
)
from napari_dgseg._napari.folder_job import FileResult, FolderJob, folder_images
from napari_dgseg._napari.geometry import (
    MAX_PIXELS,
    REGIONS,
    Region,
    layer_plane,
    level0_plane,
    plane_shape,
    region_in_layer,
)
from napari_dgseg._napari.layers import add_or_replace, with_source_units
from napari_dgseg._napari.notify import notify
from napari_dgseg._napari.runner import TaskRunner, sync_workers
from napari_dgseg._napari.segment_job import (
    SegmentJob,
    SegmentResult,
    layer_pixel_size,
    layer_source_path,
)
from napari_dgseg._napari.slide_job import SlideJob, slide_output_path, use_slide_job
from napari_dgseg._napari.staged_add import StagedAdd
from napari_dgseg._napari.widgets._common import disable_unavailable, scroll_content
from napari_dgseg._napari.widgets.dcin_controls import DcinControls
from napari_dgseg._napari.widgets.gap_map import GapMapAction
from napari_dgseg._napari.widgets.layer_picker import LayerPicker
from napari_dgseg._napari.widgets.model_picker import ModelPicker
from napari_dgseg._napari.widgets.scale_controls import ScaleControls
from napari_dgseg.core.device import DEVICES
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.predict import DEFAULT_OVERLAP, DEFAULT_TILE
from napari_dgseg.core.relabel import relabel

__all__ = ["DEFAULT_MIN_SIZE", "DEFAULT_OPACITY", "DEFAULT_THRESHOLD", "SegmentWidget"]

#: The mask controls' defaults: the model's own labels (argmax / its instance post-processing).
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 0
#: Opacity a mask layer is first shown with.
DEFAULT_OPACITY = 0.6


class SegmentWidget(QWidget):
    """Dock widget: segment an image layer with a model bundle.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).

    Notes
    -----
    Scripts and tests use the public methods :meth:`set_model`, :meth:`set_image_layer` and
    :meth:`run`; ``run(sync=True)`` (or ``$DGSEG_SYNC_WORKERS=1``) runs in the calling thread and
    returns the added layers, otherwise wait on :attr:`running`
    (``qtbot.waitUntil(lambda: not w.running)``).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Shapes

        from napari_dgseg._napari.warm import warm_layer_imports

        warm_layer_imports()  # now, not when the result layer is built (see warm.py)
        self.viewer = napari_viewer
        self._last_result: list[Any] = []
        # what the mask controls re-derive the labels from (see _apply_mask_controls)
        self._kept: SegmentResult | None = None
        self._kept_layer: Any = None
        # a streamed slide's result layer, shown from Run on (slide_preview): (layer, levels)
        self._live: tuple[Any, list[Any]] | None = None
        self._staging: StagedAdd | None = None  # how that layer is being put in (staged_add)
        self._model_labels: Any = None
        self._folder_rows: list[FileResult] = []
        self._runner = TaskRunner("Segmenting", self)
        self._runner.progressed.connect(self._on_progress)
        self._runner.succeeded.connect(self._on_succeeded)
        self._runner.failed.connect(self._on_failed)
        self._runner.cancelled.connect(self._on_cancelled)
        self._runner.finished.connect(self._on_finished)

        # model
        self.model_picker = ModelPicker(self)
        model_box = QGroupBox("Model")
        QVBoxLayout(model_box).addWidget(self.model_picker)

        # input
        self.image_picker = LayerPicker(napari_viewer, Image, "(open an image first)")
        self.image_picker.setToolTip("Image layer to segment (RGB, grey, 16-bit, multiscale)")
        self.region_combo = QComboBox()
        self.region_combo.addItems(list(REGIONS))
        self.region_combo.setToolTip(
            "What to segment: all of the full-resolution image, the part visible on the canvas, "
            "or a rectangle drawn in a Shapes layer"
        )
        self.shapes_picker = LayerPicker(napari_viewer, Shapes, "(add a Shapes layer)")
        self.shapes_picker.setToolTip("Shapes layer whose first rectangle is the region")
        input_box = QGroupBox("Input")
        form = QFormLayout(input_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Image", self.image_picker)
        form.addRow("Region", self.region_combo)
        self._shapes_label = QLabel("Shapes")
        form.addRow(self._shapes_label, self.shapes_picker)

        # settings
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(DEFAULT_TILE)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Largest tile sent to the network; smaller tiles use less memory, results are the same"
        )
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 1024)
        self.overlap_spin.setSingleStep(16)
        self.overlap_spin.setValue(DEFAULT_OVERLAP)
        self.overlap_spin.setSuffix(" px")
        self.overlap_spin.setToolTip("Minimum overlap between neighbouring tiles (blended)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        disable_unavailable(self.device_combo, _device_availability(), "{name}: not available here")
        self.device_combo.setToolTip("auto: CUDA GPU, then Apple MPS, then CPU")
        self.probabilities_check = QCheckBox("add class probabilities")
        self.probabilities_check.setToolTip("Also add the class probabilities as an image layer")
        self.tta_check = QCheckBox("test-time flips (4x slower)")
        self.tta_check.setToolTip(
            "Also run every tile flipped left-right, up-down and both, and average the four "
            "results (smoother masks, 4x the network passes). Set to the model's recorded "
            "default when a model is chosen: on for the shipped vessel models")
        settings_box = QGroupBox("Settings")
        sform = QFormLayout(settings_box)
        sform.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for spin in (self.tile_spin, self.overlap_spin):
            spin.setMinimumWidth(110)
            spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        sform.addRow("Tile size", self.tile_spin)
        sform.addRow("Overlap", self.overlap_spin)
        sform.addRow("Device", self.device_combo)
        self.scale_controls = ScaleControls(self)
        sform.addRow("Scale", self.scale_controls)
        sform.addRow("", self.probabilities_check)
        sform.addRow("", self.tta_check)
        self.shared_scale_check = QCheckBox("folder runs: one scale for all images")
        self.shared_scale_check.setToolTip(
            "Run folder… with the Scale field on auto: images without a pixel size are all "
            "resampled by one factor, from the median nucleus size over the folder (tiles of one "
            "slide keep comparable nucleus sizes; measured in docs/scale.md as a tie in accuracy "
            "with one estimate per image). Images with a pixel size keep their own."
        )
        sform.addRow("", self.shared_scale_check)

        # masks: re-derived from the last run's probabilities, no new forward pass
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setKeyboardTracking(False)
        self.threshold_spin.setToolTip(
            "Smallest foreground probability (1 - p(background)) of a mask pixel. Raise it to drop "
            "pixels the model is unsure of (keratin, stroma); 0.50 is the model's own mask. "
            "Applied to the last result at once, without running the model again"
        )
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 1_000_000)
        self.min_size_spin.setSingleStep(10)
        self.min_size_spin.setValue(DEFAULT_MIN_SIZE)
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setKeyboardTracking(False)
        self.min_size_spin.setToolTip(
            "Objects (connected regions of a class, or instances) with fewer pixels are removed; "
            "0 keeps all. Applied to the last result at once, without running the model again"
        )
        masks_box = self.masks_box = QGroupBox("Masks")
        mform = QFormLayout(masks_box)
        mform.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for spin in (self.threshold_spin, self.min_size_spin):
            spin.setMinimumWidth(110)
            spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.opacity_spin = QDoubleSpinBox()
        self.opacity_spin.setRange(0.0, 1.0)
        self.opacity_spin.setSingleStep(0.1)
        self.opacity_spin.setDecimals(2)
        self.opacity_spin.setValue(DEFAULT_OPACITY)
        self.opacity_spin.setToolTip(
            "Opacity of the mask layer: lower it to see the tissue under the mask"
        )
        self.contour_spin = QSpinBox()
        self.contour_spin.setRange(0, 20)
        self.contour_spin.setValue(0)
        self.contour_spin.setSuffix(" px")
        self.contour_spin.setToolTip(
            "0 fills the masks; a width draws only their outlines (touching objects stay apart "
            "and the tissue inside stays visible). Colours are chosen for the task: cyan vessels "
            "on red fundus, chartreuse nuclei on purple/pink H&E"
        )
        for spin in (self.opacity_spin, self.contour_spin):
            spin.setMinimumWidth(110)
            spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        mform.addRow("Threshold", self.threshold_spin)
        mform.addRow("Min. object size", self.min_size_spin)
        mform.addRow("Opacity", self.opacity_spin)
        mform.addRow("Outline", self.contour_spin)
        self.masks_form = mform

        # colour normalisation
        self.dcin = DcinControls(napari_viewer)

        # run
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment the chosen region in the background")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run (within a network layer); nothing is added")
        self.cancel_button.setEnabled(False)
        self.folder_button = QPushButton("Run folder…")
        self.folder_button.setToolTip(
            "Segment every image of a folder with these settings and masks controls; each mask "
            "is written as <name>_labels.tif (with its provenance) to an output folder you choose, "
            "as `dgseg predict` does"
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.folder_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        self.folder_table = QTableWidget(0, 3)
        self.folder_table.setHorizontalHeaderLabels(["file", "result", "mask"])
        self.folder_table.horizontalHeader().setStretchLastSection(True)
        self.folder_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.folder_table.setToolTip("One row per file of the last folder run")
        self.folder_table.setMaximumHeight(160)
        self.folder_table.setVisible(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m tiles")
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setToolTip("Tiles segmented (also in napari's activity panel)")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(scroll_content(self))  # scrolls, never squeezes
        layout.addWidget(model_box)
        layout.addWidget(input_box)
        layout.addWidget(settings_box)
        layout.addWidget(masks_box)
        layout.addWidget(self.dcin)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.folder_table)
        self.gap_map = GapMapAction(self)  # Mind the Gap's D1 fitted to this image
        layout.addWidget(self.gap_map)
        layout.addStretch(1)
        # Preferred, not Maximum: a Maximum widget caps its dock at its first size hint, and rows
        # that appear later (Shapes, reference, the references line) would be squeezed.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(320)

        self.run_button.clicked.connect(lambda: self.run())
        self.folder_button.clicked.connect(self.choose_folder)
        self.cancel_button.clicked.connect(self.cancel)
        self.threshold_spin.valueChanged.connect(lambda _: self._apply_mask_controls())
        self.min_size_spin.valueChanged.connect(lambda _: self._apply_mask_controls())
        self.opacity_spin.valueChanged.connect(lambda _: self._style_labels())
        self.contour_spin.valueChanged.connect(lambda _: self._style_labels())
        self.model_picker.model_changed.connect(self._on_model_changed)
        self.region_combo.currentIndexChanged.connect(self._update_controls)
        self.image_picker.currentIndexChanged.connect(self._update_controls)
        self.model_picker.loading_changed.connect(lambda _: self._update_controls())
        self.model_picker.model_changed.connect(lambda _: self._update_controls())
        self.model_picker.model_changed.connect(self.dcin.set_bundle)
        self.image_picker.currentIndexChanged.connect(
            lambda _: self.dcin.set_target(self.image_picker.layer())
        )
        self.dcin.set_bundle(self.model_picker.bundle)
        self.dcin.set_target(self.image_picker.layer())
        self._update_controls()

    # -------------------------------------------------------------- state
    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self._runner.running

    @property
    def runner(self) -> TaskRunner:
        return self._runner

    @property
    def last_result(self) -> list[Any]:
        """Layers added by the last successful run."""
        return list(self._last_result)

    @property
    def bundle(self) -> Any:
        """The loaded model bundle, or None."""
        return self.model_picker.bundle

    @property
    def status(self) -> str:
        """The status line (what the last run did, or why it failed)."""
        return self.status_label.text()

    def set_model(self, name_or_path: str | os.PathLike, *, sync: bool = True) -> Any:
        """Load a model by bundle name or ``.dgseg`` path (no reload if it is already loaded).

        A load already in progress (the picker loads its first entry when the widget opens) is
        waited for first.

        Parameters
        ----------
        name_or_path : str or path
        sync : bool
            Load in the calling thread and return the bundle (None if it failed); False loads in
            a worker and returns None.
        """
        self.model_picker.wait()
        current = self.model_picker.bundle
        key = str(name_or_path)
        if current is not None and key in (current.name, str(current.path)):
            return current
        return self.model_picker.load(key, sync=sync)

    def set_image_layer(self, layer: Any) -> None:
        """Choose the Image layer to segment (must be in the viewer)."""
        if layer not in self.image_picker.layers():
            raise ValueError(
                f"{getattr(layer, 'name', layer)!r} is not an Image layer of the viewer"
            )
        self.image_picker.set_layer(layer)

    def _update_controls(self, *_: Any) -> None:
        drawn = self.region_combo.currentText() == REGIONS[2]
        self.shapes_picker.setVisible(drawn)
        self._shapes_label.setVisible(drawn)
        busy = self.running or self.model_picker.loading
        ready = self.model_picker.bundle is not None and self.image_picker.layer() is not None
        self.run_button.setEnabled(ready and not busy)
        self.folder_button.setEnabled(self.model_picker.bundle is not None and not busy)
        self.cancel_button.setEnabled(self.running)
        for w in (
            self.masks_box,
            self.model_picker,
            self.image_picker,
            self.region_combo,
            self.shapes_picker,
            self.dcin,
            self.scale_controls,
        ):
            w.setEnabled(not self.running)

    # -------------------------------------------------------------- actions
    def cancel(self) -> None:
        """Ask the running segmentation to stop; no layer will be added."""
        if self.running:
            self._runner.cancel()
            if self._staging is not None:  # a result layer not yet in stays out (staged_add)
                self._staging.abort()
            self.status_label.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def run(self, sync: bool = False) -> list[Any] | None:
        """Segment the selected image layer with the loaded model.

        Parameters
        ----------
        sync : bool
            Run in the calling thread and return when done (tests, scripts).

        Returns
        -------
        list of napari layers or None
            For a synchronous run, the layers it added (empty if it failed or was refused);
            None when the run goes on in a worker.
        """
        bundle = self.model_picker.bundle
        if bundle is None:
            notify("no model loaded; choose one under 'Model' (or Browse… for a .dgseg file)")
            return [] if sync else None
        layer = self.image_picker.layer()
        if layer is None:
            notify("no image to segment; open an image and choose it under 'Image'")
            return [] if sync else None
        return self.segment_layer(layer, sync=sync)

    def segment_layer(self, layer: Any, *, sync: bool = False) -> list[Any] | None:
        """Segment ``layer`` (must be an Image layer) with the current settings.

        Returns what :meth:`run` returns.
        """
        from napari.layers import Image

        refused: list[Any] | None = [] if sync else None
        if self.running:
            notify("a segmentation is already running; wait or press Cancel", "warning")
            return refused
        bundle = self.model_picker.bundle
        if bundle is None:
            notify("no model loaded; choose one under 'Model' (or Browse… for a .dgseg file)")
            return refused
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            notify(
                f"'{getattr(layer, 'name', layer)}' is a {kind} layer; segmentation needs an "
                "Image layer. Choose an image under 'Image'."
            )
            return refused
        try:
            plane, plane_info = level0_plane(layer, self.viewer)
            region = self.current_region(layer)
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return refused
        h, w = region.shape
        if use_slide_job(layer, region, plane.shape, layer_source_path(layer)):
            return self._segment_slide(layer, sync=sync)
        if h * w > MAX_PIXELS:
            notify(
                f"the region is {h} x {w} pixels, more than one run can hold in memory "
                f"({MAX_PIXELS / 1e6:.0f} Mpx); choose 'current view' or 'drawn rectangle', or use "
                "`dgseg predict` for whole slides"
            )
            return refused
        crop = plane[region.y0 : region.y1, region.x0 : region.x1]
        try:
            reference, reference_label = self._dcin_reference()
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return refused
        dcin_mode = self.dcin.mode()
        effective = self.dcin.effective_mode()
        job = SegmentJob(
            bundle=bundle,
            image=crop,
            image_name=layer.name,
            region=region,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            source_path=layer_source_path(layer),
            plane_info=plane_info,
            tile=int(self.tile_spin.value()),
            overlap=int(self.overlap_spin.value()),
            device=self.device_combo.currentText(),
            probabilities=self.probabilities_check.isChecked(),
            tta=self.tta_check.isChecked(),
            dcin=dcin_mode,
            reference=reference,
            reference_label=reference_label,
            normalized=effective != "none" and self.dcin.normalized_check.isChecked(),
            uncertainty=effective == "full" and self.dcin.uncertainty_check.isChecked(),
            scale_kwargs=self.scale_controls.predict_kwargs(layer_pixel_size(layer)),
            dcin_source=self._dcin_source(layer, plane, region),
        )
        self._last_result = []
        self.progress_bar.setFormat("%v / %m tiles")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self._run_dcin_mode = dcin_mode
        colour = "" if dcin_mode == "none" else f", DCIN {dcin_label(dcin_mode, effective)}"
        self.status_label.setText(
            f"Segmenting {h} x {w} px of '{layer.name}' ({region.mode}) with {bundle.name}{colour}…"
        )
        outcome = self._runner.start(job, sync=sync, description=f"Segmenting {layer.name}")
        self._update_controls()
        return None if outcome is None else self.last_result

    def _segment_slide(self, layer: Any, *, sync: bool) -> list[Any] | None:
        """Stream the whole slide behind ``layer`` into OME-Zarr in the worker (slide_job)."""
        bundle = self.model_picker.bundle
        source = str(layer_source_path(layer))
        try:
            out = slide_output_path(source, bundle.name)
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return [] if sync else None
        job = SlideJob(
            bundle=bundle, source_path=source, out=str(out), image_name=layer.name,
            translate=tuple(float(t) for t in layer.translate), tile=int(self.tile_spin.value()),
            overlap=int(self.overlap_spin.value()), device=self.device_combo.currentText(),
            dcin=self.dcin.mode(), probabilities=self.probabilities_check.isChecked(),
            tta=self.tta_check.isChecked(),
            scale_kwargs=self.scale_controls.predict_kwargs(layer_pixel_size(layer)),
        )
        self._last_result = []
        self.progress_bar.setFormat("%v / %m blocks")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self._run_dcin_mode = job.dcin
        self.status_label.setText(f"Segmenting the whole slide '{layer.name}' block by block "
                                  f"with {bundle.name} into {out.name}…")
        job.preview = self._show_live_result(layer, bundle, out)
        outcome = self._staging.start_job(self._runner.start, job, sync=sync or sync_workers(),
                                          description=f"Segmenting {layer.name}")
        self._update_controls()
        return None if outcome is None else self.last_result

    def _show_live_result(self, layer: Any, bundle: Any, out: os.PathLike) -> Any:
        """Add the slide's result layer now; it grows block by block (``slide_preview``).

        napari builds a Labels layer in the GUI thread (about 0.1 s); done here, when Run is
        pressed, it is not done again when the result arrives: the layer's levels then read the
        finished OME-Zarr. The layer is built in this turn of the event loop and put in over the
        next few by ``self._staging`` (``staged_add``), which then starts the job. Returns the
        preview the worker paints.
        """
        from napari.layers import Layer

        from napari_dgseg._napari.slide_preview import SlidePreview, live_levels
        from napari_dgseg._napari.writer import prefer_own_writers
        from napari_dgseg.core.wsi.store import pyramid_shapes

        shape = plane_shape(layer)
        preview = SlidePreview(shape)
        levels = live_levels(pyramid_shapes(shape), preview)
        colours = task_colours(bundle.class_names, bundle.manifest.get("task"),
                               bundle.class_colors)
        kwargs = {  # styled here as _style_labels would: napari then draws it once
            "colormap": (instance_colormap(colours.get(1, (255, 64, 64)))
                         if bundle.family.output == "instances" else semantic_colormap(colours)),
            "opacity": float(self.opacity_spin.value()),
            "name": f"{layer.name} {bundle.name}", "multiscale": True,
            "scale": tuple(float(v) for v in layer.scale[-2:]),
            "translate": tuple(float(v) for v in layer.translate[-2:]),
            "metadata": {"source_layer": layer.name,
                         "provenance": {"what": "whole-slide run in progress", "output": str(out)}},
        }
        self._kept = None
        prefer_own_writers()  # saved from the dialog with its placement, as add_or_replace does
        self._kept_layer = Layer.create(levels, with_source_units(self.viewer, kwargs), "labels")
        self._live = (self._kept_layer, levels)
        contour = int(self.contour_spin.value())
        if contour:  # not a constructor argument
            self._kept_layer.contour = contour
        self._staging = StagedAdd(self.viewer, self._kept_layer)
        return preview

    def _finish_live_result(self, layer_data: Any) -> list[Any]:
        """Point the live result layer at the finished OME-Zarr levels (no new layer is built)."""
        (layer, levels), self._live = self._live, None
        data, kwargs, _ = layer_data
        if layer not in self.viewer.layers or len(data) != len(levels):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            return add_or_replace(self.viewer, [layer_data])
        for level, source in zip(levels, data, strict=True):
            level.attach(source)
        layer.metadata = dict(kwargs.get("metadata") or {})
        import numpy as np

        scale = [float(v) for v in kwargs.get("scale", layer.scale)]
        shown = [float(v) for v in layer.scale]
        if len(scale) == len(shown) and not np.allclose(scale, shown, rtol=1e-9, atol=0.0):
            layer.scale = scale  # the reader's placement, as a result added at the end had
        layer.refresh()
        return [layer]

    def _drop_live_result(self) -> None:
        """Remove the live result layer of a failed or cancelled run (its blocks stay on disk)."""
        live, self._live = self._live, None
        if live is None:
            return
        if self._staging is not None:  # cancelled before the layer was in: it is not put in
            self._staging.abort()
        if live[0] in self.viewer.layers:
            self.viewer.layers.remove(live[0])
        if self._kept_layer is live[0]:
            self._kept_layer = None

    def _dcin_source(self, layer: Any, plane: Any, region: Any) -> Any:
        """The whole plane whose colours DCIN normalises a region by (lazy, nothing read here).

        The smallest pyramid level of a multiscale layer, else the whole level-0 plane (DCIN
        reads a strided copy of it in the worker). None when the region is the whole image.
        """
        if region.shape == tuple(plane.shape[:2]) and (region.y0, region.x0) == (0, 0):
            return None
        if layer.multiscale:
            try:
                return layer_plane(layer, self.viewer, level=-1)[0]
            except InputError:
                return plane
        return plane

    def choose_folder(self) -> None:
        """Ask for a folder of images and an output folder, then :meth:`run_folder`."""
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to segment")
        if not folder:
            return
        out = QFileDialog.getExistingDirectory(self, "Output folder for the masks", folder)
        if out:
            self.run_folder(folder, out)

    def run_folder(
        self, folder: str | os.PathLike, out: str | os.PathLike, *, sync: bool = False
    ) -> list[FileResult] | None:
        """Segment every supported image of ``folder`` into ``out`` with the current settings.

        Each mask is written as ``<stem>_labels.tif`` (the CLI's writer and names); the threshold
        and minimum size controls apply. Rows of :attr:`folder_table` fill in as files finish.
        DCIN mode ``reference`` is not offered here (use ``dgseg predict --reference``).

        Returns
        -------
        list of FileResult or None
            The rows of a synchronous run (empty if refused); None when it runs in a worker.
        """
        from pathlib import Path

        refused: list[FileResult] | None = [] if sync else None
        bundle = self.model_picker.bundle
        if self.running:
            notify("a segmentation is already running; wait or press Cancel", "warning")
            return refused
        if bundle is None:
            notify("no model loaded; choose one under 'Model' (or Browse… for a .dgseg file)")
            return refused
        mode = self.dcin.mode()
        if self.dcin.effective_mode() == "reference":
            notify("a folder run cannot use DCIN 'reference'; choose another mode or use "
                   "`dgseg predict --dcin reference --reference IMAGE`")
            return refused
        try:
            inputs = folder_images(folder)
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return refused
        job = FolderJob(
            bundle=bundle,
            inputs=inputs,
            out=Path(out),
            tile=int(self.tile_spin.value()),
            overlap=int(self.overlap_spin.value()),
            device=self.device_combo.currentText(),
            dcin=mode,
            threshold=float(self.threshold_spin.value()),
            min_size=int(self.min_size_spin.value()),
            scale_kwargs=self.scale_controls.predict_kwargs(),
            tta=self.tta_check.isChecked(),
            shared_scale=self.shared_scale_check.isChecked(),
        )
        self._folder_rows = []
        self.folder_table.setRowCount(0)
        self.folder_table.setVisible(True)
        self.progress_bar.setFormat("%v / %m files")
        self.progress_bar.setRange(0, len(inputs))
        self.progress_bar.setValue(0)
        self.status_label.setText(
            f"Segmenting {len(inputs)} image(s) of {folder} with {bundle.name} into {out}…"
        )
        outcome = self._runner.start(
            job,
            sync=sync,
            description=f"Segmenting folder {Path(folder).name}",
            on_yield=self._add_folder_row,
            on_result=self._folder_done,
        )
        self._update_controls()
        return None if outcome is None else list(self._folder_rows)

    def _add_folder_row(self, row: FileResult) -> None:
        from pathlib import Path

        self._folder_rows.append(row)
        r = self.folder_table.rowCount()
        self.folder_table.insertRow(r)
        cells = (Path(row.input).name, row.summary if row.ok else f"failed: {row.error}",
                 row.labels or "")
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            self.folder_table.setItem(r, c, item)

    def _folder_done(self, rows: list[FileResult]) -> None:
        failed = sum(1 for row in rows if not row.ok)
        self.status_label.setText(
            f"Folder done: {len(rows) - failed} mask(s) written"
            + (f", {failed} file(s) failed (see the table)" if failed else "")
        )

    def _dcin_reference(self) -> tuple[Any, str | None]:
        """The reference for mode ``reference``: a path, or a lazy plane of a layer's smallest level.

        Nothing is read here (the worker strides and reads it). ``(None, None)`` for other modes.
        """
        if self.dcin.effective_mode() != "reference":
            return None, None
        source = self.dcin.reference_source()
        if source is None:
            raise InputError(
                "DCIN mode 'reference' needs a reference: open a well-stained image and choose "
                "it under 'Reference', or press 'file…'"
            )
        ref, label = source
        if isinstance(ref, str):
            return ref, label
        plane, _ = layer_plane(ref, self.viewer, level=-1)
        return plane, label

    def current_region(self, layer: Any) -> Region:
        """The level-0 pixel region chosen in the 'Region' box for ``layer``."""
        return region_in_layer(
            self.region_combo.currentText(), layer, self.viewer, self.shapes_picker.layer()
        )

    # -------------------------------------------------------------- results
    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        if self._live is not None and self._live[0] in self.viewer.layers:
            self._live[0].refresh()  # the blocks painted so far (slide_preview)

    def _on_succeeded(self, result: Any) -> None:
        if not isinstance(result, SegmentResult):  # a folder run: _folder_done has reported
            return
        live = self._live is not None
        if live:  # a streamed slide: its layer was added when Run was pressed
            self._last_result = self._finish_live_result(result.layer_data[0])
        else:
            self._last_result = add_or_replace(self.viewer, result.layer_data)
        labels = [lyr for lyr in self._last_result if lyr._type_string == "labels"]
        if labels or self._last_result:
            self.viewer.layers.selection.active = (labels or self._last_result)[0]
        self._kept = result
        self._kept_layer = labels[0] if labels else None
        self._model_labels = None if self._kept_layer is None else self._kept_layer.data
        self._style_labels(recolour=not live)  # a live layer got its colours at Run
        self.dcin.show_result(result.dcin, result.reference_label)
        self.scale_controls.show_result(result.scale)
        dcin = result.dcin or {}
        notice = dcin.get("notice")
        if notice:
            notify(notice, "info")
            self.status_label.setText(f"{result.summary}. {notice}")
        else:
            chosen = getattr(self, "_run_dcin_mode", dcin.get("mode", "none"))
            ran = dcin.get("mode", "none")
            if chosen == "none":
                self.status_label.setText(result.summary)
            else:
                guard = (dcin.get("guard") or {}).get("action")
                held = " (guard: not applied, see DCIN panel)" if guard == "fallback" else ""
                self.status_label.setText(
                    f"{result.summary} · DCIN {dcin_label(chosen, ran)}{held}")
        self._apply_mask_controls()  # after the status line: it adds what the controls left

    def _on_model_changed(self, bundle: Any) -> None:
        """A new model: outline instances, fill classes (the user may change it)."""
        self.scale_controls.show_model(bundle)
        if bundle is not None:
            from napari_dgseg.core.inference import tta_default

            self.contour_spin.setValue(default_contour(bundle.family.output))
            self.tta_check.setChecked(tta_default(bundle.manifest))

    def _style_labels(self, recolour: bool = False) -> None:
        """Colours for the task, opacity and outline width of the last result's mask layer."""
        layer, bundle = self._kept_layer, self.model_picker.bundle
        if layer is None or layer not in self.viewer.layers:
            return
        if recolour and bundle is not None:
            colours = task_colours(
                bundle.class_names, bundle.manifest.get("task"), bundle.class_colors
            )
            if bundle.family.output == "instances":
                fg = colours.get(1, (255, 64, 64))
                layer.colormap = instance_colormap(fg)
            else:
                layer.colormap = semantic_colormap(colours)
        layer.opacity = float(self.opacity_spin.value())
        layer.contour = int(self.contour_spin.value())

    def _apply_mask_controls(self) -> None:
        """Re-derive the last result's labels with the threshold and minimum size controls.

        Uses the probabilities the run kept (:func:`napari_dgseg.core.relabel.relabel`); the
        network is not run again. At the defaults the model's own labels come back unchanged.
        The values are recorded in the layer's provenance (``"mask_controls"``).
        """
        layer, kept = self._kept_layer, self._kept
        if layer is None or kept is None or layer not in self.viewer.layers:
            return
        threshold = float(self.threshold_spin.value())
        min_size = int(self.min_size_spin.value())
        default = abs(threshold - DEFAULT_THRESHOLD) < 1e-9 and min_size <= 1
        prov = layer.metadata.get("provenance") if isinstance(layer.metadata, dict) else None
        if default:
            data = self._model_labels
            if data is layer.data:
                self._mask_status(None)
                if isinstance(prov, dict):
                    prov.pop("mask_controls", None)
                return  # nothing to re-derive (setting it again re-reads a whole slide's view)
        elif kept.probabilities is None:
            notify("this model returns no probabilities; threshold and size cannot be tuned")
            return
        else:
            data = relabel(kept.probabilities, threshold, min_size, instances=kept.instances)
        layer.data = data
        self._mask_status(None if default else (threshold, min_size, data))
        if isinstance(prov, dict):
            if default:
                prov.pop("mask_controls", None)
            else:
                prov["mask_controls"] = {"threshold": threshold, "min_size": min_size}

    def _mask_status(self, tuned: tuple[float, int, Any] | None) -> None:
        """Say on the status line what the mask controls left (the run's own line otherwise)."""
        import numpy as np

        base = self.status_label.text().split(" · masks:")[0]
        if tuned is None:
            self.status_label.setText(base)
            return
        threshold, min_size, data = tuned
        bundle = self.model_picker.bundle
        if bundle is not None and bundle.family.output == "instances":
            n = int(np.unique(data[data > 0]).size)
            left = f"{n} instance{'s' if n != 1 else ''}"
        else:
            left = f"{100.0 * float(np.count_nonzero(data)) / max(data.size, 1):.1f} % foreground"
        self.status_label.setText(
            f"{base} · masks: threshold {threshold:.2f}, min {min_size} px -> {left}"
        )

    def _on_failed(self, message: str) -> None:  # the runner has shown the notification
        self._drop_live_result()
        self.status_label.setText(f"Failed: {message}")

    def _on_cancelled(self) -> None:
        self._drop_live_result()
        notify("Segmentation cancelled", "info")
        if self.progress_bar.format().endswith("files"):
            n = sum(1 for row in self._folder_rows if row.ok)
            self.status_label.setText(
                f"Folder run cancelled; the {n} mask(s) already written stay."
            )
        else:
            self.status_label.setText("Segmentation cancelled; nothing was added.")

    def _on_finished(self) -> None:
        self._update_controls()


def dcin_label(chosen: str, ran: str) -> str:
    """The DCIN part of the status line, in the words of the control: ``"auto -> full"``
    when ``auto`` resolved to a mode, else the mode (``"none"``, ``"gris"``, ...)."""
    return f"{chosen} -> {ran}" if chosen == "auto" else ran


def _device_availability() -> list[bool]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    has = {
        "auto": True,
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps is not None and mps.is_available()),
    }
    return [has.get(d, False) for d in DEVICES]
