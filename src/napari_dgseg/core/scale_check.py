"""Model-in-the-loop size check: measure the objects the model found, re-run once if off.

When nothing says an image's scale (no user factor, no pixel size in the file), inference
estimates the nucleus size from the pixels (:mod:`napari_dgseg.core.scale_estimate`). That
estimate can be confidently wrong (blurred, JPEG-blocked, faded tiles: docs/scale.md). Cellpose
(Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation", 2021) refines its
size estimate from the median diameter of a first segmentation pass; this module does the same
with the model itself: one pass, the median equivalent diameter of its instances
(:func:`~napari_dgseg.core.scale.measure_object_size`) against the model's training object size,
and, when the implied factor is outside the model's tolerance
(:func:`~napari_dgseg.core.scale.estimate_tolerance`), **one** more pass at that factor (no loop).

Where the first pass runs is the variant (:data:`SIZE_CHECK_MODES`; measured against each other
on the training renderer's hard cases, ``benchmarks/scale_loop.py``, docs/scale.md):

* ``off``: the estimate's factor alone (the behaviour before this module);
* ``from-1``: the first pass at factor 1, whatever the estimate says;
* ``from-estimate``: the first pass at the estimate's factor (1 when it is not applied);
* ``tight``: as ``from-estimate``, but the pass is kept only when its nuclei imply a factor within
  :data:`~napari_dgseg.core.scale.DEFAULT_TOLERANCE` (0.9-1.1) of it, not the model's whole
  augmentation range (a network trained on 0.7-1.4x sizes pulls what it finds toward its own
  size, so a wrong scale shows as a small residual);
* ``if-unscaled``: as ``from-estimate``, but a pass at a resampled grid (the estimate applied) is
  kept as it is: only a pass at factor 1 can ask for a second one (on the tuning set every
  second pass after a shrinking estimate lost AJI: the network finds nuclei near its training
  size at any scale, and shrinking further costs detail);
* ``back-off``: as ``if-unscaled``, except that a pass at a *shrunk* grid whose nuclei imply
  a factor above the tolerance of it (the estimate shrank too far: the network, pulled toward its
  own size, still finds them too small) re-runs once at the implied factor, never above 1. A pass
  that asks to shrink further is still not acted on;
* ``far``: at the estimate's factor only when it is confident and far outside the tolerance
  (beyond its square: a factor < lo^2 or > hi^2), else at 1;
* ``agree``: the first pass at 1; a resampling only when the estimate and the pass agree (their
  factors within the tolerance of each other), at the estimate's factor; else factor 1.

Where it is meaningful: models whose output is instances of nuclei (HoVer-Net). A semantic
model's instances are connected components of its mask, so touching nuclei merge and the median
grows with density, not with scale; vessel calibre (:func:`measure_object_size` ``kind="vessels"``,
twice the centreline distance) is quantised to whole pixels at the models' 2 px calibre, so one
pixel more or less is a factor of 1.5-2. Both keep the estimate alone (:func:`size_check_applies`).

This module imports neither torch nor napari.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.scale import (
    DEFAULT_TOLERANCE,
    FACTOR_LIMITS,
    ScaleDecision,
    estimate_tolerance,
    measure_object_size,
)

__all__ = [
    "DEFAULT_SIZE_CHECK",
    "MIN_INSTANCES",
    "SIZE_CHECK_MODES",
    "check_region_scale",
    "check_scale",
    "first_factor",
    "size_check_applies",
]

#: The variants (module docstring).
SIZE_CHECK_MODES = ("off", "from-1", "from-estimate", "tight", "if-unscaled", "back-off", "far",
                    "agree")
#: The default. ``if-unscaled`` was chosen on the training renderer's 300 hard cases with
#: ``nuclei-hovernet`` (mean AJI 0.642 against 0.637 for ``off``, no scale bucket worse; the modes
#: starting at 1 lost 0.19 at 0.5x); ``back-off`` replaced it (2026-12-02) on the same tiles plus
#: 800 random degraded ones and 40 at their own scale (``benchmarks/scale_approach.py --study
#: recheck``): AJI +0.0013 / -0.0000, Dice +0.0003 / +0.0000, own scale unchanged (docs/scale.md).
DEFAULT_SIZE_CHECK = "back-off"
#: Fewer instances than this give no size (a median of a handful of objects says little).
MIN_INSTANCES = 8

#: ``segment(factor) -> (result, labels)``: one pass of the model on the image resized by
#: ``factor``, its result (anything) and its instance labels on the image grid.
Segment = Callable[[float], tuple[Any, np.ndarray]]


def size_check_applies(task: str | None, output: str) -> bool:
    """Whether the check is meaningful for a model: nuclei instances only (module docstring)."""
    return task == "nuclei" and output == "instances"


def _instances(labels: np.ndarray) -> int:
    lab = np.asarray(labels)
    return int(np.unique(lab[lab > 0]).size) if lab.size else 0


def _in(factor: float, tol: tuple[float, float]) -> bool:
    return tol[0] <= factor <= tol[1]


def first_factor(decision: ScaleDecision, mode: str, tol: tuple[float, float]) -> float:
    """The factor of the first pass for ``mode`` given the estimate's decision."""
    est = decision.factor if decision.applied else 1.0
    if mode in ("off", "from-estimate", "tight", "if-unscaled", "back-off"):
        return est
    if mode == "far":
        far = est < tol[0] ** 2 or est > tol[1] ** 2
        return est if decision.applied and far else 1.0
    return 1.0


