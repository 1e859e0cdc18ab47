"""The "Segment" dock widget: pick a model and an image, press Run, get masks.

The widget only gathers parameters: the work is :meth:`Bundle.predict` in a thread worker
(:class:`~napari_dgseg._napari.widgets._common.TaskRunner`), and the result becomes layers through
:mod:`napari_dgseg._napari.layers`. The image is never read in the GUI thread: the selected region
of full-resolution level 0 (numpy, dask or zarr) is sliced lazily and the core reads it tile by
tile in the worker.

Regions
-------
``whole image (full resolution)``
    All of level 0.
``current view``
    The part of level 0 visible on the canvas (from the camera and canvas size).
``drawn rectangle``
    The bounding box of the first rectangle (else the first shape) of the chosen Shapes layer, in
    the image's pixel coordinates.

Colour normalisation (DCIN, papers/002)
---------------------------------------
The "Colour normalisation (DCIN)" group picks the mode passed to ``Bundle.predict(dcin=...)``
(modes that need the model's reference bank are greyed out for a model without one), the user's
reference for mode ``reference`` (an Image layer, read at its smallest pyramid level in the
worker, or a file), whether to add the normalised images (``"<image> normalized (<branch>)"``)
and the GRIS/LRIS uncertainty map, and shows the references DCIN chose after a run. A DCIN
notice (e.g. no tissue in the image) goes to the status line and an info notification.

Results replace an existing layer of the same name and type (see :func:`add_or_replace`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPainter, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.layers import (
    add_or_replace,
    normalized_layer_data,
    prediction_layer_data,
    summarize,
)
from napari_dgseg._napari.widgets._common import (
    LayerPicker,
    ModelPicker,
    TaskRunner,
    disable_unavailable,
    notify,
)
from napari_dgseg.core.color.dcin import DCIN_MODES
from napari_dgseg.core.device import DEVICES
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.predict import DEFAULT_OVERLAP, DEFAULT_TILE

__all__ = [
    "DCIN_TIPS",
    "MAX_PIXELS",
    "REGIONS",
    "DcinControls",
    "Region",
    "SegmentWidget",
    "describe_references",
]

#: Region choices, in the order of the combo box.
REGIONS = ("whole image (full resolution)", "current view", "drawn rectangle")
#: Largest region (pixels) segmented in one run; beyond it the outputs alone need many GB.
MAX_PIXELS = 16384 * 16384


@dataclass(frozen=True)
class Region:
    """A rectangle of level-0 pixels: rows ``[y0, y1)``, columns ``[x0, x1)``."""

    mode: str
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "y0": self.y0,
            "x0": self.x0,
            "height": self.shape[0],
            "width": self.shape[1],
        }


# ---------------------------------------------------------------------- image access
def _plane_shape(layer: Any) -> tuple[int, int]:
    """Rows and columns of the layer's level 0."""
    data = layer.data[0] if layer.multiscale else layer.data
    shape = tuple(int(s) for s in data.shape)
    return (shape[-3], shape[-2]) if layer.rgb else (shape[-2], shape[-1])


def _level0_plane(layer: Any, viewer: Any) -> tuple[Any, dict[str, Any]]:
    """The displayed 2-D plane of level 0 as a lazy ``(H, W)`` or ``(H, W, C)`` array.

    Leading axes (time, z, channels without ``rgb``) are indexed at the viewer's current
    position. Nothing is read: numpy gives a view, dask/zarr stay lazy.
    """
    return _layer_plane(layer, viewer, level=0)


