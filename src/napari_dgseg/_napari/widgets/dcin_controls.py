"""The "Colour normalisation (DCIN)" group of the Segment widget.

It picks the mode passed to ``Bundle.predict(dcin=...)`` (modes that need the model's reference
bank are greyed out for a model without one), the user's reference for mode ``reference`` (an
Image layer or a file), whether to add the normalised images and the GRIS/LRIS uncertainty map,
and shows the references DCIN chose after a run. The words and colours come from
:mod:`napari_dgseg._napari.dcin_info`.
"""

from __future__ import annotations

from typing import Any

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
    QPushButton,
    QSizePolicy,
    QWidget,
)

from napari_dgseg._napari.dcin_info import (
    BANK_HINT,
    BANK_MODES,
    DCIN_TIPS,
    describe_guard,
    describe_references,
    swatch_colors,
)
from napari_dgseg._napari.widgets._common import disable_unavailable
from napari_dgseg._napari.widgets.layer_picker import LayerPicker
from napari_dgseg.core.color.dcin import DCIN_MODES

__all__ = ["DcinControls", "colour_swatch"]


def colour_swatch(dcin: dict[str, Any] | None, height: int = 18) -> QPixmap | None:
    """Small strip: the target's mean tissue colour, then each reference's mean colour."""
    rgb8 = swatch_colors(dcin)
    if rgb8 is None:
        return None
    block = height + 6
    n = len(rgb8)
    pixmap = QPixmap(block * n + 4 * (n - 1), height)
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
    guard_label : QLabel
        After an ``auto`` run: the guard's decision and its reason (signals in the tooltip).
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
        # What the guard of 'auto' decided and why (hidden until an auto run has a decision)
        self.guard_label = QLabel("")
        self.guard_label.setWordWrap(True)
        self.guard_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.guard_label.setVisible(False)
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Mode", self.mode_combo)
        form.addRow(self._reference_label, self._reference_row)
        form.addRow("", self.file_label)
        form.addRow("", self.normalized_check)
        form.addRow("", self.uncertainty_check)
        form.addRow("Used", self.references_line)
        form.addRow("", self.swatch)
        form.addRow("", self.guard_label)

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
        disable_unavailable(self.mode_combo, available, BANK_HINT)
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
        guard = (dcin or {}).get("guard") or {}
        self.guard_label.setVisible(bool(guard))
        if guard:
            kept = guard.get("action") == "keep"
            self.guard_label.setText(
                f"{'✓' if kept else '⚠'} Guard: {'normalised' if kept else 'not normalised'}: "
                f"{guard.get('reason', '')}")
            self.guard_label.setToolTip(describe_guard(guard))
        pixmap = colour_swatch(dcin)
        self.swatch.setVisible(pixmap is not None)
        if pixmap is not None:
            self.swatch.setPixmap(pixmap)
