"""One scale decision for a batch of images of the same slide or scanner.

Tiles exported from one slide share their pixel size, but the image-only size estimate
(:mod:`napari_dgseg.core.scale_estimate`) reads each 256 px tile on its own and varies a lot
between them (on 256 px crops of one real H&E tile: factors 0.34-1, docs/hovernet-mani.md), so
neighbouring tiles get their nuclei resized differently. :func:`shared_scale` estimates the
nucleus size on every image of the batch, takes the median and decides one factor from it the
way the estimate decides for one image (the model's tolerance, upsampling rules); ``dgseg
predict --rescale shared`` applies it to every input that has no pixel size of its own.

This module imports neither torch nor napari.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MIN_ESTIMATED", "images_without_pixel_size", "shared_scale"]

#: Fewest images with a size estimate for a shared decision (else each image keeps its own).
MIN_ESTIMATED = 1


def shared_scale(manifest: Mapping[str, Any], images: Iterable[Any]) -> dict[str, Any]:
    """The batch's median nucleus size and the factor it implies for the model of ``manifest``.

    Parameters
    ----------
    manifest : mapping
        The bundle's manifest (its ``scale`` record and task).
    images : iterable
        Images (arrays or :class:`~napari_dgseg.core.imageprep.ImageAdapter`); each is read
        only as far as the estimator reads (at most four 512 px crops).

    Returns
    -------
    dict
        ``factor`` (None when no image gave an estimate or the task has no estimator),
        ``applied``, ``object_size_px`` (the median), ``sizes`` (per image, None where none),
        ``estimated`` / ``images`` (counts) and ``reason`` (one line).
    """
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.scale import bundle_scale, resolve_scale
    from napari_dgseg.core.scale_estimate import estimate_object_size
    from napari_dgseg.core.scale_inference import MIN_ESTIMATE_SIDE, NO_UPSAMPLE, task_kind

    kind = task_kind(dict(manifest))
    sizes: list[float | None] = []
    for image in images:
        adapter = image if isinstance(image, ImageAdapter) else ImageAdapter.from_array(image)
        if kind is None or min(adapter.height, adapter.width) < MIN_ESTIMATE_SIDE:
            sizes.append(None)
            continue
        size = estimate_object_size(adapter, kind).get("object_size_px")
        sizes.append(None if size is None else round(float(size), 3))
    valid = [s for s in sizes if s is not None]
    out: dict[str, Any] = {"images": len(sizes), "estimated": len(valid), "sizes": sizes}
    if kind is None or len(valid) < MIN_ESTIMATED:
        return out | {"factor": None, "applied": False, "object_size_px": None,
                      "reason": "no image of the batch gave a size estimate: each keeps its own"}
    median = float(np.median(valid))
    decision = resolve_scale(bundle_scale(dict(manifest)),
                             estimate=lambda: {"object_size_px": median},
                             upsample=kind not in NO_UPSAMPLE)
    factor = decision.factor if decision.applied else 1.0
    return out | {"factor": round(float(factor), 4), "applied": bool(decision.applied),
                  "object_size_px": round(median, 3),
                  "reason": (f"one factor for the batch: median nucleus size {median:.3g} px over "
                             f"{len(valid)} of {len(sizes)} images; {decision.reason}")}


def images_without_pixel_size(
    paths: Iterable[str | Path],
    keep: Callable[[Any], bool] | None = None,
    before_each: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """The (lazy) full-resolution images of the files in ``paths`` that carry no pixel size,
    opened one at a time and closed after use; ``keep(opened)`` filters further (e.g. slides
    streamed block by block). A file that cannot be opened is skipped: the batch reports it when
    its turn comes. ``before_each`` runs before each file (a cancel check)."""
    from napari_dgseg.core.errors import DgsegError
    from napari_dgseg.core.slide import open_image

    for path in paths:
        if before_each is not None:
            before_each()
        try:
            opened = open_image(path)
        except (DgsegError, OSError, ValueError):
            continue
        try:
            if not opened.pixel_size_um and (keep is None or keep(opened)):
                yield opened.full
        finally:
            opened.close()