def check_scale(
    decision: ScaleDecision,
    model_scale: Mapping[str, Any],
    segment: Segment,
    *,
    mode: str = DEFAULT_SIZE_CHECK,
    shape: tuple[int, int] | None = None,
    min_side: int = 16,
    upsample: bool = True,
) -> tuple[Any, ScaleDecision]:
    """Run the model once (or twice) and return the kept pass's result and the final decision.

    Parameters
    ----------
    decision : ScaleDecision
        The estimate's decision (:func:`~napari_dgseg.core.scale.resolve_scale`). The check runs
        only when it came from the estimator (``decision.estimate`` set and the source
        ``estimated`` or ``none``); any other decision is run as it is.
    model_scale : mapping
        The bundle's training scale (``object_size_px``, ``train_range``).
    segment : callable
        ``segment(factor) -> (result, labels)`` (:data:`Segment`).
    mode : str
        One of :data:`SIZE_CHECK_MODES`.
    shape : (H, W), optional
        The image's shape: a factor that would leave fewer than ``min_side`` pixels a side is not
        used.
    upsample : bool
        False: an implied factor above the tolerance is not applied (as for the estimate).

    Returns
    -------
    (result, ScaleDecision)
        The kept pass's result and the decision, with ``check`` recording every pass (factor,
        instances, median object size on the image grid, implied factor) and why it was kept.
    """
    if mode not in SIZE_CHECK_MODES:
        raise InputError(f"unknown size check {mode!r}; use one of {list(SIZE_CHECK_MODES)}")
    model_obj = model_scale.get("object_size_px")
    from_estimate = decision.estimate is not None and decision.source in ("estimated", "none")
    if mode == "off" or not from_estimate or not model_obj:
        return segment(decision.factor if decision.applied else 1.0)[0], decision
    tol = estimate_tolerance(model_scale)
    passes: list[dict[str, Any]] = []

    def run(factor: float) -> tuple[Any, float | None]:
        result, labels = segment(factor)
        n = _instances(labels)
        size = measure_object_size(labels, "nuclei") if n >= MIN_INSTANCES else float("nan")
        implied = model_obj / size if math.isfinite(size) and size > 0 else None
        passes.append({"factor": round(factor, 4), "instances": n,
                       "object_size_px": None if implied is None else round(size, 3),
                       "implied_factor": None if implied is None else round(implied, 4)})
        return result, implied

    def feasible(factor: float) -> bool:
        if not FACTOR_LIMITS[0] <= factor <= FACTOR_LIMITS[1]:
            return False
        if not upsample and factor > tol[1]:
            return False
        return shape is None or min(shape) * factor >= min_side

    est = decision.factor if decision.applied else 1.0
    f0 = first_factor(decision, mode, tol)
    result, implied = run(f0)
    final, why = f0, ""
    if implied is None:
        why = f"the pass at x{f0:.3g} found under {MIN_INSTANCES} nuclei: kept"
    elif _in(implied / f0, DEFAULT_TOLERANCE if mode == "tight" else tol):
        why = (f"the pass at x{f0:.3g} found nuclei of {passes[0]['object_size_px']:.3g} px "
               f"(implied factor {implied:.3g}, within the model's range of it): kept")
    elif mode == "back-off" and f0 < 1.0 and implied / f0 > tol[1] and feasible(min(implied, 1.0)):
        final = min(implied, 1.0)
        why = (f"the pass at the estimate's x{f0:.3g} found nuclei of "
               f"{passes[0]['object_size_px']:.3g} px (implied factor {implied:.3g}): shrunk too "
               f"far, re-run at x{final:.3g}")
    elif mode in ("if-unscaled", "back-off") and f0 != 1.0:
        why = (f"the pass at the estimate's x{f0:.3g} implies x{implied:.3g}; recorded, not "
               "acted on (a resampled pass is not re-checked)")
    elif mode == "agree":
        if decision.applied and _in(est / implied, tol):
            final = est
            why = (f"the estimate (x{est:.3g}) and the pass at x1 (implied x{implied:.3g}) agree: "
                   f"re-run at the estimate's factor")
        else:
            why = (f"the estimate (x{est:.3g}) and the pass at x1 (implied x{implied:.3g}) "
                   "disagree: not resampled")
    else:
        target = 1.0 if _in(implied, tol) else implied
        if feasible(target):
            final = target
            why = (f"the pass at x{f0:.3g} found nuclei of {passes[0]['object_size_px']:.3g} px "
                   f"(implied factor {implied:.3g}): re-run at x{target:.3g}")
        else:
            why = f"the implied factor {implied:.3g} cannot be applied: pass at x{f0:.3g} kept"
    if final != f0:
        result, _ = run(final)
    applied = final != 1.0
    check = {"mode": mode, "passes": passes, "kept": len(passes) - 1, "why": why,
             "estimate_factor": round(decision.proposed, 4), "tolerance": [round(t, 4) for t in tol]}
    if final == est and len(passes) == 1:
        return result, replace(decision, reason=f"{decision.reason}; size check: {why}",
                               check=check)
    reason = (f"resampled x{final:.3g} (size check: {why})" if applied
              else f"not resampled (size check: {why})")
    implied_size = (model_obj / final) if applied else decision.image_object_size_px
    return result, replace(decision, factor=final, applied=applied, source="estimated" if applied
                           else decision.source, reason=reason,
                           image_object_size_px=implied_size, check=check)


