"""``Bundle.predict``: the bundle-level entry to the pipeline in :mod:`napari_dgseg.core.predict`."""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dgseg import __version__
from napari_dgseg.core.cancel import cancel_hooks, check_cancel
from napari_dgseg.core.color.dcin import normalized_image, plan_dcin
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import NonFiniteOutputError
from napari_dgseg.core.imageprep import ImageAdapter, image_channels
from napari_dgseg.core.limits import check_memory
from napari_dgseg.core.predict import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    Prediction,
    ProgressFn,
    elapsed_since,
    run_tiled,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_dgseg.core.bundle import Bundle


def predict_bundle(
    bundle: Bundle,
    image: Any,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str = "auto",
    batch: int = 2,
    dcin: str = "auto",
    reference: Any = None,
    dcin_method: str | None = None,
    dcin_source: Any = None,
    return_normalized: bool = False,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    memory_budget: int | None = None,
) -> Prediction:
    """Segment ``image`` with ``bundle``.

    Parameters
    ----------
    bundle : Bundle
        A loaded model bundle.
    image : array-like
        ``(H, W)`` grey or ``(H, W, 3|4)`` RGB(A), any dtype; numpy, dask or zarr (read lazily,
        one tile at a time).
    tile, overlap : int
        Largest tile side and minimum overlap in pixels (results do not depend on them beyond
        floating-point noise at tile borders).
    device : str
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
    batch : int
        Tiles per forward pass.
    dcin : str
        Colour normalisation (DCIN of Shah et al. 2025): ``auto`` (``full`` behind a guard that
        falls back to ``none`` when normalization would change the mask unseen, when the bundle
        has a reference bank, else ``none``), ``none``, ``gris``, ``lris``, ``full`` or ``reference``.
    reference : array, path or (mean, std), optional
        The user's reference for ``dcin="reference"``.
    dcin_method : str, optional
        Normalization method (``reinhard``, ``reinhard-bounded``, ``balanced``, ``macenko``);
        default the project's default (:data:`napari_dgseg.core.color.normalizers.DEFAULT_METHOD`).
    dcin_source : array-like, optional
        The image whose tissue gives the target colour statistics when ``image`` is only a
        region of it (the whole image, or a low pyramid level of a slide); default ``image``.
    return_normalized : bool
        Also return the colour-normalised image of each branch in ``extras["normalized"]``.
    progress : callable
        ``progress(done, total)`` in tiles.
    cancel : threading.Event or callable
        Set to stop; raises :class:`~napari_dgseg.core.errors.CancelledError`.
    memory_budget : int, optional
        Bytes inference may plan to use; default ``DGSEG_MEMORY_BUDGET`` or 80 % of the
        available memory (``0``: no check). A larger image is refused before anything is
        allocated (:func:`estimate_inference_bytes`), with one line saying what to do.

    Returns
    -------
    Prediction
    """
    t0 = time.perf_counter()

    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    h, w, _ = image_channels(image)
    family = bundle.family
    needed = estimate_inference_bytes(h, w, len(bundle.class_names), len(family.discrete_outputs))
    check_memory(needed, f"segmenting the {h} x {w} image", budget=memory_budget)
    adapter = ImageAdapter.from_array(image)
    dev = select_device(device)
    check_cancel(cancel)
    with cancel_hooks(bundle.model, cancel):  # LRIS picks its references with a forward pass
        plan = plan_dcin(bundle, adapter, dcin, reference, method=dcin_method,
                         stats_source=dcin_source, device=dev, cancel=cancel)
    try:
        maps = run_tiled(
            bundle.model,
            adapter,
            input_spec=bundle.input_spec,
            tile=tile,
            overlap=overlap,
            device=dev,
            batch=batch,
            branches=plan.branches,
            progress=progress,
            cancel=cancel,
            discrete=family.discrete_outputs,
        )
    except NonFiniteOutputError as exc:
        raise NonFiniteOutputError(
            f"model {bundle.name!r} ({bundle.path or 'not saved'}): {exc}, so its mask would be "
            "wrong and none is returned. Its weights are probably broken (train or download it "
            "again, or use another model); if other images work, check this image's values."
        ) from None
    check_cancel(cancel)
    fields = family.postprocess(maps, bundle.config)
    uncertainty = maps.get("uncertainty")
    provenance = {
        "model": bundle.name,
        "model_path": str(bundle.path) if bundle.path else None,
        "model_sha256": bundle.sha256,
        "family": bundle.family_name,
        "tile": tile,
        "overlap": overlap,
        "device": str(dev),
        "batch": batch,
        "dcin": plan.provenance(),
        "image_shape": [adapter.height, adapter.width],
        "intensity_range": [adapter.low, adapter.high],
        "seconds": elapsed_since(t0),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "napari_dgseg": _version(),
    }
    extras = {k: v for k, v in fields.items() if k not in _FIELDS}
    if return_normalized and plan.references:
        extras["normalized"] = {
            ref["branch"]: normalized_image(adapter, branch)
            for ref, branch in zip(plan.references, plan.branches, strict=True)
        }
    return Prediction(
        labels=fields["labels"],
        probabilities=fields.get("probabilities"),
        codebook_indices=fields.get("codebook_indices"),
        local_mask=fields.get("local_mask"),
        uncertainty=None if uncertainty is None else uncertainty[0],
        class_names=bundle.class_names,
        provenance=provenance,
        extras=extras,
    )


def estimate_inference_bytes(height: int, width: int, num_classes: int, discrete: int = 0) -> int:
    """Bytes tiled inference and post-processing hold at once for a ``height x width`` image.

    Per pixel: the blending weight (4 bytes), the dense output accumulators and their blended
    copy (float32, ``num_classes`` plus up to 4 auxiliary channels, twice), the probabilities
    (float32 per class), the discrete maps (value + best weight, 8 bytes each) and the labels
    (8 bytes). An upper estimate: the tiles in flight are not counted (they are small).
    """
    k = max(int(num_classes), 2)
    per_pixel = 4 + 2 * 4 * (k + 4) + 4 * k + 8 * int(discrete) + 8
    return int(height) * int(width) * per_pixel


_FIELDS = {"labels", "probabilities", "codebook_indices", "local_mask", "uncertainty"}


def _version() -> str:
    return __version__
