"""Small helpers shared by the napari-dgseg dock widgets (no widget classes here).

The widgets' building blocks each live in their own module: :mod:`.layer_picker`,
:mod:`.model_picker`, and the job runner :mod:`napari_dgseg._napari.runner`.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["disable_unavailable", "scroll_content"]


class _VerticalScroll(QScrollArea):
    """A vertical scroll area that asks for its content's full size and never clips its width."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # the content's layout changed (rows shown, longer texts): the dock asks for the new
        # minimum width instead of clipping the content
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _bar(self) -> int:
        return int(self.verticalScrollBar().sizeHint().width())

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        content = self.widget()
        if content is not None:
            hint.setWidth(max(hint.width(), content.minimumSizeHint().width() + self._bar()))
        return hint

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        content = self.widget()
        if content is None:
            return hint
        size = content.sizeHint()
        return QSize(max(hint.width(), size.width() + self._bar()), max(hint.height(), size.height()))


def scroll_content(owner: QWidget) -> QWidget:
    """The widget to lay a dock widget's controls out on: it sits in a vertical scroll area
    filling ``owner``.

    napari docks do not scroll: a widget taller than the window (a laptop screen, a DCIN guard
    line and a folder table showing) had its rows squeezed into each other, labels clipped. In a
    scroll area the rows keep their size and the dock scrolls.
    """
    content = QWidget(owner)
    scroll = _VerticalScroll(owner)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return content


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