def check_region_scale(
    bundle: Any,
    adapter: Any,
    decision: ScaleDecision,
    *,
    mode: str | None = None,
    device: str = "auto",
    dcin: str = "auto",
    reference: Any = None,
    dcin_method: str | None = None,
) -> ScaleDecision:
    """The size check of a whole slide, on one crop: the slide's decision, checked.

    Whole-slide streaming decides one factor per slide before any block is segmented, so the
    check cannot use the slide's own pass. It segments the crop the estimator found most
    nucleus-rich (:func:`napari_dgseg.core.scale_estimate._crop_boxes`, at most 512 px a side,
    level 0) at the slide's factor and, where :func:`check_scale` asks for it, once more: one
    or two crop-sized passes per slide, never a pass over the slide.

    Parameters
    ----------
    bundle : Bundle
        The model (the check runs for nuclei instance models only, :func:`size_check_applies`).
    adapter : ImageAdapter
        The slide's full-resolution level (read lazily: only the crop is loaded).
    decision : ScaleDecision
        The slide's decision from :func:`~napari_dgseg.core.scale_inference.plan_scale`.
    mode : str, optional
        One of :data:`SIZE_CHECK_MODES`; default :data:`DEFAULT_SIZE_CHECK`.
    device, dcin, reference, dcin_method
        As for ``Bundle.predict`` (the slide's colour normalisation).

    Returns
    -------
    ScaleDecision
        ``decision`` itself when nothing is checked, else the checked one (``check`` records the
        crop as ``region``).
    """
    from napari_dgseg.core.scale_estimate import _crop_boxes
    from napari_dgseg.core.scale_inference import MIN_RESIZED_SIDE, task_kind

    mode = DEFAULT_SIZE_CHECK if mode is None else mode
    family = bundle.family
    if (mode == "off" or decision.estimate is None or getattr(family, "segment_image", None)
            or not size_check_applies(task_kind(bundle.manifest), family.output)):
        return decision
    y0, y1, x0, x1 = _crop_boxes(adapter, "nuclei")[0]
    crop = np.clip(np.rint(adapter.region(y0, y1, x0, x1) * 255.0), 0, 255).astype(np.uint8)

    def segment(factor: float) -> tuple[None, np.ndarray]:
        kw: dict[str, Any] = {"rescale": "off"} if factor == 1.0 else {"scale": factor}
        pred = bundle.predict(crop, device=device, dcin=dcin, reference=reference,
                              dcin_method=dcin_method, size_check="off", **kw)
        return None, np.asarray(pred.labels)

    _, checked = check_scale(decision, bundle.scale, segment, mode=mode,
                             shape=(adapter.height, adapter.width), min_side=MIN_RESIZED_SIDE)
    if checked.check is not None:
        checked = replace(checked, check={**checked.check, "region": [y0, y1, x0, x1]})
    return checked
