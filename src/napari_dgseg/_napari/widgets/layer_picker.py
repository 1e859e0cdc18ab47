"""The layer combo box of the napari-dgseg widgets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

__all__ = ["LayerPicker"]


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