def _layer_plane(layer: Any, viewer: Any, level: int = 0) -> tuple[Any, dict[str, Any]]:
    """The displayed 2-D plane of pyramid ``level`` (``-1``: the smallest) as a lazy array.

    Returns ``(plane, info)`` with ``plane`` ``(H, W)`` or ``(H, W, C)`` (numpy view, dask or
    zarr: nothing is read) and ``info = {"level": level, ["plane_index": [...]]}``.
    """
    levels = list(layer.data) if layer.multiscale else [layer.data]
    level = level % len(levels)
    data = levels[level]
    spatial_nd = data.ndim - (1 if layer.rgb else 0)
    extra: dict[str, Any] = {"level": level}
    if spatial_nd > 2:
        lead = spatial_nd - 2
        displayed = list(viewer.dims.displayed)
        layer_axes = list(range(viewer.dims.ndim - layer.ndim, viewer.dims.ndim))
        if len(displayed) != 2 or displayed != layer_axes[-2:]:
            raise InputError(
                f"layer {layer.name!r} has {spatial_nd} dimensions and its last two are not the "
                "ones displayed; switch to the 2D view with the image rows/columns on screen"
            )
        point = layer.world_to_data(viewer.dims.point)
        index = tuple(
            int(np.clip(round(float(point[i])), 0, data.shape[i] - 1)) for i in range(lead)
        )
        data = data[index]
        extra["plane_index"] = list(index)
    return data, extra


def _visible_world_box(viewer: Any) -> np.ndarray:
    """``(2, 2)`` world coordinates (top-left, bottom-right) of the canvas' displayed axes."""
    ndisplay = viewer.dims.ndisplay
    if ndisplay != 2:
        raise InputError(
            "'current view' needs the 2D view; switch the viewer to 2D or pick another region"
        )
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    canvas = getattr(qt_viewer, "canvas", None)
    try:
        corners = np.asarray(canvas._viewbox_corners_in_world, dtype=float)
        if corners.shape[0] == 2 and corners.shape[1] >= 2 and np.isfinite(corners).all():
            return corners[:, list(viewer.dims.displayed)]
    except Exception:  # private API changed or no canvas: fall back to camera maths
        pass
    native = getattr(canvas, "native", None)
    height, width = (native.height(), native.width()) if native is not None else (600, 800)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    center = np.asarray(camera.center, dtype=float)[-2:]
    half = np.array([height, width], dtype=float) / (2.0 * float(camera.zoom))
    return np.stack([center - half, center + half])


def _world_box_to_pixels(layer: Any, viewer: Any, world_yx: np.ndarray) -> np.ndarray:
    """Map world ``(N, 2)`` points of the displayed axes to level-0 pixel ``(N, 2)`` of ``layer``."""
    base = np.asarray(viewer.dims.point, dtype=float)
    out = []
    displayed = list(viewer.dims.displayed)
    for yx in world_yx:
        pos = base.copy()
        pos[displayed] = yx
        data_pos = np.asarray(layer.world_to_data(pos), dtype=float)
        out.append(data_pos[-2:])  # layer.ndim excludes the RGB axis
    return np.asarray(out)


def _clip_box(mode: str, pixels: np.ndarray, shape: tuple[int, int], what: str) -> Region:
    h, w = shape
    lo = np.floor(pixels.min(axis=0)).astype(int)
    hi = np.ceil(pixels.max(axis=0)).astype(int)
    y0, x0 = int(np.clip(lo[0], 0, h)), int(np.clip(lo[1], 0, w))
    y1, x1 = int(np.clip(hi[0], 0, h)), int(np.clip(hi[1], 0, w))
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"{what} does not overlap the image; {_REGION_HINT[mode]}")
    return Region(mode, y0, x0, y1, x1)


_REGION_HINT = {
    REGIONS[1]: "pan/zoom so that the image is on screen",
    REGIONS[2]: "draw the rectangle over the image",
}


