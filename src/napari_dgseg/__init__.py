"""napari-dgseg: domain-generalizing nuclei and vessel segmentation for napari.

The public Python API. Importing this package never imports napari or Qt; heavy modules (torch)
load on first use.

>>> import napari_dgseg
>>> bundle = napari_dgseg.load_bundle("nuclei-unet")          # doctest: +SKIP
>>> pred = bundle.predict(image)                                # doctest: +SKIP
>>> pred.labels.shape == image.shape[:2]                        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_bundle": ("napari_dgseg.core.bundle", "load_bundle"),
    "list_bundles": ("napari_dgseg.core.bundle", "list_bundles"),
    "Bundle": ("napari_dgseg.core.bundle", "Bundle"),
    "Prediction": ("napari_dgseg.core.predict", "Prediction"),
    "train": ("napari_dgseg.core.train.source", "train"),
    "normalize_colors": ("napari_dgseg.core.color.transfer", "normalize_colors"),
    "adapt": ("napari_dgseg.core.train.adapt", "adapt"),
}

__all__ = [
    "Bundle",
    "Prediction",
    "__version__",
    "adapt",
    "list_bundles",
    "load_bundle",
    "normalize_colors",
    "train",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_dgseg.core.bundle import Bundle, list_bundles, load_bundle
    from napari_dgseg.core.color.transfer import normalize_colors
    from napari_dgseg.core.predict import Prediction
    from napari_dgseg.core.train.adapt import adapt
    from napari_dgseg.core.train.source import train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_dgseg' has no attribute {name!r}")
