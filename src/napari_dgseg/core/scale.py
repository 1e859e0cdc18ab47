"""The pixel scale a model was trained at, and the factor that brings an image to it.

Every bundle records its training scale in the manifest key ``"scale"``::

    {"pixel_size_um": float | None, "object_size_px": float | None, "train_range": [lo, hi] | None}

* ``pixel_size_um``: micrometres per pixel of the training images where the task has a physical
  scale (H&E nuclei); None for fundus photographs (no physical pixel size).
* ``object_size_px``: the median object diameter in the training images at training resolution,
  measured from the labels by :func:`measure_object_size` (nuclei: equivalent diameter
  ``sqrt(4 area / pi)`` of each instance; vessels: twice the median distance-transform value on
  the vessel centreline, i.e. the calibre along the skeleton).
* ``train_range``: the range of scale factors seen by scale augmentation, None without it.

Bundles made before the key existed get :data:`TASK_DEFAULTS` for their task: the sizes the
synthetic training renderers draw (measured by :func:`measure_object_size` on their labels; a test
re-measures them), and 0.25 um/px for H&E nuclei (the renderer draws ~40x tissue, nucleus radius
5-18 px).

A *factor* is how much an image is resized before the network sees it (``new side = factor x
side``): ``image pixel size / model pixel size`` when both are known, or
``model object size / image object size``. :func:`resolve_scale` decides it from, in this order,
the user's factor, the user's pixel size or object size, the file's pixel size, and the image
itself (:mod:`napari_dgseg.core.scale_estimate`). Within :data:`DEFAULT_TOLERANCE` the image is
not resampled (the models tolerate that much; a user's explicit factor is always applied).

This module imports neither torch nor napari.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.errors import InputError

__all__ = [
    "DEFAULT_TOLERANCE",
    "FACTOR_LIMITS",
    "RESCALE_MODES",
    "SCALE_KEY",
    "TASK_DEFAULTS",
    "ScaleDecision",
    "bundle_scale",
    "approach_factor",
    "estimate_tolerance",
    "measure_object_size",
    "normalize_scale",
    "resolve_scale",
]

#: Manifest key holding the training scale.
SCALE_KEY = "scale"

#: Factors inside this range are not applied unless the user asked for them (resampling costs
#: time and a little sharpness). Chosen by measurement (docs/scale.md): the estimator's spread on
#: synthetic images at their own scale is about +-10 %, and a wider range (0.8-1.25) left a real
#: H&E tile unresampled at 1x (estimate 1.21) but resampled at 2x, so its nucleus count moved by
#: 20 % between the two scales instead of under 1 %.
DEFAULT_TOLERANCE = (0.9, 1.1)

#: Factors outside this range are refused (a wrong pixel size, not a real scale difference).
FACTOR_LIMITS = (0.05, 8.0)

#: Share (in log scale) of a model's object-size augmentation range inside which an *estimated*
#: factor is not applied (:func:`estimate_tolerance`): 1 is the whole range, 0 leaves only
#: :data:`DEFAULT_TOLERANCE`. Measured on the training renderer's randomly resized and degraded
#: tiles with the model in the loop (``benchmarks/scale_tolerance.py``, docs/scale.md).
ESTIMATE_TOLERANCE_SHARE = 1.0

#: How far an applied *estimated* factor moves the image's objects toward the model's size, in
#: log scale, from the near edge of the model's size range (:func:`estimate_tolerance`, 0) to the
#: model's own size (1). An image-only estimate can be confidently wrong (faded, JPEG-blocked
#: nuclei read 2x their size); stopping short of it limits what a wrong estimate costs while a
#: right one still brings the objects inside the sizes the model was trained on. Measured on the
#: training renderer's randomly resized and degraded tiles (``benchmarks/scale_approach.py``,
#: docs/scale.md); file and user scales are always applied whole.
ESTIMATE_APPROACH = 1.0

#: ``auto``: the file's pixel size, else an estimate from the image; ``metadata``: the file's
#: pixel size only; ``off``: never resample (the behaviour before scales existed).
RESCALE_MODES = ("auto", "metadata", "off")

#: Training scale of bundles without a ``"scale"`` key, by task. Object sizes are the synthetic
#: renderers' (``measure_object_size`` over ``make_nuclei(256, "clean", seed)`` and
#: ``make_vessels(256, "camera-a", seed)``, seeds 0-7, the size the shipped models were trained
#: at; tests/test_scale.py re-measures them).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "nuclei": {"pixel_size_um": 0.25, "object_size_px": 17.1, "train_range": None},
    "vessels": {"pixel_size_um": None, "object_size_px": 2.0, "train_range": None},
}

_EMPTY = {"pixel_size_um": None, "object_size_px": None, "train_range": None}


def measure_object_size(labels: np.ndarray | Sequence[np.ndarray], kind: str) -> float:
    """Median object diameter in pixels, by the definition bundles record.

    Parameters
    ----------
    labels : np.ndarray or sequence of np.ndarray
        ``(H, W)`` label images: instance ids (nuclei; a 0/1 mask is split into connected
        components first) or a vessel mask (anything > 0). Several images pool their objects.
    kind : {"nuclei", "vessels"}
        ``nuclei``: median of ``sqrt(4 area / pi)`` over instances. ``vessels``: twice the median
        Euclidean distance-transform value over the skeleton pixels of the vessel mask.

    Returns
    -------
    float
        The median diameter; NaN when there is no object.
    """
    arrays = [labels] if isinstance(labels, np.ndarray) else list(labels)
    values: list[np.ndarray] = []
    for lab in arrays:
        lab = np.asarray(lab)
        if lab.ndim != 2:
            raise InputError(f"labels must be 2-D (H, W), got shape {lab.shape}")
        if kind == "nuclei":
            values.append(_equivalent_diameters(lab))
        elif kind == "vessels":
            values.append(_centreline_calibres(lab > 0))
        else:
            raise InputError(f"unknown object kind {kind!r}; use 'nuclei' or 'vessels'")
    pooled = np.concatenate(values) if values else np.zeros(0)
    return float(np.median(pooled)) if pooled.size else float("nan")


def _equivalent_diameters(lab: np.ndarray) -> np.ndarray:
    if lab.dtype == bool or (lab.size and int(lab.max()) <= 1):
        lab, _ = ndi.label(lab > 0)
    areas = np.bincount(lab.astype(np.int64, copy=False).ravel())[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / np.pi)


def _centreline_calibres(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    if not mask.any():
        return np.zeros(0)
    skeleton = skeletonize(mask)
    dist = ndi.distance_transform_edt(mask)
    return 2.0 * dist[skeleton]


def normalize_scale(value: Any, source: str = "scale") -> dict[str, Any]:
    """Check a ``"scale"`` record and return it with all three keys.

    Raises :class:`InputError` naming the bad field (sizes must be positive finite numbers,
    ``train_range`` two increasing positive numbers).
    """
    if not isinstance(value, Mapping):
        raise InputError(f"{source}: 'scale' must be an object with pixel_size_um, object_size_px "
                         f"and train_range, got {type(value).__name__}")
    out = dict(_EMPTY)
    unknown = sorted(set(value) - set(_EMPTY))
    if unknown:
        raise InputError(f"{source}: unknown 'scale' fields {unknown}; the known ones are "
                         f"{sorted(_EMPTY)}")
    for key in ("pixel_size_um", "object_size_px"):
        v = value.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"{source}: scale {key} must be a positive number or null, got {v!r}")
        out[key] = float(v)
    rng = value.get("train_range")
    if rng is not None:
        ok = (isinstance(rng, (list, tuple)) and len(rng) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) and v > 0 for v in rng) and rng[0] <= rng[1])
        if not ok:
            raise InputError(f"{source}: scale train_range must be [lo, hi] with 0 < lo <= hi, "
                             f"got {rng!r}")
        out["train_range"] = [float(rng[0]), float(rng[1])]
    return out


def bundle_scale(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The training scale of a bundle: its ``"scale"`` record, else its task's default.

    Returns a dict with ``pixel_size_um``, ``object_size_px``, ``train_range``, ``source``
    (``"manifest"``, ``"default:<task>"`` or ``"unknown"`` when the task has no default) and,
    where the model has one, ``estimate_tolerance_share``: the share of ``train_range`` inside
    which an estimate is not applied, as measured for this model
    (``inference.estimate_tolerance_share``, written by ``scripts/record_scale_tolerance.py``;
    without it :data:`ESTIMATE_TOLERANCE_SHARE`).
    """
    share = _tolerance_share(manifest)
    measured = {} if share is None else {"estimate_tolerance_share": share}
    if manifest.get(SCALE_KEY) is not None:
        rec = normalize_scale(manifest[SCALE_KEY], f"bundle {manifest.get('name', '')!r}")
        return {**rec, "source": "manifest", **measured}
    task = str(manifest.get("task", ""))
    if task in TASK_DEFAULTS:
        return {**TASK_DEFAULTS[task], "source": f"default:{task}", **measured}
    return {**_EMPTY, "source": "unknown", **measured}