def shape_box_in_image(shapes_layer: Any, image_layer: Any, viewer: Any) -> np.ndarray:
    """Level-0 pixel corners ``(N, 2)`` of the first rectangle (else first shape) of a layer."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise InputError(
            "'drawn rectangle' needs a Shapes layer with a rectangle: add a Shapes layer, draw a "
            "rectangle over the image, and choose that layer under 'Shapes'"
        )
    types = list(shapes_layer.shape_type)
    index = types.index("rectangle") if "rectangle" in types else 0
    verts = np.asarray(shapes_layer.data[index], dtype=float)
    world = np.asarray([shapes_layer.data_to_world(v) for v in verts], dtype=float)
    displayed = list(viewer.dims.displayed)
    nd = viewer.dims.ndim
    world_full = np.zeros((len(world), nd))
    world_full[:, nd - world.shape[1] :] = world
    return _world_box_to_pixels(image_layer, viewer, world_full[:, displayed])


# ---------------------------------------------------------------------- DCIN controls
#: Plain-words explanation of each DCIN mode (tooltips of the mode box).
DCIN_TIPS: dict[str, str] = {
    "auto": (
        "Automatic: 'full' when the model carries a reference bank of its training colours, "
        "otherwise no normalisation"
    ),
    "none": "No colour normalisation: the image goes to the model as it is",
    "gris": (
        "GRIS (global reference): recolour the image like the most typical image the model was "
        "trained on; the same reference for every image"
    ),
    "lris": (
        "LRIS (local reference): recolour the image like the training image the model finds "
        "most similar to it"
    ),
    "full": (
        "Full DCIN (recommended): segment both the GRIS- and the LRIS-recoloured image and "
        "average them; where the two disagree is the uncertainty map. About twice the time"
    ),
    "reference": (
        "Your reference: recolour the image like a well-stained image you choose (an open "
        "image layer or a file)"
    ),
}
#: Modes that need the model's reference bank.
BANK_MODES = ("gris", "lris", "full")
_BANK_HINT = (
    "{name}: this model has no reference bank of its training colours; add one with "
    "`dgseg bank MODEL --source TRAINING_FOLDER`, or use 'reference' (your own image)"
)
_BRANCH_LABELS = {"gris": "GRIS", "lris": "LRIS", "reference": "Reference"}
#: Longest side of the copy of a reference image read to compute its colour statistics.
REFERENCE_MAX_SIDE = 2048


def _fmt3(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


def describe_references(
    dcin: dict[str, Any] | None, reference_label: str | None = None
) -> tuple[str, str]:
    """A one-line summary of the references DCIN used, and a tooltip with their colour stats.

    Parameters
    ----------
    dcin : dict or None
        ``Prediction.provenance["dcin"]``: ``mode``, ``space``, ``references`` (each with
        ``branch``, ``reference``, ``mean``, ``std``), ``target_mean``, ``target_std``, ``notice``.
    reference_label : str, optional
        How to call the user's reference (layer or file name) instead of the core's description.

    Returns
    -------
    line, tooltip : str
        E.g. ``"GRIS: nuclei_clean_0003\nLRIS: nuclei_clean_0011"`` (one reference a line) and a
        multi-line tooltip.
    """
    if not dcin:
        return "no colour normalisation", ""
    notice = dcin.get("notice")
    refs = list(dcin.get("references") or [])
    if notice:
        return f"skipped: {notice}", "The image went to the model as it is."
    if not refs:
        return "none (the image went to the model as it is)", ""
    parts = []
    for ref in refs:
        branch = str(ref.get("branch", "?"))
        name = ref.get("reference", "?")
        if branch == "reference" and reference_label:
            name = reference_label
        parts.append(f"{_BRANCH_LABELS.get(branch, branch)}: {name}")
    space = dcin.get("space", "lab-reinhard")
    tips = [f"DCIN {dcin.get('mode', '?')}, colour statistics in {space} (mean, std):"]
    if dcin.get("target_mean") is not None:
        tips.append(
            f"target tissue: {_fmt3(dcin['target_mean'])}, {_fmt3(dcin.get('target_std', []))}"
        )
    for ref, part in zip(refs, parts, strict=True):
        tips.append(f"{part}: {_fmt3(ref.get('mean', []))}, {_fmt3(ref.get('std', []))}")
    return "\n".join(parts), "\n".join(tips)


def _colour_swatch(dcin: dict[str, Any] | None, height: int = 18) -> QPixmap | None:
    """Small strip: the target's mean tissue colour, then each reference's mean colour."""
    if not dcin or dcin.get("notice") or dcin.get("target_mean") is None:
        return None
    import torch

    from napari_dgseg.core.color.transforms import from_space

    means = [dcin["target_mean"]] + [r["mean"] for r in dcin.get("references") or []]
    try:
        lab = torch.tensor(means, dtype=torch.float64).T.reshape(3, 1, len(means))
        rgb = from_space(lab, dcin.get("space", "lab-reinhard")).clamp(0, 1)
    except Exception:  # a swatch is decoration; an odd space must not break the result
        return None
    rgb8 = (rgb.permute(1, 2, 0)[0].numpy() * 255).round().astype(np.uint8)
    block = height + 6
    pixmap = QPixmap(block * len(means) + 4 * (len(means) - 1), height)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    for i, (r, g, b) in enumerate(rgb8.tolist()):
        painter.fillRect(i * (block + 4), 0, block, height, QColor(r, g, b))
    painter.end()
    return pixmap


class DcinControls(QGroupBox):
    """The "Colour normalisation (DCIN)" group of the Segment widget.

    Parameters
    ----------
    viewer : napari.Viewer
        Its Image layers are offered as the user's reference.

    Attributes
    ----------
    mode_combo : QComboBox
        One of :data:`~napari_dgseg.core.color.dcin.DCIN_MODES`.
    reference_picker : LayerPicker
        Image layer used as reference in mode ``reference`` (the target image is not offered).
    file_button, clear_file_button : QPushButton
        Choose a reference file instead of a layer / go back to the layer.
    normalized_check, uncertainty_check : QCheckBox
        Add the normalised image(s) / the GRIS-LRIS uncertainty map as layers.
    references_line : QLabel
        Read-only (selectable): the references chosen by the last run (colour statistics in its tooltip).
    swatch : QLabel
        Mean tissue colour of the target and of each reference after a run.
    """

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__("Colour normalisation (DCIN)", parent)
        from napari.layers import Image

        self._has_bank = False
        self._target: Any = None
        self.reference_file: str | None = None

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(DCIN_MODES))
        self.mode_combo.setToolTip(
            "How the colours of the image are made like those the model was trained on, before "
            "it is segmented (stain and scanner differences)"
        )
        self.reference_picker = LayerPicker(viewer, Image, "(open a reference image)")
        self.reference_picker.setToolTip(
            "A well-stained image whose colours the image should take (read at its smallest "
            "pyramid level)"
        )
        self.file_button = QPushButton("file…")
        self.file_button.setToolTip("Use an image file as the reference instead of a layer")
        self.clear_file_button = QPushButton("×")
        self.clear_file_button.setFixedWidth(28)
        self.clear_file_button.setToolTip("Forget the reference file; use the layer again")
        self.clear_file_button.setVisible(False)
        self.file_label = QLabel("")
        self.file_label.setWordWrap(True)
        self.file_label.setVisible(False)
        ref_row = QHBoxLayout()
        ref_row.setContentsMargins(0, 0, 0, 0)
        ref_row.addWidget(self.reference_picker, 1)
        ref_row.addWidget(self.file_button)
        ref_row.addWidget(self.clear_file_button)
        self._reference_row = QWidget()
        self._reference_row.setLayout(ref_row)
        self._reference_label = QLabel("Reference")

        self.normalized_check = QCheckBox("show normalized image")
        self.normalized_check.setToolTip(
            "Also add the colour-normalised image as a layer over the original (one per "
            "reference), to compare before and after"
        )
        self.uncertainty_check = QCheckBox("uncertainty map")
        self.uncertainty_check.setToolTip(
            "Full mode only: add where the GRIS and LRIS results disagree (0 = agree, 1 = "
            "opposite) as a layer; bright areas deserve a second look"
        )
        # One reference per line, no word wrap, and two lines from the start: a napari dock does
        # not grow when a label needs another line after a run.
        self.references_line = QLabel("(the references chosen\nby the next run)")
        self.references_line.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.references_line.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.references_line.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.references_line.setToolTip("The references chosen by the last run appear here")
        self.swatch = QLabel()
        self.swatch.setToolTip("Mean tissue colour: the image, then each reference")
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Mode", self.mode_combo)
        form.addRow(self._reference_label, self._reference_row)
        form.addRow("", self.file_label)
        form.addRow("", self.normalized_check)
        form.addRow("", self.uncertainty_check)
        form.addRow("Used", self.references_line)
        form.addRow("", self.swatch)

        self.mode_combo.currentIndexChanged.connect(self.update_controls)
        self.file_button.clicked.connect(lambda: self.choose_file())
        self.clear_file_button.clicked.connect(lambda: self.set_reference_file(None))
        self.set_bundle(None)

    # -------------------------------------------------------------- state
    @property
    def has_bank(self) -> bool:
        """True when the loaded model carries a DCIN reference bank."""
        return self._has_bank

    def mode(self) -> str:
        """The mode chosen in the box (``auto`` not resolved)."""
        return self.mode_combo.currentText()

    def effective_mode(self) -> str:
        """The mode the core will run: ``auto`` resolved for the loaded model."""
        mode = self.mode()
        if mode == "auto":
            return "full" if self._has_bank else "none"
        return mode

    def set_bundle(self, bundle: Any) -> None:
        """Enable the modes the model supports (gris/lris/full need its reference bank)."""
        self._has_bank = bundle is not None and bundle.extra("bank") is not None
        available = [self._has_bank or m not in BANK_MODES for m in DCIN_MODES]
        disable_unavailable(self.mode_combo, available, _BANK_HINT)
        model = self.mode_combo.model()
        for i, mode in enumerate(DCIN_MODES):
            if not available[i]:
                continue
            tip = DCIN_TIPS[mode]
            if mode == "auto":
                tip += f" (this model: {'full' if self._has_bank else 'none'})"
            model.item(i).setToolTip(tip)
        if not available[self.mode_combo.currentIndex()]:
            self.mode_combo.setCurrentIndex(DCIN_MODES.index("auto"))
        self.update_controls()

    def set_target(self, layer: Any) -> None:
        """The image to segment: neither it nor layers made from it are offered as reference."""
        self._target = layer
        name = None if layer is None else layer.name

        def derived(candidate: Any) -> bool:
            meta = candidate.metadata if isinstance(candidate.metadata, dict) else {}
            return candidate is layer or (name is not None and meta.get("source_layer") == name)

        self.reference_picker.set_exclude(derived)

    def set_reference_file(self, path: str | None) -> None:
        """Use the image file at ``path`` as reference (None: use the layer picker again)."""
        from pathlib import Path

        self.reference_file = None if not path else str(path)
        if self.reference_file is not None:
            self.file_label.setText(f"file: {Path(self.reference_file).name}")
            self.file_label.setToolTip(self.reference_file)
        self.update_controls()

    def choose_file(self) -> None:
        """Ask for a reference image file."""
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Reference image for colour normalisation",
            "",
            "Images (*.png *.jpg *.jpeg *.tif *.tiff *.svs *.bmp);;All files (*)",
        )
        if path:
            self.set_reference_file(path)

    def update_controls(self, *_: Any) -> None:
        """Show/enable what the chosen mode uses."""
        mode = self.effective_mode()
        ref = mode == "reference"
        self._reference_label.setVisible(ref)
        self._reference_row.setVisible(ref)
        has_file = self.reference_file is not None
        self.file_label.setVisible(ref and has_file)
        self.clear_file_button.setVisible(has_file)
        self.reference_picker.setEnabled(not has_file)
        self.normalized_check.setEnabled(mode != "none")
        self.uncertainty_check.setEnabled(mode == "full")

    def reference_source(self) -> tuple[Any, str] | None:
        """The user's reference as ``(layer or path, label)``, or None if none is chosen."""
        if self.reference_file is not None:
            from pathlib import Path

            return self.reference_file, Path(self.reference_file).name
        layer = self.reference_picker.layer()
        return None if layer is None else (layer, layer.name)

    def show_result(self, dcin: dict[str, Any] | None, reference_label: str | None) -> None:
        """Show the references of a finished run (line, tooltip, colour swatch)."""
        line, tip = describe_references(dcin, reference_label)
        self.references_line.setText(line)
        self.references_line.setToolTip(tip or line)
        pixmap = _colour_swatch(dcin)
        self.swatch.setVisible(pixmap is not None)
        if pixmap is not None:
            self.swatch.setPixmap(pixmap)


