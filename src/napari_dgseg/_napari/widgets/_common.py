"""Small helpers shared by the napari-dgseg dock widgets (no widget classes here).

The widgets' building blocks each live in their own module: :mod:`.layer_picker`,
:mod:`.model_picker`, and the job runner :mod:`napari_dgseg._napari.runner`.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QComboBox

__all__ = ["disable_unavailable"]


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
