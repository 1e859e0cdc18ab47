"""The "Domain-gap map" job: fit D1 to the model's frozen features and draw the local mask; no Qt.

Called as ``job(progress, cancel)`` by a :class:`~napari_dgseg._napari.runner.TaskRunner` in a
worker thread: the model's feature pass over the image reports its tiles, the fit of Mind the
Gap's pixel-wise discriminator D1 (:mod:`napari_dgseg.core.local_align.gap_map`) its steps; the
result is one Image layer (:func:`~napari_dgseg._napari.layers.local_mask_layer_data`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from napari_dgseg._napari.layers import local_mask_layer_data
from napari_dgseg._napari.runner import ProgressFn

__all__ = ["GapMapJob", "GapMapResult"]


@dataclass
class GapMapResult:
    """The layer data tuple of the map and a one-line summary."""

    layer_data: tuple[Any, dict[str, Any], str]
    summary: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class GapMapJob:
    """Everything the worker needs: the bundle, the (lazy) image region and its placement."""

    bundle: Any
    image: Any
    image_name: str
    offset: tuple[int, int] = (0, 0)
    scale: tuple[float, ...] = (1.0, 1.0)
    translate: tuple[float, ...] = (0.0, 0.0)
    device: str = "auto"
    steps: int = 300
    scale_kwargs: dict[str, Any] = field(default_factory=dict)
    region: dict[str, Any] = field(default_factory=dict)

    def __call__(self, progress: ProgressFn, cancel: threading.Event) -> GapMapResult:
        import numpy as np

        from napari_dgseg.core.local_align.gap_map import domain_gap_steps

        kwargs = dict(self.scale_kwargs)
        gen = domain_gap_steps(self.bundle, np.asarray(self.image), steps=self.steps,
                               device=self.device, cancel=cancel, tile_progress=progress,
                               **kwargs)
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if step.stage == "fit":
                progress(step.step, step.steps)
        prov = dict(result.provenance) | {"source_layer": self.image_name, "region": self.region}
        data = local_mask_layer_data(
            result.local_mask, image_name=self.image_name, model_name=self.bundle.name,
            scale=self.scale, translate=self.translate, offset=self.offset, provenance=prov,
            what="domain-gap map",
        )
        mask = result.local_mask
        summary = (f"Domain-gap map of '{self.image_name}' with {self.bundle.name}: mean "
                   f"{float(mask.mean()):.2f} (the model's own training crops: "
                   f"{prov['source_mask_mean']:.2f}), {100 * float((mask > 0.5).mean()):.0f} % of "
                   f"pixels above 0.5; D1 accuracy {prov['accuracy']:.2f}, "
                   f"{prov['seconds']['total']:.0f} s")
        return GapMapResult(data, summary, prov)
