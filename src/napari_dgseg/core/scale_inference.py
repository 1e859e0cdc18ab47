"""Scale handling around tiled inference: decide the factor, resample, bring outputs back.

:func:`plan_scale` decides the factor for one image and a bundle (:func:`~napari_dgseg.core.scale.
resolve_scale`: the user's factor, pixel size or object size; else the file's pixel size; else an
estimate from the image) and returns the adapter the network reads: the image itself, or a
:class:`~napari_dgseg.core.resample.ResampledImage` that resizes it tile by tile (a lazy slide
still streams). The family post-processes at the model's scale, where its sizes and thresholds
were tuned; :func:`back_to_image` then brings every output to the image grid (ids by nearest
neighbour, probabilities bilinearly, semantic labels as the argmax of the resampled
probabilities so edges stay smooth).

For vessel models :func:`fundus_mask` finds the field of view (:mod:`napari_dgseg.core.fov`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import ImageAdapter
from napari_dgseg.core.resample import ResampledImage, resample_to
from napari_dgseg.core.scale import ScaleDecision, bundle_scale, resolve_scale

__all__ = ["FOV_MODES", "back_to_image", "fundus_mask", "plan_scale", "task_kind"]

#: ``auto``: vessel models ignore the dark surround of a fundus photograph and its rim;
#: ``off``: the whole image counts.
FOV_MODES = ("auto", "off")
#: Tasks whose models are not upsampled unless the user asks: on fundus images taken smaller
#: than the training scale, upsampling lost Dice for both vessel models (docs/scale.md).
NO_UPSAMPLE = frozenset({"vessels"})
#: Smallest side of a resized image (the network's tiling needs this much).
MIN_RESIZED_SIDE = 16
#: Images with a shorter side hold too few objects to estimate a scale from.
MIN_ESTIMATE_SIDE = 48


def task_kind(manifest: dict[str, Any]) -> str | None:
    """``"nuclei"`` or ``"vessels"`` for a bundle's task, None otherwise."""
    task = str(manifest.get("task", ""))
    return task if task in ("nuclei", "vessels") else None


def plan_scale(
    manifest: dict[str, Any],
    adapter: ImageAdapter,
    *,
    rescale: str = "auto",
    scale: float | None = None,
    mpp: float | None = None,
    object_size: float | None = None,
    pixel_size_um: Any = None,
) -> tuple[ScaleDecision, ImageAdapter]:
    """The scale decision for ``adapter`` and the adapter the network should read.

    Parameters are those of :func:`~napari_dgseg.core.scale.resolve_scale`; ``manifest`` is
    the bundle's (its ``"scale"`` record or its task's default).
    """
    from napari_dgseg.core.scale_estimate import estimate_object_size

    kind = task_kind(manifest)
    model_scale = bundle_scale(manifest)

    def estimate() -> dict[str, Any]:
        if min(adapter.height, adapter.width) < MIN_ESTIMATE_SIDE:
            return {"object_size_px": None, "why": f"image under {MIN_ESTIMATE_SIDE} px a side"}
        return estimate_object_size(adapter, kind)

    decision = resolve_scale(model_scale, rescale=rescale, scale=scale, mpp=mpp,
                             object_size=object_size, pixel_size_um=pixel_size_um,
                             estimate=estimate if kind is not None else None,
                             upsample=kind not in NO_UPSAMPLE)
    if not decision.applied:
        return decision, adapter
    resized = ResampledImage.of(adapter, decision.factor)
    if min(resized.height, resized.width) < MIN_RESIZED_SIDE and decision.source == "estimated":
        return replace(decision, factor=1.0, applied=False,
                       reason=f"not resampled: the estimated factor {decision.factor:.3g} would "
                              "leave too few pixels"), adapter
    if min(resized.height, resized.width) < MIN_RESIZED_SIDE:
        raise InputError(f"resized by {decision.factor:.3g} the image would be {resized.height} x "
                         f"{resized.width} pixels, too small to segment; give a larger --scale or "
                         "check the pixel size")
    return decision, resized


def back_to_image(fields: dict[str, Any], grid: tuple[int, int], shape: tuple[int, int],
                  semantic: bool) -> dict[str, Any]:
    """Every output on the model grid ``grid`` resized to the image grid ``shape``."""
    if tuple(grid) == tuple(shape):
        return fields
    out = {k: resample_to(v, tuple(grid), tuple(shape)) for k, v in fields.items()}
    probs = out.get("probabilities")
    if semantic and isinstance(probs, np.ndarray) and probs.ndim == 3:
        out["labels"] = probs.argmax(axis=0).astype(np.int32)
    return out


def fundus_mask(manifest: dict[str, Any], adapter: ImageAdapter,
                mode: str = "auto") -> tuple[np.ndarray | None, dict[str, Any]]:
    """The field of view to keep for a vessel model (None: keep everything)."""
    from napari_dgseg.core.fov import field_of_view

    if mode not in FOV_MODES:
        raise InputError(f"unknown field-of-view mode {mode!r}; use one of {list(FOV_MODES)}")
    if mode == "off" or task_kind(manifest) != "vessels":
        return None, {"mode": mode, "applied": False}
    mask, info = field_of_view(adapter)
    return mask, {"mode": mode, "applied": mask is not None, **info}
