"""Classical reference segmentations: the rows every learned model must beat.

Pure numpy / scipy / scikit-image, no torch, no training:

* :func:`classical_nuclei`: haematoxylin by colour deconvolution (Ruifrok & Johnston 2001,
  "Quantification of histochemical staining by color deconvolution", as implemented by
  :func:`skimage.color.rgb2hed`), an Otsu threshold computed on tissue pixels only (blank glass
  would pull a global threshold towards "glass versus everything"), small objects and holes
  removed, touching nuclei split by a marker-controlled watershed on the distance transform.
* :func:`classical_vessels`: the inverted green channel (vessels absorb green light most), a
  white top-hat with a disk a little wider than the widest vessel (which removes the slowly
  varying background: illumination, disc, macula), an Otsu threshold inside the field of view and
  small-object removal. The field of view is estimated from the dark surround when not given.

The default parameters were chosen on the *training* renderer's domains only
(:mod:`napari_dgseg.core.data.synthetic`, seeds 0-7: ``clean`` for nuclei, ``camera-a`` for
vessels), never on the held-out renderers or on the real images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.errors import InputError

__all__ = ["classical_nuclei", "classical_vessels", "estimate_fov", "haematoxylin"]


def _check_rgb8(rgb: np.ndarray, argument: str = "rgb8") -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] < 8 or a.shape[1] < 8:
        raise InputError(
            f"{argument} must be an RGB image of shape (H, W, 3) with H, W >= 8; got shape "
            f"{a.shape}: convert grey images with np.stack([img] * 3, -1)"
        )
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and np.nanmax(a) <= 1.0:
            a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(np.nan_to_num(a.astype(np.float64)), 0, 255).astype(np.uint8)
    return a


def haematoxylin(rgb8: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density by colour deconvolution, ``(H, W)`` float64."""
    from skimage.color import rgb2hed

    return rgb2hed(_check_rgb8(rgb8))[..., 0]