# ---------------------------------------------------------------------- widget
class SegmentWidget(QWidget):
    """Dock widget: segment an image layer with a model bundle.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).

    Notes
    -----
    Tests: :meth:`run` with ``block=True`` (or ``$DGSEG_SYNC_WORKERS=1``) runs in the calling
    thread; otherwise wait on :attr:`running` (``qtbot.waitUntil(lambda: not w.running)``).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Shapes

        self.viewer = napari_viewer
        self._started = 0.0
        self._last_result: list[Any] = []
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
        settings_box = QGroupBox("Settings")
        sform = QFormLayout(settings_box)
        sform.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for spin in (self.tile_spin, self.overlap_spin):
            spin.setMinimumWidth(110)
            spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        sform.addRow("Tile size", self.tile_spin)
        sform.addRow("Overlap", self.overlap_spin)
        sform.addRow("Device", self.device_combo)
        sform.addRow("", self.probabilities_check)

        # colour normalisation
        self.dcin = DcinControls(napari_viewer)

        # run
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment the chosen region in the background")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m tiles")
        self.progress_bar.setTextVisible(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(model_box)
        layout.addWidget(input_box)
        layout.addWidget(settings_box)
        layout.addWidget(self.dcin)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        # Preferred, not Maximum: a Maximum widget caps its dock at its first size hint, and rows
        # that appear later (Shapes, reference, the references line) would be squeezed.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(320)

        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
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
    def _worker(self) -> Any:
        return self._runner.worker

    @property
    def last_result(self) -> list[Any]:
        """Layers added by the last successful run."""
        return list(self._last_result)

    def _update_controls(self, *_: Any) -> None:
        drawn = self.region_combo.currentText() == REGIONS[2]
        self.shapes_picker.setVisible(drawn)
        self._shapes_label.setVisible(drawn)
        busy = self.running or self.model_picker.loading
        ready = self.model_picker.bundle is not None and self.image_picker.layer() is not None
        self.run_button.setEnabled(ready and not busy)
        self.cancel_button.setEnabled(self.running)
        for w in (
            self.model_picker,
            self.image_picker,
            self.region_combo,
            self.shapes_picker,
            self.dcin,
        ):
            w.setEnabled(not self.running)

    # -------------------------------------------------------------- actions
    def cancel(self) -> None:
        """Ask the running segmentation to stop; no layer will be added."""
        if self.running:
            self._runner.cancel()
            self.status_label.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def run(self, block: bool = False) -> None:
        """Segment the selected image layer with the loaded model.

        Parameters
        ----------
        block : bool
            Run in the calling thread and return when done (tests, scripts).
        """
        bundle = self.model_picker.bundle
        if bundle is None:
            notify("no model loaded; choose one under 'Model' (or Browse… for a .dgseg file)")
            return
        layer = self.image_picker.layer()
        if layer is None:
            notify("no image to segment; open an image and choose it under 'Image'")
            return
        self.segment_layer(layer, block=block)

    def segment_layer(self, layer: Any, *, block: bool = False) -> None:
        """Segment ``layer`` (must be an Image layer) with the current settings."""
        from napari.layers import Image

        if self.running:
            notify("a segmentation is already running; wait or press Cancel", "warning")
            return
        bundle = self.model_picker.bundle
        if bundle is None:
            notify("no model loaded; choose one under 'Model' (or Browse… for a .dgseg file)")
            return
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            notify(
                f"'{getattr(layer, 'name', layer)}' is a {kind} layer; segmentation needs an "
                "Image layer. Choose an image under 'Image'."
            )
            return
        try:
            plane, plane_info = _level0_plane(layer, self.viewer)
            region = self.current_region(layer)
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return
        h, w = region.shape
        if h * w > MAX_PIXELS:
            notify(
                f"the region is {h} x {w} pixels, more than one run can hold in memory "
                f"({MAX_PIXELS / 1e6:.0f} Mpx); choose 'current view' or 'drawn rectangle', or use "
                "`dgseg predict` for whole slides"
            )
            return
        crop = plane[region.y0 : region.y1, region.x0 : region.x1]
        try:
            reference, reference_label = self._dcin_reference()
        except InputError as exc:
            notify(str(exc))
            self.status_label.setText(str(exc))
            return
        dcin_mode = self.dcin.mode()
        effective = self.dcin.effective_mode()
        job = _Job(
            bundle=bundle,
            image=crop,
            image_name=layer.name,
            region=region,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            source_path=_source_path(layer),
            plane_info=plane_info,
            tile=int(self.tile_spin.value()),
            overlap=int(self.overlap_spin.value()),
            device=self.device_combo.currentText(),
            probabilities=self.probabilities_check.isChecked(),
            dcin=dcin_mode,
            reference=reference,
            reference_label=reference_label,
            normalized=effective != "none" and self.dcin.normalized_check.isChecked(),
            uncertainty=effective == "full" and self.dcin.uncertainty_check.isChecked(),
        )
        self._started = time.perf_counter()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        colour = "" if effective == "none" else f", DCIN {effective}"
        self.status_label.setText(
            f"Segmenting {h} x {w} px of '{layer.name}' ({region.mode}) with {bundle.name}{colour}…"
        )
        self._runner.start(job, block=block, description=f"Segmenting {layer.name}")
        self._update_controls()

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
        plane, _ = _layer_plane(ref, self.viewer, level=-1)
        return plane, label

    def current_region(self, layer: Any) -> Region:
        """The level-0 pixel region chosen in the 'Region' box for ``layer``."""
        mode = self.region_combo.currentText()
        shape = _plane_shape(layer)
        if mode == REGIONS[0]:
            return Region(mode, 0, 0, shape[0], shape[1])
        if mode == REGIONS[1]:
            world = _visible_world_box(self.viewer)
            pixels = _world_box_to_pixels(layer, self.viewer, world)
            return _clip_box(mode, pixels, shape, "the current view")
        pixels = shape_box_in_image(self.shapes_picker.layer(), layer, self.viewer)
        return _clip_box(mode, pixels, shape, "the drawn rectangle")

    # -------------------------------------------------------------- results
    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_succeeded(self, result: _Result) -> None:
        self._last_result = add_or_replace(self.viewer, result.layer_data)
        labels = [lyr for lyr in self._last_result if lyr._type_string == "labels"]
        if labels or self._last_result:
            self.viewer.layers.selection.active = (labels or self._last_result)[0]
        self.dcin.show_result(result.dcin, result.reference_label)
        dcin = result.dcin or {}
        notice = dcin.get("notice")
        if notice:
            notify(notice, "info")
            self.status_label.setText(f"{result.summary}. {notice}")
        elif dcin.get("mode", "none") != "none":
            self.status_label.setText(f"{result.summary} · DCIN {dcin['mode']}")
        else:
            self.status_label.setText(result.summary)

    def _on_failed(self, message: str) -> None:
        notify(message)
        self.status_label.setText(f"Failed: {message}")

    def _on_cancelled(self) -> None:
        notify("Segmentation cancelled", "info")
        self.status_label.setText("Segmentation cancelled; nothing was added.")

    def _on_finished(self) -> None:
        self._update_controls()


@dataclass
class _Result:
    """What a finished run hands to the GUI thread."""

    layer_data: list[Any]
    summary: str
    dcin: dict[str, Any] | None
    reference_label: str | None


@dataclass
class _Job:
    """Everything one run needs, gathered in the GUI thread and executed in the worker."""

    bundle: Any
    image: Any
    image_name: str
    region: Region
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    source_path: str | None
    plane_info: dict[str, Any]
    tile: int
    overlap: int
    device: str
    probabilities: bool
    dcin: str = "auto"
    reference: Any = None
    reference_label: str | None = None
    normalized: bool = False
    uncertainty: bool = False

    def __call__(self, progress: Callable[[int, int], None], cancel: threading.Event) -> _Result:
        reference = _read_reference(self.reference) if self.dcin == "reference" else None
        pred = self.bundle.predict(
            self.image,
            tile=self.tile,
            overlap=self.overlap,
            device=self.device,
            dcin=self.dcin,
            reference=reference,
            return_normalized=self.normalized,
            progress=progress,
            cancel=cancel,
        )
        provenance = dict(pred.provenance)
        dcin = provenance.get("dcin")
        if isinstance(dcin, dict) and self.reference_label and dcin.get("mode") == "reference":
            dcin = dict(dcin) | {"reference_source": self.reference_label}
            provenance["dcin"] = dcin
        provenance.update(
            {
                "source_layer": self.image_name,
                "source_path": self.source_path,
                "region": self.region.as_dict(),
                **self.plane_info,
            }
        )
        output = self.bundle.family.output
        placement = {
            "scale": self.scale,
            "translate": self.translate,
            "offset": (self.region.y0, self.region.x0),
            "provenance": provenance,
        }
        layer_data = []
        if self.normalized:
            layer_data += normalized_layer_data(
                pred.extras.get("normalized") or {}, image_name=self.image_name, **placement
            )
        layer_data += prediction_layer_data(
            pred,
            image_name=self.image_name,
            model_name=self.bundle.name,
            output=output,
            class_colors=self.bundle.class_colors,
            probabilities=self.probabilities,
            uncertainty=self.uncertainty,
            uncertainty_visible=self.uncertainty,
            **placement,
        )
        return _Result(
            layer_data=layer_data,
            summary=summarize(pred, output),
            dcin=dcin if isinstance(dcin, dict) else None,
            reference_label=self.reference_label,
        )


def _read_reference(reference: Any) -> Any:
    """Read the user's reference in the worker: a path as is, an array strided to at most
    :data:`REFERENCE_MAX_SIDE` pixels a side (only those pixels are read from dask/zarr)."""
    if reference is None or isinstance(reference, str):
        return reference
    shape = getattr(reference, "shape", None)
    if shape is None or len(shape) < 2:
        raise InputError(
            "the DCIN reference must be an image (H, W) or (H, W, 3|4); choose an image layer "
            "or file under 'Reference'"
        )
    step = max(1, -(-max(int(shape[0]), int(shape[1])) // REFERENCE_MAX_SIDE))
    small = reference[::step, ::step]
    if hasattr(small, "compute"):
        small = small.compute()
    return np.asarray(small)


def _source_path(layer: Any) -> str | None:
    path = layer.metadata.get("source_path") if isinstance(layer.metadata, dict) else None
    if path is None:
        path = getattr(getattr(layer, "source", None), "path", None)
    return None if path is None else str(path)


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
