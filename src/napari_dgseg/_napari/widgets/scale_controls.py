"""The "Scale" row of the Segment widget: how the image is brought to the model's scale.

A mode (``auto``: the file's pixel size, else estimated from the image; ``from file``; a resize
``factor``; the image's ``pixel size``; the typical ``object size``; ``off``) with one value field,
the model's training scale, and after each run the factor used and the estimate (the value field
is filled with it so the user can adjust it and run again). The choice becomes the keyword
arguments of :meth:`Bundle.predict` (:meth:`ScaleControls.predict_kwargs`).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

__all__ = ["SCALE_MODES", "ScaleControls", "describe_scale"]

#: Modes shown, in order: label -> (rescale, value keyword or None, spin suffix).
SCALE_MODES: dict[str, tuple[str, str | None, str]] = {
    "auto": ("auto", None, ""),
    "from file": ("metadata", None, ""),
    "factor": ("auto", "scale", " x"),
    "pixel size": ("auto", "mpp", " µm/px"),
    "object size": ("auto", "object_size", " px"),
    "off": ("off", None, ""),
}

_TIPS = {
    "auto": "Resample to the model's scale: the file's pixel size, else estimated from the image",
    "from file": "Resample only when the file records a pixel size",
    "factor": "Resize the image by this factor before the model (2 = twice as large)",
    "pixel size": "The image's pixel size in micrometres (overrides the file's)",
    "object size": "Typical object diameter in the image, pixels (nucleus, vessel calibre)",
    "off": "Feed the image as it is (no resampling)",
}

_VALUE_TIP = ("The value for 'factor', 'pixel size' or 'object size'; after a run it shows the "
              "factor found, ready to adjust")


def describe_scale(scale: dict[str, Any] | None) -> str:
    """One line about a run's ``provenance["scale"]``."""
    if not scale:
        return ""
    est = (scale.get("estimate") or {}).get("object_size_px")
    source = scale.get("source", "none")
    seen = f": objects {est:.3g} px" if est is not None else ""
    if scale.get("applied"):
        return f"factor {scale.get('factor', 1.0):.3g} ({source}{seen})"
    proposed = scale.get("proposed", 1.0)
    if source != "none" and proposed is not None and abs(proposed - 1.0) > 1e-3:
        return f"not resampled: {source} factor {proposed:.3g} is close to 1{seen}"
    why = str((scale.get("estimate") or {}).get("why") or "")
    if source == "none" and why:  # the estimator declined; the tooltip has its full reason
        if "not confirmed" in why:
            return "not resampled: size estimate not confirmed by the learned ruler"
        if "not confident" in why:
            return "not resampled: size estimate ambiguous (nuclei or clusters?)"
        return "not resampled: no size estimate"
    return "not resampled" + (f" ({source}{seen})" if source != "none" else "")


class ScaleControls(QWidget):
    """Mode, value, the model's scale and the last run's factor."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(SCALE_MODES))
        for i, name in enumerate(SCALE_MODES):
            self.mode_combo.setItemData(i, _TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.mode_combo.setToolTip(_TIPS["auto"])
        self.value_spin = QDoubleSpinBox()
        self.value_spin.setDecimals(3)
        self.value_spin.setRange(0.001, 1000.0)
        self.value_spin.setValue(1.0)
        self.value_spin.setMinimumWidth(110)
        self.value_spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.model_label = QLabel("")
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        for label in (self.model_label, self.result_label):
            label.setStyleSheet("color: gray")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.mode_combo)
        row.addWidget(self.value_spin)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(row)
        col.addWidget(self.model_label)
        col.addWidget(self.result_label)
        self._last: dict[str, Any] | None = None
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        self._mode_changed(self.mode_combo.currentText())

    def mode(self) -> str:
        return self.mode_combo.currentText()

    def set_mode(self, mode: str, value: float | None = None) -> None:
        """Choose a mode (a key of :data:`SCALE_MODES`) and optionally its value."""
        if mode not in SCALE_MODES:
            raise ValueError(f"unknown scale mode {mode!r}; use one of {list(SCALE_MODES)}")
        self.mode_combo.setCurrentText(mode)
        if value is not None:
            self.value_spin.setValue(float(value))

    def _mode_changed(self, mode: str) -> None:
        _, key, suffix = SCALE_MODES[mode]
        self.value_spin.setEnabled(key is not None)
        self.value_spin.setSuffix(suffix)
        self.mode_combo.setToolTip(_TIPS[mode])
        self.value_spin.setToolTip(_TIPS[mode] if key else _VALUE_TIP)
        if key == "scale" and self._last:  # the estimate, ready to adjust
            self.value_spin.setValue(float(self._last.get("proposed") or 1.0))
        elif key == "object_size" and self._last:
            est = (self._last.get("estimate") or {}).get("object_size_px")
            if est:
                self.value_spin.setValue(float(est))

    def predict_kwargs(self, pixel_size_um: Any = None) -> dict[str, Any]:
        """Keyword arguments of :meth:`Bundle.predict` for the current choice."""
        rescale, key, _ = SCALE_MODES[self.mode()]
        kwargs: dict[str, Any] = {"rescale": rescale, "pixel_size_um": pixel_size_um}
        if key is not None:
            kwargs[key] = float(self.value_spin.value())
        return kwargs

    def show_model(self, bundle: Any) -> None:
        """The loaded model's training scale."""
        if bundle is None:
            self.model_label.setText("")
            return
        s = bundle.scale
        what = {"nuclei": "nuclei", "vessels": "vessel calibre"}.get(
            str(bundle.manifest.get("task", "")), "objects")
        parts = []
        if s.get("pixel_size_um"):
            parts.append(f"{s['pixel_size_um']:g} µm/px")
        if s.get("object_size_px"):
            parts.append(f"{what} {s['object_size_px']:g} px")
        self.model_label.setText("model: " + (", ".join(parts) if parts else "scale unknown"))

    def show_result(self, scale: dict[str, Any] | None) -> None:
        """After a run: the factor used and the estimate (and fill the value field with it)."""
        self._last = scale
        self.result_label.setText(("last run: " + describe_scale(scale)) if scale else "")
        self.result_label.setToolTip(str((scale or {}).get("reason") or ""))
        if scale and SCALE_MODES[self.mode()][1] is None:
            self.value_spin.setValue(float(scale.get("proposed") or 1.0))
            self.value_spin.setSuffix(" x")
