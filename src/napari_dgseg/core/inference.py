"""``Bundle.predict``: the bundle-level entry to the pipeline in :mod:`napari_dgseg.core.predict`."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dgseg import __version__
from napari_dgseg.core.cancel import cancel_hooks, check_cancel
from napari_dgseg.core.color.dcin import normalized_image, plan_dcin
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import InputError, NonFiniteOutputError
from napari_dgseg.core.fov import apply_field_of_view
from napari_dgseg.core.imageprep import ImageAdapter, image_channels
from napari_dgseg.core.limits import check_memory
from napari_dgseg.core.local_align.bundled import inference_model, mask_from_maps
from napari_dgseg.core.precision import check_precision
from napari_dgseg.core.predict import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    Prediction,
    ProgressFn,
    elapsed_since,
    run_tiled,
)
from napari_dgseg.core.resample import ResampledImage
from napari_dgseg.core.scale_check import DEFAULT_SIZE_CHECK, check_scale, size_check_applies
from napari_dgseg.core.scale_inference import (
    MIN_RESIZED_SIDE,
    back_to_image,
    fundus_mask,
    plan_scale,
    task_kind,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_dgseg.core.bundle import Bundle


#: ``--tta`` choices (CLI, benchmarks) -> the ``tta`` argument of :func:`predict_bundle`.
TTA_MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def tta_default(manifest: Mapping[str, Any]) -> bool:
    """Whether a bundle predicts with flip test-time augmentation unless told otherwise.

    The manifest's ``inference.tta`` (written by ``scripts/record_tta.py`` from a run on
    selection tiles, with its evidence in ``inference.tta_evidence``); False when absent.
    """
    rec = manifest.get("inference") or {}
    return bool(rec.get("tta", False))


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
    rescale: str = "auto",
    scale: float | None = None,
    mpp: float | None = None,
    object_size: float | None = None,
    pixel_size_um: Any = None,
    fov: str = "auto",
    precision: str = "fp32",
    size_check: str | None = None,
    tta: bool | None = None,
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
    rescale, scale, mpp, object_size, pixel_size_um : optional
        The model's scale (:mod:`napari_dgseg.core.scale`): ``rescale`` ``auto`` (the file's
        pixel size ``pixel_size_um``, else an estimate from the image), ``metadata`` or ``off``;
        the user's ``scale`` (resize factor), ``mpp`` (image pixel size, micrometres) or
        ``object_size`` (typical object diameter in the image, pixels) override them. Tiles are
        resampled to the model's scale and the outputs back (``provenance["scale"]``).
    fov : str
        ``auto``: vessel models mark nothing in a fundus photograph's dark surround and rim;
        ``off``.
    precision : str
        ``fp32`` (default), ``bf16`` or ``fp16`` (CUDA only) for the network's forward passes
        (:mod:`napari_dgseg.core.precision`; accuracy against fp32 in docs/distributed.md).
    size_check : str, optional
        When the scale is estimated from the image, check it with the model
        (:mod:`napari_dgseg.core.scale_check`: measure the nuclei of a pass, re-run once at the
        factor they imply): one of ``SIZE_CHECK_MODES``; default ``DEFAULT_SIZE_CHECK``. Nuclei
        instance models only; the passes are in ``provenance["scale"]["check"]``.
    tta : bool, optional
        Flip test-time augmentation (4 passes per tile, outputs averaged; see
        :func:`~napari_dgseg.core.predict.run_tiled`); None: the bundle's own default
        (:func:`tta_default`, recorded from a selection run), False for bundles without one.

    Returns
    -------
    Prediction
    """
    t0 = time.perf_counter()

    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    h, w, _ = image_channels(image)
    family = bundle.family
    adapter = ImageAdapter.from_array(image)
    if getattr(family, "segment_image", None) is not None:  # a family without a network
        return _predict_whole_image(bundle, adapter, t0, progress, cancel, memory_budget)
    decision, model_input = plan_scale(bundle.manifest, adapter, rescale=rescale, scale=scale,
                                       mpp=mpp, object_size=object_size,
                                       pixel_size_um=pixel_size_um)

    # tiles of the passes before this one: a second pass (size check) continues the count
    tiles = {"before": 0, "this": 0}

    def pass_progress(done: int, total: int) -> None:
        tiles["this"] = total
        if progress is not None:
            progress(tiles["before"] + done, tiles["before"] + total)

    def segment(factor: float) -> tuple[tuple[dict, Any, tuple[int, int]], np.ndarray]:
        """One pass of the network on the image resized by ``factor``; outputs on the image."""
        tiles["before"], tiles["this"] = tiles["before"] + tiles["this"], 0
        grid_input = (model_input if factor == (decision.factor if decision.applied else 1.0)
                      else adapter if factor == 1.0 else ResampledImage.of(adapter, factor))
        gh, gw = grid_input.height, grid_input.width
        needed = estimate_inference_bytes(gh, gw, len(bundle.class_names),
                                          len(family.discrete_outputs))
        if (gh, gw) != (h, w):
            needed += estimate_inference_bytes(h, w, len(bundle.class_names), 0)
        check_memory(needed, f"segmenting the {h} x {w} image", budget=memory_budget)
        check_cancel(cancel)
        maps = _forward(bundle, grid_input, plan, tile=tile, overlap=overlap, device=dev,
                        batch=batch, progress=pass_progress, cancel=cancel, precision=precision,
                        tta=use_tta)
        check_cancel(cancel)
        fields = family.postprocess(maps, bundle.postprocess_config)
        if mask_from_maps(maps) is not None:  # local feature mask (Mind the Gap's D1), (H, W)
            fields["local_mask"] = mask_from_maps(maps)
        fields = back_to_image(fields, (gh, gw), (h, w), family.output == "semantic")
        uncertainty = maps.get("uncertainty")  # from the branches only, never the postprocess
        if uncertainty is not None:
            uncertainty = back_to_image({"u": uncertainty}, (gh, gw), (h, w), False)["u"]
        return (fields, uncertainty, (gh, gw)), np.asarray(fields["labels"])

    gh, gw = model_input.height, model_input.width
    needed = estimate_inference_bytes(gh, gw, len(bundle.class_names), len(family.discrete_outputs))
    if (gh, gw) != (h, w):
        needed += estimate_inference_bytes(h, w, len(bundle.class_names), 0)
    check_memory(needed, f"segmenting the {h} x {w} image", budget=memory_budget)
    dev = select_device(device)
    precision = check_precision(precision, dev)
    use_tta = tta_default(bundle.manifest) if tta is None else bool(tta)
    check_cancel(cancel)
    with cancel_hooks(bundle.model, cancel):  # LRIS picks its references with a forward pass
        plan = plan_dcin(bundle, adapter, dcin, reference, method=dcin_method,
                         stats_source=dcin_source, device=dev, cancel=cancel)
    mode = size_check if size_check is not None else DEFAULT_SIZE_CHECK
    if not size_check_applies(task_kind(bundle.manifest), family.output):
        mode = "off"
    (fields, uncertainty, (gh, gw)), decision = check_scale(
        decision, bundle.scale if mode != "off" else {}, segment, mode=mode, shape=(h, w),
        min_side=MIN_RESIZED_SIDE)
    fov_mask, fov_info = fundus_mask(bundle.manifest, adapter, fov)
    if fov_mask is not None:
        fields = apply_field_of_view(fields, fov_mask)
    provenance = {
        "model": bundle.name,
        "model_path": str(bundle.path) if bundle.path else None,
        "model_sha256": bundle.sha256,
        "family": bundle.family_name,
        "tile": tile,
        "overlap": overlap,
        "device": str(dev),
        "batch": batch,
        "precision": precision,
        "tta": {"flips": 4 if use_tta else 1,
                "source": "bundle default" if tta is None else "requested"},
        "dcin": plan.provenance(),
        "image_shape": [adapter.height, adapter.width],
        "scale": decision.as_dict() | {"model_grid_shape": [gh, gw]},
        "fov": fov_info,
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


def _forward(bundle: Bundle, grid_input: Any, plan: Any, *, tile: int, overlap: int, device: Any,
             batch: int, progress: ProgressFn | None, cancel: Any, precision: str,
             tta: bool = False) -> dict:
    """The network's blended maps over ``grid_input`` (one tiled pass), with clear errors."""
    try:
        return run_tiled(
            inference_model(bundle),  # the network, with D1 when the bundle carries one
            grid_input,
            input_spec=bundle.input_spec,
            tile=tile,
            overlap=overlap,
            device=device,
            batch=batch,
            branches=plan.branches,
            progress=progress,
            cancel=cancel,
            discrete=bundle.family.discrete_outputs,
            precision=precision,
            tta=tta,
            flip_signs=getattr(bundle.family, "flip_signs", {}),
        )
    except NonFiniteOutputError as exc:
        if precision != "fp32":
            raise NonFiniteOutputError(
                f"model {bundle.name!r}: {exc} under {precision} (the range of {precision} "
                "overflowed); use --precision fp32"
            ) from None
        raise NonFiniteOutputError(
            f"model {bundle.name!r} ({bundle.path or 'not saved'}): {exc}, so its mask would be "
            "wrong and none is returned. Its weights are probably broken (train or download it "
            "again, or use another model); if other images work, check this image's values."
        ) from None


#: Largest image (pixels) a whole-image family (a classical baseline) segments at once.
MAX_WHOLE_IMAGE_PIXELS = 64 * 1024 * 1024


def _predict_whole_image(
    bundle: Bundle, adapter: ImageAdapter, t0: float, progress: ProgressFn | None, cancel: Any,
    memory_budget: int | None,
) -> Prediction:
    """Segment with a family that has no network: the whole image at once, no colour branches."""
    h, w = adapter.height, adapter.width
    if h * w > MAX_WHOLE_IMAGE_PIXELS:
        raise InputError(
            f"{bundle.name!r} segments whole images at once and this one has {h * w:,} pixels "
            f"(at most {MAX_WHOLE_IMAGE_PIXELS:,}); select a region, or use a learned model, "
            "which streams tiles"
        )
    # the uint8 copy, float working copies of the method and the outputs
    check_memory(h * w * 64, f"segmenting the {h} x {w} image", budget=memory_budget)
    check_cancel(cancel)
    if progress is not None:
        progress(0, 1)
    rgb8 = adapter.to_rgb_uint8(np.asarray(adapter.image))
    fields = bundle.family.segment_image(rgb8, bundle.config)
    check_cancel(cancel)
    if progress is not None:
        progress(1, 1)
    provenance = {
        "model": bundle.name,
        "model_path": str(bundle.path) if bundle.path else None,
        "model_sha256": bundle.sha256,
        "family": bundle.family_name,
        "method": "whole image (classical, no network)",
        "dcin": {"mode": "none", "notice": "a classical baseline takes the image as it is"},
        "scale": {"factor": 1.0, "proposed": 1.0, "source": "none", "applied": False,
                  "reason": "a classical baseline works at the image's own scale"},
        "image_shape": [h, w],
        "intensity_range": [adapter.low, adapter.high],
        "seconds": elapsed_since(t0),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "napari_dgseg": _version(),
    }
    return Prediction(
        labels=fields["labels"],
        probabilities=fields.get("probabilities"),
        class_names=bundle.class_names,
        provenance=provenance,
        extras={k: v for k, v in fields.items() if k not in _FIELDS},
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
