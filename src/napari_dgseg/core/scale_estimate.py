"""Estimate the typical object size of an image from its pixels (no metadata, no network).

Three estimators, chosen per kind (``method="auto"``) by the measurement in docs/scale.md:

* ``log-blobs`` (nuclei). Scale-space selection (Lindeberg, "Feature detection with automatic
  scale selection", 1998): a blob of diameter ``d`` gives its largest scale-normalised Laplacian
  response ``-sigma^2 LoG`` at ``sigma`` proportional to ``d``. The signal is the optical density
  of the grey level (mean of R, G, B): JPEG keeps grey (luma) at full resolution but stores colour
  at half resolution in 8x8 blocks, so colour deconvolution's haematoxylin channel, used before,
  turned blurry, blocky nuclei of faded JPEG tiles into weak blobs and the scale of nucleus
  *clusters* won (docs/scale.md, "Robust to blur, JPEG and faded stain"). For each scale the
  99.5th percentile of the response is taken, and the scale where that curve peaks (interpolated
  between quarter octaves) is the raw size. The strongest responses come from whole nuclei, not
  chromatin texture. A second peak of the curve, 0.75 octave or more away and separated by a dip,
  that comes within :data:`BLOB_DOMINANCE` of the highest one makes the crop *ambiguous* (nuclei
  or clusters of nuclei?): it gives no size, and an image with only ambiguous crops is not
  resampled (its provenance says why). A second, learned ruler must agree: a ridge regression
  from the whole scale-space signature (:func:`blob_signature`) to the nucleus size, fitted on
  randomly resized and degraded tiles of the training renderer (Cellpose's size model, Stringer
  et al., "Cellpose: a generalist algorithm for cellular segmentation", 2021, also regresses the
  size from image features). A crop whose peak and ruler differ by more than
  :data:`RULER_AGREEMENT` gives no size either (small nuclei under strong blur were read as
  25-80 px by the peak alone; docs/scale.md, "A second, learned ruler"). The peak scale is
  corrected for the crop's edge blur (:func:`edge_blur`, :data:`BLUR_CORRECTION`) before it is
  calibrated: blur adds to a blob's scale in quadrature.
* ``fov`` (vessels, fundus photographs). Vessel calibre scales with the eye's image, so the radius
  of the field of view (the bright disc inside the dark surround) is the ruler. Used when the
  image has a dark surround around a field of view.
* ``hessian-ridges`` (vessels without a visible field of view). The inverted green channel is
  filtered with Lindeberg's scale-normalised ridge strength ``sigma^2 (lambda_max - lambda_min)``
  (where ``lambda_min < 0``); along the skeleton of the strongest ridges the median best scale is
  the raw size. Blur and JPEG make vessels look wider to it (see docs/scale.md).

A raw size times :data:`CALIBRATION` gives the object size in the definition of
:func:`napari_dgseg.core.scale.measure_object_size`; the constants were fitted on synthetic images
at the shipped models' training scale (``python benchmarks/scale.py --calibrate``, seeds
1000-1007: nuclei ``clean`` 256 px, vessels ``camera-a`` 256 px), so the estimated factor is 1 on
the training distribution.

Large images are sampled: at most :data:`MAX_CROPS` crops of :data:`CROP` pixels, read one at a
time from the (possibly lazy) image and chosen on a thumbnail for their content; the field of
view is found on a thumbnail.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.fov import FOV_LEVEL
from napari_dgseg.core.ridge import Ridge

__all__ = [
    "BLOB_DOMINANCE",
    "BLUR_CORRECTION",
    "PEAK_CALIBRATION",
    "RULER_AGREEMENT",
    "CALIBRATION",
    "CROP",
    "MAX_CROPS",
    "METHODS",
    "blob_signature",
    "deblurred",
    "edge_blur",
    "estimate_object_size",
    "fov_radius",
    "raw_object_size",
]

#: Side of the crops the estimate is computed on (pixels).
CROP = 512
#: Largest number of crops per image.
MAX_CROPS = 4
#: Raw size -> object size (measure_object_size's definition), per method. For ``log-blobs`` the
#: raw size is the blur-corrected peak scale (:data:`BLUR_CORRECTION`).
CALIBRATION = {"log-blobs": 3.9687, "fov": 0.01653, "hessian-ridges": 1.0}
#: The uncorrected blob peak's calibration: the size the learned ruler's veto compares (it was
#: chosen with it, ``benchmarks/scale_agreement.py``).
PEAK_CALIBRATION = 3.942
#: Share of the squared edge blur taken off the squared blob peak scale: ``sqrt(max(s_p^2 - k
#: s_e^2, 0.25))``. A blurred nucleus peaks near ``sqrt(s_n^2 + s_e^2)`` (Gaussian scales add in
#: quadrature), so blur made nuclei look larger. ``k`` chosen with ``nuclei-hovernet`` in the loop
#: on the training renderer only (``benchmarks/scale_blur.py``: 0.5 of 0, 0.25, 0.5, 0.75, 1;
#: larger values raised AJI more but lowered the tuning set's Dice by more than 0.002).
BLUR_CORRECTION = 0.5
#: Methods per kind; ``auto`` picks the first that applies.
METHODS = {"nuclei": ("log-blobs",), "vessels": ("fov", "hessian-ridges")}

#: Scales searched (Gaussian sigma, pixels): quarter-octave steps.
_SIGMAS = {"log-blobs": 2.0 ** np.arange(0.0, 5.51, 0.25),
           "hessian-ridges": 2.0 ** np.arange(-1.0, 4.51, 0.25)}
#: Ridge pixels: responses above this percentile inside the field of view.
_RIDGE_PERCENTILE = 90.0
#: Blob curve: the percentile of the response taken at each scale.
_BLOB_PERCENTILE = 99.5
#: Blob curve: its peak must exceed the finest scale's value by this factor (noise has no peak;
#: synthetic nuclei at 0.33x, 5.6 px across, give 1.11, white and pixel noise 1.00-1.03).
_BLOB_PROMINENCE = 1.08
#: Blob curve: the highest peak must exceed every other peak (0.75 octave or more away, beyond a
#: dip) by this factor, else the crop is ambiguous and gives no size. Chosen on the training
#: renderer's five domains resampled to 0.5-2x with extra blur, JPEG and fading
#: (``benchmarks/scale_robustness.py``): on the tiles where the estimate would have moved the
#: factor away from the true one, the two peaks were within 1.02; 1.02-1.05 all removed those and
#: no correct estimate, 1.08 and above dropped correct ones too. 1.05: the most cautious value
#: that lost nothing.
BLOB_DOMINANCE = 1.05
#: Blob curve: peaks closer than this many quarter-octave steps are one peak.
_BLOB_SEPARATION = 3
#: Largest ratio between the blob peak's size and the learned ruler's for a crop to give a size.
#: Chosen with ``nuclei-hovernet`` in the loop on the training renderer only
#: (``benchmarks/scale_agreement.py``: 1.6 over 1.4 and no rule, best mean AJI on 2000 randomly
#: resized and degraded tiles and the 300 tiles of ``scale_robustness.py``).
RULER_AGREEMENT = 1.6
#: Side of the windows the ruler was fitted on and reads (pixels).
RULER_WINDOW = 256
#: The learned ruler's coefficients (``python benchmarks/scale_regressor.py --ruler ...``).
_RULER_FILE = Path(__file__).with_name("scale_ruler.json")


def estimate_object_size(image: Any, kind: str, method: str = "auto") -> dict[str, Any]:
    """Estimate the typical object diameter of ``image`` in pixels.

    Parameters
    ----------
    image : ImageAdapter or array-like
        ``(H, W)`` or ``(H, W, C)`` image (numpy, dask or zarr), or an
        :class:`~napari_dgseg.core.imageprep.ImageAdapter`.
    kind : {"nuclei", "vessels"}
    method : str
        ``auto`` or one of :data:`METHODS` for the kind.

    Returns
    -------
    dict
        ``object_size_px`` (float, or None when nothing was found), ``method``, ``raw`` (the
        uncalibrated size) and ``crops`` (regions read; 0 for ``fov``).
    """
    from napari_dgseg.core.imageprep import ImageAdapter

    if kind not in METHODS:
        raise InputError(f"no object size estimator for {kind!r}; use 'nuclei' or 'vessels'")
    if method != "auto" and method not in METHODS[kind]:
        raise InputError(f"unknown estimator {method!r} for {kind}; use 'auto' or one of "
                         f"{list(METHODS[kind])}")
    adapter = image if isinstance(image, ImageAdapter) else ImageAdapter.from_array(image)
    raw, crops, used = None, 0, method
    if kind == "vessels" and method in ("auto", "fov"):
        raw, used = fov_radius(adapter), "fov"
        if raw is None and method == "auto":
            used = "hessian-ridges"
    elif method == "auto":
        used = METHODS[kind][0]
    extra: dict[str, Any] = {}
    if used == "log-blobs":
        boxes = _crop_boxes(adapter, kind)
        peaks = [_blob_reading(np.asarray(adapter.region(*box), np.float32)) for box in boxes]
        crops = len(boxes)
        raw, extra = _confident_blob_size(peaks)
    elif used == "hessian-ridges":
        boxes = _crop_boxes(adapter, kind)
        values = [raw_object_size(adapter.region(*box), used) for box in boxes]
        values = [v for v in values if math.isfinite(v)]
        crops = len(boxes)
        raw = float(np.median(values)) if values else None
    size = None if raw is None else CALIBRATION[used] * raw
    return {
        "object_size_px": None if size is None else round(size, 3),
        "method": used,
        "raw": None if raw is None else round(raw, 4),
        "crops": crops,
        **extra,
    }


def _confident_blob_size(peaks: list[tuple[float, float, float, float]]) -> tuple[float | None, dict[str, Any]]:
    """Median blur-corrected raw size over the crops whose curve has one clear peak that the
    ruler confirms.

    ``peaks`` holds ``(raw peak size, dominance, ruler size in px, edge blur)`` per crop (NaN
    size: no peak).
    Returns the raw size (None when no crop is confident) and the provenance fields:
    ``dominance`` (the crops' lowest ratio of the highest peak to a rival one; None when no crop's
    curve had a rival peak), ``min_dominance`` (:data:`BLOB_DOMINANCE`), ``ruler_px`` (the learned
    ruler's median size over the crops), ``ruler_agreement`` (:data:`RULER_AGREEMENT`) and,
    without a size, ``why`` and ``ambiguous_px`` (the size the crops' highest peaks would have
    given).
    """
    cal = PEAK_CALIBRATION
    found = [(r, d, q, b) for r, d, q, b in peaks if math.isfinite(r)]
    clear = [(r, q, b) for r, d, q, b in found if d >= BLOB_DOMINANCE]
    sure = [deblurred(r, b) for r, q, b in clear if _agrees(cal * r, q)]
    rivalled = [d for _, d, _, _ in found if math.isfinite(d)]
    rulers = [q for _, _, q, _ in peaks if math.isfinite(q)]
    blurs = [b for _, _, _, b in found if math.isfinite(b)]
    extra: dict[str, Any] = {
        "dominance": round(min(rivalled), 3) if rivalled else None,
        "min_dominance": BLOB_DOMINANCE,
        "ruler_px": round(float(np.median(rulers)), 3) if rulers else None,
        "ruler_agreement": RULER_AGREEMENT,
        "edge_blur_px": round(float(np.median(blurs)), 3) if blurs else None,
    }
    if sure:
        return float(np.median(sure)), extra
    if found:
        extra["ambiguous_px"] = round(cal * float(np.median([r for r, _, _, _ in found])), 3)
    if clear:
        peak_px = cal * float(np.median([r for r, _, _ in clear]))
        extra["why"] = (f"the nucleus-size estimate is not confirmed (blob peak {peak_px:.1f} px, "
                        f"learned ruler {extra['ruler_px']:.1f} px: more than "
                        f"{RULER_AGREEMENT:g}x apart)")
    elif found:
        extra["why"] = (f"the nucleus-size estimate is not confident (two peaks of the blob "
                        f"response within {BLOB_DOMINANCE:g}x of each other: nuclei or clusters "
                        "of nuclei)")
    else:
        extra["why"] = "no blob size found (no nuclei, nuclei under about 6 px, or noise)"
    return None, extra


def deblurred(raw: float, blur: float) -> float:
    """The blob peak scale ``raw`` with :data:`BLUR_CORRECTION` of the edge blur taken off in
    quadrature (no blur measured: unchanged)."""
    b = blur if math.isfinite(blur) else 0.0
    return math.sqrt(max(raw * raw - BLUR_CORRECTION * b * b, 0.25))


def _agrees(peak_px: float, ruler_px: float) -> bool:
    """True when the ruler confirms the peak (within :data:`RULER_AGREEMENT`; no ruler: True)."""
    if not math.isfinite(ruler_px) or ruler_px <= 0:
        return True
    return abs(math.log(peak_px / ruler_px)) <= math.log(RULER_AGREEMENT)


def raw_object_size(rgb: np.ndarray, method: str) -> float:
    """Uncalibrated size of one float RGB ``(H, W, 3)`` image in [0, 1] (NaN if none found)."""
    rgb = np.asarray(rgb, np.float32)
    if method == "log-blobs":
        raw, dominance, ruler, blur = _blob_reading(rgb)
        ok = math.isfinite(raw) and dominance >= BLOB_DOMINANCE and _agrees(PEAK_CALIBRATION * raw, ruler)
        return deblurred(raw, blur) if ok else float("nan")
    if method == "hessian-ridges":
        signal, valid = _vessel_signal(rgb)
        return _ridge_scale(signal, valid)
    if method == "fov":
        r = _fov_radius_of(rgb)
        return float("nan") if r is None else r
    raise InputError(f"unknown estimator {method!r}; use one of {sorted(CALIBRATION)}")


def fov_radius(adapter: Any) -> float | None:
    """Radius (pixels) of a fundus field of view, found on a thumbnail; None without one."""
    h, w = adapter.height, adapter.width
    step = max(1, int(math.ceil(max(h, w) / 512)))
    thumb = adapter.to_rgb_float(np.asarray(adapter.image[::step, ::step]))
    r = _fov_radius_of(thumb)
    return None if r is None else r * step


def _fov_radius_of(rgb: np.ndarray) -> float | None:
    from napari_dgseg.core.fov import find_disc

    disc, extent, _ = find_disc(rgb)
    return None if disc is None else extent / 2.0


# ------------------------------------------------------------------------------ crops


def _crop_boxes(adapter: Any, kind: str) -> list[tuple[int, int, int, int]]:
    """Up to :data:`MAX_CROPS` ``CROP``-sided boxes with the most content (whole image if small)."""
    h, w = adapter.height, adapter.width
    if h <= CROP * 1.5 and w <= CROP * 1.5:
        return [(0, h, 0, w)]
    ch, cw = min(CROP, h), min(CROP, w)
    step = max(1, int(math.ceil(max(h, w) / 256)))
    thumb = adapter.to_rgb_float(np.asarray(adapter.image[::step, ::step])).mean(axis=2)
    ny, nx = max(1, int(round(h / ch))), max(1, int(round(w / cw)))
    boxes = []
    for i in range(ny):
        for j in range(nx):
            y0 = int(round(i * (h - ch) / max(ny - 1, 1)))
            x0 = int(round(j * (w - cw) / max(nx - 1, 1)))
            t = thumb[y0 // step : (y0 + ch) // step + 1, x0 // step : (x0 + cw) // step + 1]
            if kind == "nuclei":  # dark, varied tissue (not glass)
                score = float(t.std() + (1.0 - t.mean()))
            else:  # inside the field of view: bright enough, varied
                score = float(t.std()) if float((t > 0.1).mean()) > 0.6 else -1.0
            boxes.append((score, (y0, y0 + ch, x0, x0 + cw)))
    boxes.sort(key=lambda b: -b[0])
    return [b for _, b in boxes[:MAX_CROPS]]


# ------------------------------------------------------------------------------ signals


def _grey_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of the grey level (mean of the channels)."""
    grey = rgb.mean(axis=2) if rgb.ndim == 3 else rgb
    return -np.log(np.clip(grey, 1.0 / 255.0, 1.0)).astype(np.float32)


def _vessel_signal(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverted green channel with the dark surround filled, and the (eroded) field of view."""
    fov = rgb.max(axis=2) > FOV_LEVEL
    g = 1.0 - rgb[..., 1].astype(np.float32)
    if fov.all() or not fov.any():
        return g, np.ones(g.shape, bool)
    idx = ndi.distance_transform_edt(~fov, return_distances=False, return_indices=True)
    filled = g[idx[0], idx[1]]
    return filled, ndi.binary_erosion(fov, iterations=3)


def _pyramid_filter(signal: np.ndarray, sigma: float, kind: str) -> np.ndarray:
    """Scale-normalised response at ``sigma``, computed on a block-averaged copy for large
    sigmas and brought back to full size."""
    d = 1
    while sigma / (2 * d) >= 2.0:
        d *= 2
    if d > 1:
        h, w = signal.shape
        hh, ww = (h // d) * d, (w // d) * d
        small = signal[:hh, :ww].reshape(hh // d, d, ww // d, d).mean(axis=(1, 3))
        s = math.sqrt(max(sigma**2 - (d * d - 1) / 12.0, 0.25)) / d
    else:
        small, s = signal, sigma
    if kind == "blob":
        resp = -(sigma**2) * ndi.gaussian_laplace(small, s) / (d * d)
    else:
        hrr = ndi.gaussian_filter(small, s, order=(2, 0))
        hcc = ndi.gaussian_filter(small, s, order=(0, 2))
        hrc = ndi.gaussian_filter(small, s, order=(1, 1))
        # Lindeberg's ridge strength: eigenvalue difference (zero for isotropic noise blobs),
        # counted only where the cross-section is a bright ridge (lambda_min < 0)
        half = np.sqrt(0.25 * (hrr - hcc) ** 2 + hrc**2)
        lam_min = 0.5 * (hrr + hcc) - half
        resp = (sigma**2) * np.where(lam_min < 0, 2.0 * half, 0.0) / (d * d)
    if d > 1:
        resp = ndi.zoom(resp, d, order=1, grid_mode=True, mode="nearest")
        out = np.zeros(signal.shape, np.float32)
        out[: resp.shape[0], : resp.shape[1]] = resp[: signal.shape[0], : signal.shape[1]]
        return out
    return resp.astype(np.float32)


def _normalise(signal: np.ndarray) -> np.ndarray | None:
    signal = signal.astype(np.float32)
    spread = float(np.percentile(signal, 99) - np.percentile(signal, 1))
    if spread <= 1e-6:
        return None
    return (signal - float(np.median(signal))) / spread


def _blob_curves(norm: np.ndarray) -> np.ndarray:
    """``(len(SIGNATURE_PERCENTILES), scales)``: each percentile of ``-sigma^2 LoG`` per scale."""
    return np.array([np.percentile(_pyramid_filter(norm, float(s), "blob"), SIGNATURE_PERCENTILES)
                     for s in _SIGMAS["log-blobs"]]).T


def _peak_and_dominance(curves: np.ndarray) -> tuple[float, float]:
    curve = curves[SIGNATURE_PERCENTILES.index(_BLOB_PERCENTILE)]
    return _peak(_SIGMAS["log-blobs"], curve), _dominance(curve)


def _blob_peak(signal: np.ndarray) -> tuple[float, float]:
    """Scale where the ``_BLOB_PERCENTILE`` of ``-sigma^2 LoG`` peaks (log-interpolated) and the
    peak's dominance (its height over the next separate peak's; inf without one)."""
    norm = _normalise(signal)
    if norm is None:
        return float("nan"), float("nan")
    return _peak_and_dominance(_blob_curves(norm))


def _blob_reading(rgb: np.ndarray) -> tuple[float, float, float, float]:
    """``(raw peak size, dominance, learned ruler's size in px, edge blur)`` of one float RGB crop
    (NaNs for a flat crop; NaN ruler for a crop under :data:`RULER_WINDOW` a side).

    The ruler and the edge blur were fitted and chosen on windows of :data:`RULER_WINDOW` pixels,
    so a larger crop gives them its central window (one window per crop keeps the estimate's
    cost near that of the peak alone); a crop of about one window gives its own curves."""
    norm = _normalise(_grey_density(rgb))
    if norm is None:
        return float("nan"), float("nan"), float("nan"), float("nan")
    curves = _blob_curves(norm)
    raw, dominance = _peak_and_dominance(curves)
    h, w = rgb.shape[:2]
    if min(h, w) < RULER_WINDOW:
        return raw, dominance, float("nan"), edge_blur(rgb)
    if max(h, w) < RULER_WINDOW * 1.25:
        return raw, dominance, _ruler_px(_signature_of(curves)), edge_blur(rgb)
    y, x = (h - RULER_WINDOW) // 2, (w - RULER_WINDOW) // 2
    window = rgb[y : y + RULER_WINDOW, x : x + RULER_WINDOW]
    inner = _normalise(_grey_density(window))
    ruler = float("nan") if inner is None else _ruler_px(_signature_of(_blob_curves(inner)))
    return raw, dominance, ruler, edge_blur(window)


#: Percentiles of the blob response whose curves over scale make :func:`blob_signature`
#: (the last one is the peak estimator's :data:`_BLOB_PERCENTILE`).
SIGNATURE_PERCENTILES = (50.0, 75.0, 90.0, 97.0, 99.5)


def blob_signature(rgb: np.ndarray) -> np.ndarray:
    """The scale-space signature of one float RGB ``(H, W, 3)`` crop in [0, 1].

    For each of :data:`SIGNATURE_PERCENTILES`, the curve of that percentile of ``-sigma^2 LoG``
    of the normalised grey density over the ``log-blobs`` scales, divided by its largest
    absolute value (its shape, not its height), followed by each curve's peak scale and
    response-weighted mean scale (log2 sigma). The learned ruler reads the size from all of it
    instead of from one peak. All zeros for a flat crop.
    """
    norm = _normalise(_grey_density(np.asarray(rgb, np.float32)))
    if norm is None:
        n = len(SIGNATURE_PERCENTILES)
        return np.zeros(n * len(_SIGMAS["log-blobs"]) + 2 * n, np.float32)
    return _signature_of(_blob_curves(norm))


def _signature_of(curves: np.ndarray) -> np.ndarray:
    logs = np.log2(_SIGMAS["log-blobs"])
    shapes, peaks, means = [], [], []
    for c in curves:
        top = float(np.abs(c).max()) or 1.0
        shapes.append(c / top)
        i = int(np.argmax(c))
        if 0 < i < len(c) - 1:
            a, b, d = c[i - 1], c[i], c[i + 1]
            den = a - 2.0 * b + d
            offset = float(np.clip(0.5 * (a - d) / den, -0.5, 0.5)) if den != 0 else 0.0
        else:
            offset = 0.0
        peaks.append(logs[i] + offset * (logs[1] - logs[0]))
        pos = np.clip(c, 0.0, None)
        means.append(float((pos * logs).sum() / pos.sum()) if pos.sum() > 0 else float(logs.mean()))
    return np.concatenate([np.concatenate(shapes), peaks, means]).astype(np.float32)


@lru_cache(maxsize=1)
def _ruler() -> Ridge:
    data = json.loads(_RULER_FILE.read_text())
    if tuple(data["percentiles"]) != SIGNATURE_PERCENTILES:
        raise RuntimeError(f"{_RULER_FILE.name} was fitted on other signature percentiles; refit it")
    return Ridge.from_dict(data)


def _ruler_px(signature: np.ndarray) -> float:
    """The learned ruler's nucleus size (pixels) for one signature."""
    return float(2.0 ** _ruler().predict(signature))


#: Scales searched for the edge blur (Gaussian sigma, pixels): quarter-octave steps.
_EDGE_SIGMAS = 2.0 ** np.arange(-1.0, 3.01, 0.25)


def edge_blur(rgb: np.ndarray) -> float:
    """The blur of one float RGB crop's edges (Gaussian sigma, pixels; NaN for a flat crop).

    Edge scale selection (Lindeberg, "Edge detection and ridge detection with automatic scale
    selection", 1998): for a step edge blurred by a Gaussian of standard deviation ``s0``, the
    gradient magnitude normalised with ``gamma = 1/2``, ``sigma^(1/2) |grad L|``, is largest at
    ``sigma = s0``. The median selected scale over the strongest 5 % of edge responses (inside
    the range searched) of the normalised grey density.
    """
    norm = _normalise(_grey_density(np.asarray(rgb, np.float32)))
    if norm is None:
        return float("nan")
    best = np.full(norm.shape, -np.inf, np.float32)
    arg = np.zeros(norm.shape, np.int16)
    for i, sigma in enumerate(_EDGE_SIGMAS):
        gy = ndi.gaussian_filter(norm, float(sigma), order=(1, 0))
        gx = ndi.gaussian_filter(norm, float(sigma), order=(0, 1))
        resp = math.sqrt(float(sigma)) * np.hypot(gx, gy)
        better = resp > best
        best[better] = resp[better]
        arg[better] = i
    strong = best > np.percentile(best, 95)
    inner = strong & (arg > 0) & (arg < len(_EDGE_SIGMAS) - 1)
    if inner.sum() < 20:
        return float("nan")
    return float(np.median(_EDGE_SIGMAS[arg[inner]]))


def _dominance(curve: np.ndarray) -> float:
    """Highest value of ``curve`` over its highest other local maximum at least
    ``_BLOB_SEPARATION`` steps away with a dip in between (inf when there is none)."""
    i = int(np.argmax(curve))
    rivals = [float(curve[j]) for j in range(1, len(curve) - 1)
              if abs(j - i) >= _BLOB_SEPARATION and curve[j] >= curve[j - 1]
              and curve[j] >= curve[j + 1] and curve[min(i, j):max(i, j) + 1].min() < curve[j]]
    best = max(rivals, default=0.0)
    return float(curve[i] / best) if best > 0 else math.inf


def _peak(sigmas: np.ndarray, curve: np.ndarray) -> float:
    i = int(np.argmax(curve))
    if i < 2 or i == len(curve) - 1:
        return float("nan")  # no maximum inside the range searched
    if curve[i] < _BLOB_PROMINENCE * curve[0]:
        return float("nan")  # noise: the response falls from the finest scale on, no blob size
    a, b, c = curve[i - 1], curve[i], curve[i + 1]
    den = a - 2.0 * b + c
    offset = 0.5 * (a - c) / den if den != 0 else 0.0
    step = math.log2(sigmas[1] / sigmas[0])
    return float(2.0 ** (math.log2(sigmas[i]) + step * offset))


def _ridge_scale(signal: np.ndarray, valid: np.ndarray) -> float:
    """Median best scale along the skeleton of the strongest ridges."""
    from skimage.morphology import skeletonize

    norm = _normalise(signal)
    if norm is None:
        return float("nan")
    sigmas = _SIGMAS["hessian-ridges"]
    best = np.full(norm.shape, -np.inf, np.float32)
    arg = np.zeros(norm.shape, np.int16)
    for i, sigma in enumerate(sigmas):
        resp = _pyramid_filter(norm, float(sigma), "ridge")
        better = resp > best
        best[better] = resp[better]
        arg[better] = i
    inside = best[valid]
    inside = inside[inside > 0]
    if inside.size < 10:
        return float("nan")
    ridges = (best > np.percentile(inside, _RIDGE_PERCENTILE)) & valid
    skeleton = skeletonize(ridges) & (arg < len(sigmas) - 1)
    if skeleton.sum() < 5:
        return float("nan")
    return float(np.median(sigmas[arg[skeleton]]))