def _drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_size`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, hole_size: int) -> np.ndarray:
    """``mask`` with its 4-connected holes of fewer than ``hole_size`` pixels filled."""
    return mask | _drop_small(~mask & ndi.binary_fill_holes(mask), hole_size)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    v = values[np.isfinite(values)]
    if v.size == 0 or float(v.max()) == float(v.min()):
        return float(v.max()) if v.size else 0.0
    return float(threshold_otsu(v))


def classical_nuclei(
    rgb8: np.ndarray,
    *,
    glass_level: float = 215.0,
    min_size: int = 30,
    hole_size: int = 40,
    smooth_sigma: float = 1.0,
    min_distance: int = 5,
    split_smoothing: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei by haematoxylin deconvolution, tissue-Otsu threshold and distance watershed.

    Parameters
    ----------
    rgb8 : np.ndarray
        ``(H, W, 3)`` RGB (uint8; floats in [0, 1] and other integer types are converted).
    glass_level : float
        A pixel whose grey level (mean of R, G, B after a 2-pixel blur) is above this is blank
        glass and takes no part in the threshold; when fewer than 5 % of the pixels are tissue,
        all pixels are used.
    min_size : int
        Objects smaller than this (pixels) are removed.
    hole_size : int
        Holes smaller than this inside a nucleus (vesicular chromatin, nucleoli) are filled.
    smooth_sigma : float
        Gaussian smoothing of the haematoxylin channel before thresholding (pixels).
    min_distance : int
        Smallest distance between two watershed markers (about the smallest nucleus radius).
    split_smoothing : float
        Gaussian smoothing of the distance transform before finding markers (fewer
        over-splits of elongated nuclei).

    Returns
    -------
    semantic : np.ndarray
        ``(H, W)`` uint8, 1 = nucleus.
    instances : np.ndarray
        ``(H, W)`` int32 instance ids ``1..n`` (0 background).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    rgb = _check_rgb8(rgb8)
    h_od = haematoxylin(rgb)
    if smooth_sigma > 0:
        h_od = ndi.gaussian_filter(h_od, smooth_sigma)
    grey = ndi.gaussian_filter(rgb.astype(np.float32).mean(-1), 2.0)
    tissue = grey < glass_level
    sample = h_od[tissue] if tissue.mean() >= 0.05 else h_od.ravel()
    mask = h_od > _otsu(sample)
    mask &= tissue | (tissue.mean() < 0.05)
    mask = _fill_small_holes(mask, hole_size)
    mask = _drop_small(mask, min_size)
    if not mask.any():
        z = np.zeros(mask.shape, np.int32)
        return z.astype(np.uint8), z
    dist = ndi.distance_transform_edt(mask)
    if split_smoothing > 0:
        dist = ndi.gaussian_filter(dist, split_smoothing)
    components, _ = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # a component without a marker (flat distance plateau) gets one at its deepest point
    missing = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for comp in missing:
        idx = np.flatnonzero((components == comp).ravel())
        markers.ravel()[idx[np.argmax(dist.ravel()[idx])]] = markers.max() + 1
    instances = watershed(-dist, markers, mask=mask).astype(np.int32)
    return mask.astype(np.uint8), instances


def estimate_fov(rgb8: np.ndarray, *, dark_level: float | None = None) -> np.ndarray:
    """Field of view of a fundus photograph: the largest bright region inside the dark surround.

    Parameters
    ----------
    rgb8 : np.ndarray
        ``(H, W, 3)`` RGB.
    dark_level : float, optional
        Grey level (max of R, G, B) below which a pixel is surround; default: a third of the
        Otsu threshold between surround and fundus on the red channel, at least 12.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, holes filled, eroded by 2 % of its equivalent radius so that the rim
        (where the vessel filter sees the dark edge) is left out.
    """
    rgb = _check_rgb8(rgb8)
    bright = rgb.max(-1).astype(np.float32)
    bright = ndi.gaussian_filter(bright, 1.5)
    if dark_level is None:
        dark_level = max(12.0, _otsu(bright) / 3.0)
    fov = bright > dark_level
    labels, n = ndi.label(fov)
    if n == 0:
        return np.zeros(fov.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    fov = ndi.binary_fill_holes(labels == int(np.argmax(sizes)))
    radius = np.sqrt(fov.sum() / np.pi)
    erode = max(1, int(round(0.02 * radius)))
    return ndi.binary_erosion(fov, iterations=erode)


def classical_vessels(
    rgb8: np.ndarray,
    fov_mask: np.ndarray | None = None,
    *,
    disk_radius: int | None = None,
    smooth_sigma: float = 0.7,
    min_size: int | None = None,
    threshold_scale: float = 0.5,
) -> np.ndarray:
    """Vessels by a white top-hat of the inverted green channel and an Otsu threshold.

    Parameters
    ----------
    rgb8 : np.ndarray
        ``(H, W, 3)`` RGB fundus photograph.
    fov_mask : np.ndarray, optional
        ``(H, W)`` bool field of view; estimated with :func:`estimate_fov` when None.
    disk_radius : int, optional
        Radius of the top-hat's disk, a little more than half the widest vessel; default 2.2 %
        of the field-of-view diameter, at least 3 (at 256 px the widest vessels are ~5 px).
    smooth_sigma : float
        Gaussian smoothing of the green channel (noise).
    min_size : int, optional
        Objects smaller than this are removed; default 0.1 % of the field-of-view area, at
        least 10.
    threshold_scale : float
        Multiplier of the Otsu threshold (1 = plain Otsu).

    Returns
    -------
    np.ndarray
        ``(H, W)`` uint8, 1 = vessel, always 0 outside the field of view.
    """
    from skimage.morphology import disk, white_tophat

    rgb = _check_rgb8(rgb8)
    if fov_mask is None:
        fov = estimate_fov(rgb)
    else:
        fov = np.asarray(fov_mask).astype(bool)
        if fov.shape != rgb.shape[:2]:
            raise InputError(
                f"fov_mask has shape {fov.shape} but the image is {rgb.shape[:2]}: give a mask of "
                "the image's height and width, or None to estimate it"
            )
    if not fov.any():
        return np.zeros(fov.shape, np.uint8)
    green = rgb[..., 1].astype(np.float32)
    # the surround takes the value of the nearest field-of-view pixel, so the dark rim does not
    # look like a vessel to the top-hat
    inner = ndi.binary_erosion(fov, iterations=2) if fov.sum() > 400 else fov
    nearest = ndi.distance_transform_edt(~inner, return_distances=False, return_indices=True)
    green = green[nearest[0], nearest[1]]
    inv = 255.0 - green
    if smooth_sigma > 0:
        inv = ndi.gaussian_filter(inv, smooth_sigma)
    diameter = 2.0 * np.sqrt(fov.sum() / np.pi)
    if disk_radius is None:
        disk_radius = max(3, int(round(0.022 * diameter)))
    th = white_tophat(inv, disk(int(disk_radius)))
    thr = _otsu(th[fov]) * threshold_scale
    mask = (th > thr) & fov
    if min_size is None:
        min_size = max(10, int(round(0.001 * fov.sum())))
    return _drop_small(mask, min_size).astype(np.uint8)
