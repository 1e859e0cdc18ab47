"""Every input control of every dock widget says what it does (a non-empty tooltip); Xvfb.

Walks all child widgets of the Segment, Codebook and Adapt dock widgets that a user can act on
(buttons, check boxes, combo boxes, spin boxes, sliders, line edits, lists), including those
of the nested model picker and DCIN controls and those hidden until a mode needs them.
"""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def _controls(widget):
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractItemView,
        QAbstractSlider,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
    )

    kinds = (
        QAbstractButton, QAbstractItemView, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit
    )
    out = []
    for child in widget.findChildren(kinds):
        parent = child.parentWidget()
        # the editor inside a spin/combo box and a combo's popup list belong to their box
        if isinstance(parent, (QAbstractSpinBox, QComboBox)) or isinstance(
            child, QAbstractItemView
        ) and parent is not None and parent.inherits("QComboBoxPrivateContainer"):
            continue
        if isinstance(child, QAbstractSlider) and child.inherits("QScrollBar"):
            continue
        # a table's own headers and corner button are parts of the table, not controls
        ancestor, inside_view = parent, False
        while ancestor is not None and ancestor is not widget:
            inside_view = inside_view or isinstance(ancestor, QAbstractItemView)
            ancestor = ancestor.parentWidget()
        if inside_view:
            continue
        out.append(child)
    return out


def _describe(control) -> str:
    text = getattr(control, "text", lambda: "")()
    return f"{type(control).__name__} {control.objectName()!r} {text!r}"


@pytest.mark.parametrize(
    "path",
    [
        "napari_dgseg._napari.widgets.segment:SegmentWidget",
        "napari_dgseg._napari.widgets.codebook:CodebookWidget",
        "napari_dgseg._napari.widgets.adapt:AdaptWidget",
    ],
)
def test_every_control_has_a_tooltip(make_napari_viewer, qtbot, path):
    import importlib

    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    viewer = make_napari_viewer()
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, name=name)
    controls = _controls(widget)
    assert len(controls) >= 5
    missing = [_describe(c) for c in controls if not c.toolTip().strip()]
    assert missing == [], f"{name}: controls without a tooltip: {missing}"
