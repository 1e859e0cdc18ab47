"""The Segment widget's job: predict a region in the worker and build its layer data.

:class:`SegmentJob` holds everything one run needs, gathered in the GUI thread (a lazy slice of
the image, never read there); called as ``job(progress, cancel)`` by the
:class:`~napari_dgseg._napari.runner.TaskRunner`, it reads the DCIN reference, runs
:meth:`Bundle.predict` tile by tile, and returns a :class:`SegmentResult` whose layer data tuples
the GUI thread only has to add to the viewer. No Qt and no viewer access here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_dgseg._napari.geometry import Region
from napari_dgseg._napari.layers import normalized_layer_data, prediction_layer_data, summarize
from napari_dgseg._napari.runner import ProgressFn
from napari_dgseg.core.errors import InputError

__all__ = [
    "REFERENCE_MAX_SIDE",
    "SegmentJob",
    "SegmentResult",
    "layer_pixel_size",
    "layer_source_path",
    "read_reference",
]

#: Longest side of the copy of a reference image read to compute its colour statistics.
REFERENCE_MAX_SIDE = 2048


@dataclass
class SegmentResult:
    """What a finished run hands to the GUI thread."""

    layer_data: list[Any]
    summary: str
    dcin: dict[str, Any] | None
    reference_label: str | None
    #: The prediction's class probabilities ``(K, H, W)`` kept for the threshold and minimum
    #: object size controls (:func:`napari_dgseg.core.relabel.relabel`), None if it has none.
    probabilities: np.ndarray | None = None
    #: The model's own instance ids ``(H, W)`` (instance families), trimmed by those controls.
    instances: np.ndarray | None = None
    #: The run's ``provenance["scale"]``: factor used, where it came from, the estimate.
    scale: dict[str, Any] | None = None


@dataclass
class SegmentJob:
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
    #: Flip test-time augmentation (None: the model's recorded default).
    tta: bool | None = None
    #: Keyword arguments for the model's scale (``rescale``, ``scale``, ``mpp``, ...).
    scale_kwargs: dict[str, Any] = field(default_factory=dict)
    #: The whole image (lazy; a slide's smallest pyramid level) whose tissue gives DCIN's target
    #: colour statistics when only a region is segmented; None: the region itself.
    dcin_source: Any = None

    def __call__(self, progress: ProgressFn, cancel: threading.Event) -> SegmentResult:
        reference = read_reference(self.reference) if self.dcin == "reference" else None
        pred = self.bundle.predict(
            self.image,
            tile=self.tile,
            overlap=self.overlap,
            device=self.device,
            dcin=self.dcin,
            reference=reference,
            dcin_source=self.dcin_source if self.dcin != "none" else None,
            return_normalized=self.normalized,
            progress=progress,
            cancel=cancel,
            tta=self.tta,
            **self.scale_kwargs,
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
        return SegmentResult(
            layer_data=layer_data,
            summary=summarize(pred, output),
            dcin=dcin if isinstance(dcin, dict) else None,
            reference_label=self.reference_label,
            probabilities=pred.probabilities,
            instances=np.asarray(pred.labels, np.int32) if output == "instances" else None,
            scale=provenance.get("scale"),
        )


def read_reference(reference: Any) -> Any:
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


def layer_pixel_size(layer: Any) -> tuple[float, float] | None:
    """The pixel size (micrometres) our reader stored in an image layer's metadata, or None.

    The layer's ``scale`` alone is not used: without units it may be anything the user set.
    """
    meta = layer.metadata if isinstance(getattr(layer, "metadata", None), dict) else {}
    size = meta.get("pixel_size_um")
    if size is None:
        return None
    try:
        values = tuple(float(v) for v in (size if isinstance(size, (list, tuple)) else (size, size)))
    except (TypeError, ValueError):
        return None
    return (values[-2], values[-1]) if len(values) >= 2 and min(values) > 0 else None


def layer_source_path(layer: Any) -> str | None:
    """The file an image layer was read from (its metadata or napari's ``layer.source``)."""
    path = layer.metadata.get("source_path") if isinstance(layer.metadata, dict) else None
    if path is None:
        path = getattr(getattr(layer, "source", None), "path", None)
    return None if path is None else str(path)