def _tolerance_share(manifest: Mapping[str, Any]) -> float | list[float] | None:
    """The bundle's measured ``inference.estimate_tolerance_share`` (None: not measured): one
    share, or ``[shrinking side, enlarging side]``."""
    value = (manifest.get("inference") or {}).get("estimate_tolerance_share")
    if value is None:
        return None

    def ok(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= 1

    if ok(value):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(ok(v) for v in value):
        return [float(v) for v in value]
    raise InputError(f"bundle {manifest.get('name', '')!r}: inference.estimate_tolerance_share "
                     f"must be a number in [0, 1] or two of them, got {value!r}")


@dataclass(frozen=True)
class ScaleDecision:
    """The factor inference uses and why.

    Attributes
    ----------
    factor : float
        Resize factor applied to the image (1.0 when not applied).
    proposed : float
        The factor found before the tolerance was checked.
    source : str
        ``user``, ``metadata``, ``estimated`` or ``none`` (nothing known, or rescaling off).
    applied : bool
        Whether the image is resampled.
    reason : str
        One line for people: where the factor came from and why it is (not) applied.
    image_pixel_size_um, model_pixel_size_um : float or None
    image_object_size_px, model_object_size_px : float or None
        The sizes the factor came from (the image's object size is the estimate or the user's).
    estimate : dict or None
        What the estimator reported (:func:`napari_dgseg.core.scale_estimate.estimate_object_size`).
    check : dict or None
        The model-in-the-loop size check's passes and why one was kept
        (:func:`napari_dgseg.core.scale_check.check_scale`).
    """

    factor: float
    proposed: float
    source: str
    applied: bool
    reason: str
    image_pixel_size_um: float | None = None
    model_pixel_size_um: float | None = None
    image_object_size_px: float | None = None
    model_object_size_px: float | None = None
    estimate: dict | None = None
    check: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record for provenance."""
        out = {
            "factor": round(self.factor, 4),
            "proposed": round(self.proposed, 4),
            "source": self.source,
            "applied": self.applied,
            "reason": self.reason,
            "image_pixel_size_um": _round(self.image_pixel_size_um, 6),
            "model_pixel_size_um": _round(self.model_pixel_size_um, 6),
            "image_object_size_px": _round(self.image_object_size_px),
            "model_object_size_px": _round(self.model_object_size_px),
        }
        if self.estimate is not None:
            out["estimate"] = self.estimate
        if self.check is not None:
            out["check"] = self.check
        return out


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(float(v), digits)


def _mean_pixel(value: Any) -> float | None:
    """One pixel size from a number or a ``(y, x)`` pair (their geometric mean)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        sizes = [float(value)]
    else:
        sizes = [float(v) for v in value][-2:]
    if not sizes or not all(math.isfinite(s) and s > 0 for s in sizes):
        return None
    return float(math.exp(sum(math.log(s) for s in sizes) / len(sizes)))


def _positive(value: float | None, flag: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{flag} must be a positive number, got {value!r}")
    return v


def resolve_scale(
    model_scale: Mapping[str, Any],
    *,
    rescale: str = "auto",
    scale: float | None = None,
    mpp: float | None = None,
    object_size: float | None = None,
    pixel_size_um: Any = None,
    estimate: Any = None,
    tolerance: tuple[float, float] = DEFAULT_TOLERANCE,
    upsample: bool = True,
    approach: float | None = None,
) -> ScaleDecision:
    """Decide the resize factor for one image.

    Parameters
    ----------
    model_scale : mapping
        The bundle's training scale (:func:`bundle_scale`).
    rescale : {"auto", "metadata", "off"}
        See :data:`RESCALE_MODES`. The user's ``scale``/``mpp``/``object_size`` apply in every
        mode but ``off`` refuses them (say one thing).
    scale : float, optional
        The user's factor (applied as given).
    mpp : float, optional
        The user's pixel size of the image (micrometres), overriding the file's.
    object_size : float, optional
        The user's typical object diameter in the image (pixels).
    pixel_size_um : float or (y, x), optional
        The file's pixel size (metadata).
    estimate : callable, optional
        ``estimate() -> dict`` with ``"object_size_px"`` (float or None; with None an optional
        ``"why"`` becomes the reason): called only when the image's scale must be estimated.
    tolerance : (lo, hi)
        Factors inside are not applied unless the user gave them.
    upsample : bool
        False: a factor above 1 from the file or the estimate is not applied (only the user's
        is). Vessel models use this: upsampling a fundus photographed small did not help them
        (docs/scale.md).
    approach : float, optional
        How far an applied *estimated* factor goes (:func:`approach_factor`); default
        :data:`ESTIMATE_APPROACH`.

    Returns
    -------
    ScaleDecision
    """
    if rescale not in RESCALE_MODES:
        raise InputError(f"unknown rescale mode {rescale!r}; use one of {list(RESCALE_MODES)}")
    scale, mpp, object_size = (_positive(scale, "--scale"), _positive(mpp, "--mpp"),
                               _positive(object_size, "--object-size"))
    given = [n for n, v in (("--scale", scale), ("--mpp", mpp), ("--object-size", object_size))
             if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of --scale, --mpp and --object-size, not {' and '.join(given)}")
    if rescale == "off" and given:
        raise InputError(f"{given[0]} asks for rescaling but rescaling is off; drop one of them")
    model_px = model_scale.get("pixel_size_um")
    model_obj = model_scale.get("object_size_px")
    common = {"model_pixel_size_um": model_px, "model_object_size_px": model_obj}
    if rescale == "off":
        return ScaleDecision(1.0, 1.0, "none", False, "rescaling off", **common)
    if scale is not None:
        return _decide(scale, "user", f"factor {scale:g} given by the user", (1.0, 1.0), common)
    if mpp is not None:
        if model_px is None:
            raise InputError("this model records no pixel size (its images have none, e.g. "
                             "fundus photographs); give --object-size or --scale instead of --mpp")
        return _decide(mpp / model_px, "user",
                       f"image {mpp:g} um/px (user) / model {model_px:g} um/px", (1.0, 1.0),
                       common | {"image_pixel_size_um": mpp})
    if object_size is not None:
        if model_obj is None:
            raise InputError("this model records no object size; give --scale instead of "
                             "--object-size")
        return _decide(model_obj / object_size, "user",
                       f"model objects {model_obj:g} px / image objects {object_size:g} px (user)",
                       (1.0, 1.0), common | {"image_object_size_px": object_size})
    file_px = _mean_pixel(pixel_size_um)
    if file_px is not None and model_px is not None:
        return _decide(file_px / model_px, "metadata",
                       f"image {file_px:.4g} um/px (file) / model {model_px:g} um/px", tolerance,
                       common | {"image_pixel_size_um": file_px}, upsample)
    if rescale == "metadata" or model_obj is None or estimate is None:
        why = ("no pixel size in the file" if rescale == "metadata" else
               "the model records no object size" if model_obj is None else "no estimator")
        return ScaleDecision(1.0, 1.0, "none", False, f"not resampled: {why}", **common)
    found = dict(estimate())
    size = found.get("object_size_px")
    if size is None or not math.isfinite(size) or size <= 0:
        why = found.get("why") or "the image's object size could not be estimated"
        return ScaleDecision(1.0, 1.0, "none", False, f"not resampled: {why}",
                             estimate=found, **common)
    tol = estimate_tolerance(model_scale, tolerance)
    why = f"model objects {model_obj:g} px / estimated image objects {size:.3g} px"
    decision = _decide(model_obj / size, "estimated", why, tol,
                       common | {"image_object_size_px": float(size), "estimate": found}, upsample)
    step = ESTIMATE_APPROACH if approach is None else float(approach)
    factor = approach_factor(decision.proposed, tol, step)
    if not decision.applied or factor == decision.factor:
        return decision
    return replace(decision, factor=factor,
                   reason=f"resampled x{factor:.3g}, part of the way to the estimate's "
                          f"x{decision.proposed:.3g} (estimated objects then "
                          f"{factor / decision.proposed:.2f}x the model's, inside the "
                          f"{1 / tol[1]:.2g}-{1 / tol[0]:.2g}x it was trained on; {why})")


def approach_factor(factor: float, tolerance: tuple[float, float], approach: float) -> float:
    """The factor applied for an estimated ``factor`` outside ``tolerance``.

    ``approach`` 1 applies ``factor`` whole; 0 only as much as brings the objects to the near
    edge of ``tolerance`` (``factor / edge``, the model has seen objects of that size); in
    between, the log-linear mix ``factor / edge ** (1 - approach)``. A factor inside
    ``tolerance`` is returned as it is.
    """
    if not 0.0 <= approach <= 1.0:
        raise InputError(f"approach must be in [0, 1], got {approach}")
    lo, hi = tolerance
    if lo <= factor <= hi or approach == 1.0:
        return factor
    edge = lo if factor < lo else hi
    return factor / edge ** (1.0 - approach)


def estimate_tolerance(
    model_scale: Mapping[str, Any], tolerance: tuple[float, float] = DEFAULT_TOLERANCE
) -> tuple[float, float]:
    """Factors an *estimated* scale is not applied within: ``tolerance`` widened to the model's
    object-size augmentation.

    A model trained with objects magnified by ``train_range = (lo, hi)`` has seen image objects
    ``lo``-``hi`` times its own size, i.e. factors ``1/hi``-``1/lo``; inside that range an
    estimate (noisy on a single tile) can only add resampling blur. Measured on fresh tiles of
    the training renderer's five H&E domains (``nuclei-hovernet``): applying estimated factors of
    0.86-0.89 and 1.10-1.13 lowered Dice by 0.003-0.008 and AJI by 0.007-0.015 on every domain
    against not resampling (docs/scale.md). File and user scales keep ``tolerance``.

    The model is weaker at the edges of its augmentation than at its centre, though, so a model
    may record (``estimate_tolerance_share`` in ``model_scale``, :func:`bundle_scale`) that only
    a share ``s`` of that range, in log scale, is left alone: ``(1/hi)**s``-``(1/lo)**s``
    (``benchmarks/scale_approach.py --study tolerance``); ``[s_shrink, s_enlarge]`` gives each
    side its own share.
    """
    rng = model_scale.get("train_range")
    if not rng or len(rng) != 2 or not (0 < float(rng[0]) <= float(rng[1])):
        return tolerance
    share = model_scale.get("estimate_tolerance_share")
    share = ESTIMATE_TOLERANCE_SHARE if share is None else share
    shrink, enlarge = (share, share) if isinstance(share, (int, float)) else share
    return (min(tolerance[0], (1.0 / float(rng[1])) ** float(shrink)),
            max(tolerance[1], (1.0 / float(rng[0])) ** float(enlarge)))


def _decide(factor: float, source: str, why: str, tolerance: tuple[float, float],
            fields: dict[str, Any], upsample: bool = True) -> ScaleDecision:
    lo, hi = FACTOR_LIMITS
    if not lo <= factor <= hi:
        if source == "estimated":
            return ScaleDecision(1.0, factor, "none", False,
                                 f"not resampled: estimated factor {factor:.3g} is outside "
                                 f"[{lo:g}, {hi:g}] ({why})", **fields)
        raise InputError(f"scale factor {factor:.3g} ({why}) is outside [{lo:g}, {hi:g}]; check "
                         "the pixel size or object size, or give --scale")
    inside = tolerance[0] <= factor <= tolerance[1] and source != "user"
    if source == "user" and abs(factor - 1.0) < 1e-3:
        inside = True
    if not upsample and factor > tolerance[1] and source != "user":
        return ScaleDecision(1.0, factor, source, False,
                             f"not resampled: factor {factor:.3g} would upsample, which does not "
                             f"help this model ({why})", **fields)
    if inside:
        return ScaleDecision(1.0, factor, source, False,
                             f"not resampled: factor {factor:.3g} is within "
                             f"[{tolerance[0]:g}, {tolerance[1]:g}] ({why})", **fields)
    return ScaleDecision(factor, factor, source, True, f"resampled x{factor:.3g} ({why})", **fields)
