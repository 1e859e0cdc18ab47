"""HoVer-Net post-processing: nuclear-pixel probabilities + HV maps -> nucleus instances.

The steps follow the reference implementation (methods.md section 4), written with scipy and
scikit-image instead of OpenCV:

1. ``blob`` = NP probability >= 0.5, connected components smaller than 10 px removed;
2. the h and v maps are min-max scaled to [0, 1]; a 21-tap Sobel derivative of h along x and of
   v along y (OpenCV's kernel: binomial smoothing across, binomial derivative along), each
   scaled to [0, 1] and inverted (``1 - minmax``): high where the maps jump, i.e. between nuclei;
3. ``overall = max(sobel_h, sobel_v) - (1 - blob)``, clamped at 0;
4. ``dist = -GaussianBlur3x3((1 - overall) * blob)``: the watershed relief;
5. ``markers = blob - (overall >= 0.4)``, clamped at 0, holes filled, opened with a 5x5 ellipse,
   labelled, components < 10 px removed;
6. ``watershed(dist, markers, mask=blob)``.

Borders use OpenCV's default (reflect-101 = scipy's ``mirror``); the opening does not erode from
the image border (as OpenCV's morphology, whose default border never shrinks objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
from scipy import ndimage as ndi

#: OpenCV's 5x5 ``MORPH_ELLIPSE`` structuring element.
ELLIPSE_5 = np.array(
    [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    dtype=bool,
)


@dataclass(frozen=True)
class HoverPostConfig:
    """Parameters of :func:`hovernet_instances` (defaults: the reference values).

    Attributes
    ----------
    np_threshold : float
        Nuclear-pixel probability threshold.
    min_size : int
        Blobs and markers smaller than this (pixels) are removed.
    sobel_size : int
        Odd Sobel kernel size (21 in the reference).
    marker_threshold : float
        Pixels whose edge energy ``overall`` is >= this are removed from the markers.
    """

    np_threshold: float = 0.5
    min_size: int = 10
    sobel_size: int = 21
    marker_threshold: float = 0.4


def sobel_kernels(size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's separable Sobel kernels of odd ``size``: ``(derivative, smoothing)``.

    The smoothing kernel is the binomial row of length ``size``; the derivative kernel is the
    binomial row of length ``size - 2`` convolved with ``[-1, 0, 1]`` (applied as correlation,
    positive where values increase).
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"Sobel size must be odd and >= 3, got {size}")
    smooth = np.array([comb(size - 1, k) for k in range(size)], dtype=np.float64)
    base = np.array([comb(size - 3, k) for k in range(size - 2)], dtype=np.float64)
    deriv = np.convolve(base, [-1.0, 0.0, 1.0])  # base is symmetric: same as correlation
    return deriv, smooth


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _open(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    eroded = ndi.binary_erosion(mask, structure, border_value=1)
    return ndi.binary_dilation(eroded, structure, border_value=0)


def hovernet_instances(
    np_prob: np.ndarray, hv: np.ndarray, config: HoverPostConfig | None = None
) -> np.ndarray:
    """Nucleus instances from HoVer-Net maps (reference post-processing).

    Parameters
    ----------
    np_prob : np.ndarray
        ``(H, W)`` nuclear-pixel probability in [0, 1].
    hv : np.ndarray
        ``(2, H, W)`` horizontal (channel 0) and vertical (channel 1) maps.
    config : HoverPostConfig, optional
        Thresholds; the reference values by default.

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 instance ids ``1..n`` (0 = background).
    """
    from skimage.segmentation import watershed

    cfg = config or HoverPostConfig()
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if np_prob.ndim != 2 or hv.shape != (2, *np_prob.shape):
        raise ValueError(
            f"expected np_prob (H, W) and hv (2, H, W), got {np_prob.shape} and {hv.shape}"
        )
    blob_lab, _ = ndi.label(np_prob >= cfg.np_threshold)
    blob_lab = _remove_small(blob_lab, cfg.min_size)
    blob = (blob_lab > 0).astype(np.float32)
    if not blob.any():
        return np.zeros(np_prob.shape, np.int32)

    h_dir = _minmax(hv[0])
    v_dir = _minmax(hv[1])
    deriv, smooth = sobel_kernels(cfg.sobel_size)
    sobel_h = ndi.correlate1d(
        ndi.correlate1d(h_dir.astype(np.float64), deriv, axis=1, mode="mirror"),
        smooth,
        axis=0,
        mode="mirror",
    )
    sobel_v = ndi.correlate1d(
        ndi.correlate1d(v_dir.astype(np.float64), deriv, axis=0, mode="mirror"),
        smooth,
        axis=1,
        mode="mirror",
    )
    sobel_h = 1.0 - _minmax(sobel_h)
    sobel_v = 1.0 - _minmax(sobel_v)

    overall = np.maximum(sobel_h, sobel_v) - (1.0 - blob)
    np.maximum(overall, 0.0, out=overall)
    dist = (1.0 - overall) * blob
    gauss = np.array([0.25, 0.5, 0.25])
    dist = -ndi.correlate1d(
        ndi.correlate1d(dist, gauss, axis=0, mode="mirror"), gauss, axis=1, mode="mirror"
    )

    marker = (blob > 0) & ~(overall >= cfg.marker_threshold)
    marker = ndi.binary_fill_holes(marker)
    marker = _open(marker, ELLIPSE_5)
    markers, _ = ndi.label(marker)
    markers = _remove_small(markers, cfg.min_size)
    out = watershed(dist, markers=markers, mask=blob > 0)
    return _relabel(out)


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]
