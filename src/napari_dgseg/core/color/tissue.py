"""Tissue masks and once-per-image colour statistics for DCIN.

Colour statistics must describe the tissue, not the white glass around it (slides) or the black
outside the field of view (fundus photographs), and must be computed once per image or slide, not
per tile (or neighbouring tiles get different mappings and the mosaic shows seams).

:func:`tissue_mask` keeps pixels whose summed optical density
``OD = sum_c -log10((I_c + 1) / 256)`` exceeds ``min(od_threshold, Otsu(OD))`` (the Otsu threshold
only matters for faint images, where it lowers the fixed one; it never goes below
``MIN_OD_THRESHOLD``) and whose brightest channel is above ``dark_threshold``. When fewer than
``min_fraction`` of the pixels pass, the mask falls back to all pixels.

:func:`image_color_stats` strides the image so its longer side is at most ``max_side`` (for a dask
array only the strided copy is computed), masks tissue and returns the l-alpha-beta (or CIELAB)
mean and std.

Also here: :func:`split_image` / :func:`from_float_rgb`, the numpy dtype and channel handling
shared by the colour functions (uint8, uint16, float in ``[0, 1]``; grey, RGB, RGBA). The
intensity rule is :mod:`napari_dgseg.core.imageprep`'s (uint8 / 255, float as is, uint16 by the
robust percentiles of the whole image), so colour statistics describe the pixels the network sees.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.color.transforms import color_stats
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import decide_scaling

__all__ = [
    "MIN_OD_THRESHOLD",
    "colour_to_float",
    "decide_colour_scaling",
    "float_to_dtype",
    "from_float_rgb",
    "has_tissue",
    "image_color_stats",
    "prepare_image",
    "split_image",
    "tissue_fraction",
    "tissue_mask",
]

#: Lowest summed optical density accepted as tissue, whatever Otsu says (pure-white noise floor).
MIN_OD_THRESHOLD: float = 0.05

_FLOAT_TOL = 1e-3


def prepare_image(image: Any, name: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """Validate an image and split off its alpha channel, without converting the pixels.

    Parameters
    ----------
    image : array-like, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        uint8, uint16, or float in ``[0, 1]``.
    name : str
        How the image is called in error messages.

    Returns
    -------
    colour : ndarray, shape (H, W, 1) or (H, W, 3)
        A view of the colour channels, in the input dtype.
    alpha : ndarray, shape (H, W), or None
        A view of the alpha channel of an RGBA image.
    """
    try:
        arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - any array-conversion failure is a user input problem
        raise InputError(f"{name} could not be read as an array ({exc}).") from None
    if arr.dtype == object or arr.dtype.kind not in "uif":
        raise InputError(
            f"{name} must be a numeric image array (uint8, uint16 or float in [0, 1]), got "
            f"dtype {arr.dtype}; pass the pixel array, not a file name or object."
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise InputError(
            f"{name} must have shape (H, W), (H, W, 3) or (H, W, 4) (channels last), got "
            f"{arr.shape}; for channels-first data use np.moveaxis(image, 0, -1)."
        )
    if arr.dtype.kind in "ui" and arr.dtype not in (np.uint8, np.uint16):
        raise InputError(
            f"{name} has integer dtype {arr.dtype}; only uint8 and uint16 are understood. "
            "Convert it with image.astype(np.uint8) (0-255) or to float in [0, 1]."
        )
    colour = arr[..., :3]
    if arr.dtype.kind == "f":
        if not np.isfinite(colour).all():
            raise InputError(f"{name} contains NaN or infinite values; clean it first.")
        lo, hi = float(colour.min()), float(colour.max())
        if lo < -_FLOAT_TOL or hi > 1.0 + _FLOAT_TOL:
            raise InputError(
                f"float {name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; divide "
                "8-bit data by 255 (or pass it as uint8)."
            )
    return colour, (arr[..., 3] if arr.shape[-1] == 4 else None)


def decide_colour_scaling(colour: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` mapped to 0 and 1 for a whole image of :func:`prepare_image`.

    uint8: ``(0, 255)``; float in ``[0, 1]``: ``(0, 1)``; uint16: the robust percentiles of
    :func:`napari_dgseg.core.imageprep.decide_scaling` (a 12-bit image in a 16-bit container is
    stretched exactly as inference stretches it, not divided by 65535).
    """
    if colour.dtype == np.uint8:
        return 0.0, 255.0
    if colour.dtype.kind == "f":
        return 0.0, 1.0
    return decide_scaling(colour)


def colour_to_float(colour: np.ndarray, scaling: tuple[float, float] | None = None) -> np.ndarray:
    """Pixels of :func:`prepare_image` (``(h, w, 1)`` or ``(h, w, 3)``) to float32 RGB in ``[0, 1]``.

    Parameters
    ----------
    colour : ndarray
        A whole image, or a block of one (then pass the whole image's ``scaling``).
    scaling : (low, high), optional
        From :func:`decide_colour_scaling` of the whole image; default: decided from ``colour``.
    """
    low, high = decide_colour_scaling(colour) if scaling is None else scaling
    if (low, high) == (0.0, 1.0):
        rgb = np.clip(colour.astype(np.float32), 0.0, 1.0)
    else:
        rgb = (colour.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
        rgb = np.clip(rgb, 0.0, 1.0)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def float_to_dtype(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float RGB in ``[0, 1]`` to ``dtype`` over its full range (uint8/uint16 rounded, floats cast).

    This encodes an *output* (e.g. a colour-normalised image, whose colours are the reference's)
    and is not the inverse of reading: a 12-bit input is read by its percentiles
    (:func:`colour_to_float`) and written over the whole uint16 range.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(np.clip(rgb, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return rgb.astype(dtype, copy=False)


def split_image(image: Any, name: str = "image") -> tuple[np.ndarray, np.ndarray | None, np.dtype]:
    """Split an image into float RGB in ``[0, 1]``, its alpha channel and its dtype.

    Parameters
    ----------
    image : array-like, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        uint8, uint16, or float in ``[0, 1]``.
    name : str
        How the image is called in error messages.

    Returns
    -------
    rgb : ndarray, shape (H, W, 3), float32
        Colour channels in ``[0, 1]`` (grey is repeated into three channels).
    alpha : ndarray, shape (H, W), or None
        A copy of the alpha channel of an RGBA image.
    dtype : numpy.dtype
        The input dtype, for :func:`from_float_rgb`.
    """
    colour, alpha = prepare_image(image, name)
    return colour_to_float(colour), (None if alpha is None else alpha.copy()), colour.dtype


def from_float_rgb(rgb: np.ndarray, alpha: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """Float RGB ``(H, W, 3)`` in ``[0, 1]`` to ``dtype`` (see :func:`float_to_dtype`).

    Returns
    -------
    ndarray, shape (H, W, 3) or (H, W, 4)
        With ``alpha`` appended as a fourth channel when it is not None.
    """
    out = float_to_dtype(rgb, dtype)
    if alpha is not None:
        out = np.concatenate([out, alpha[..., None].astype(out.dtype)], axis=-1)
    return out


def _as_uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB from any image :func:`split_image` accepts (uint8 RGB passes through)."""
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3:
        return rgb
    f, _, _ = split_image(rgb, name="rgb")
    return np.rint(f * 255.0).astype(np.uint8)


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of a 1-D sample (histogram of 256 bins)."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    total = (hist * centres).sum()
    m1 = (total - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def _raw_tissue_mask(rgb: np.ndarray, od_threshold: float, dark_threshold: int) -> np.ndarray:
    rgb8 = _as_uint8_rgb(rgb)
    lut = (-np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)
    od = lut[rgb8].sum(axis=-1)
    threshold = od_threshold
    if float(od.max() - od.min()) > 1e-6:
        threshold = min(od_threshold, _otsu(od.ravel()))
    threshold = max(threshold, MIN_OD_THRESHOLD)
    return (od > threshold) & (rgb8.max(axis=-1) > dark_threshold)


def tissue_mask(
    rgb_uint8: np.ndarray,
    *,
    od_threshold: float = 0.15,
    dark_threshold: int = 15,
    min_fraction: float = 0.01,
    fallback: bool = True,
) -> np.ndarray:
    """Boolean mask of tissue pixels (not white background, not black outside a field of view).

    Parameters
    ----------
    rgb_uint8 : ndarray, shape (H, W, 3)
        uint8 RGB (other dtypes accepted by :func:`split_image` are converted).
    od_threshold : float
        Summed optical density above which a pixel is tissue (lowered by Otsu for faint images,
        never below :data:`MIN_OD_THRESHOLD`).
    dark_threshold : int
        Pixels whose brightest channel is at most this (0-255) are excluded (fundus surround).
    min_fraction : float
        If fewer than this fraction of pixels are tissue, the mask is "nearly empty".
    fallback : bool
        Return all pixels (all True) when the mask is nearly empty.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    mask = _raw_tissue_mask(rgb_uint8, od_threshold, dark_threshold)
    if fallback and mask.mean() < min_fraction:
        return np.ones(mask.shape, dtype=bool)
    return mask


def _strided(image: Any, max_side: int, name: str = "image") -> Any:
    """Strided view/copy of ``image`` whose longer side is at most ``max_side``."""
    if max_side < 1:
        raise InputError(f"max_side must be a positive number of pixels, got {max_side}.")
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) < 2:
        what = f"shape {tuple(shape)}" if shape is not None else type(image).__name__
        raise InputError(
            f"{name} must be an image array of shape (H, W, 3) or (H, W), got {what}; read the "
            "file into an array first."
        )
    step = max(1, math.ceil(max(shape[0], shape[1]) / max_side))
    small = image[::step, ::step]
    if hasattr(small, "compute"):  # dask: compute only the strided copy
        small = small.compute()
    return small


def tissue_fraction(image: Any, max_side: int = 1024) -> float:
    """Fraction of tissue pixels (raw mask, no fallback) on a downsampled copy of ``image``."""
    rgb, _, _ = split_image(_strided(image, max_side))
    return float(_raw_tissue_mask(rgb, 0.15, 15).mean())


def has_tissue(image: Any, min_fraction: float = 0.01, max_side: int = 1024) -> bool:
    """True when at least ``min_fraction`` of ``image`` is tissue (see :func:`tissue_mask`)."""
    return tissue_fraction(image, max_side=max_side) >= min_fraction


def image_color_stats(
    image: Any,
    space: str = "lab-reinhard",
    max_side: int = 1024,
    *,
    tissue_only: bool = True,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Colour mean and std of a whole image or slide, computed once on a downsampled copy.

    Parameters
    ----------
    image : ndarray or dask array, shape (H, W, 3) (also grey, RGBA, uint16, float in [0, 1])
        The image; a dask array is strided lazily and only the strided copy is computed.
    space : str
        ``"lab-reinhard"`` or ``"cielab"``.
    max_side : int
        The copy is strided so that its longer side is at most this.
    tissue_only : bool
        Use only tissue pixels (:func:`tissue_mask`, with its fallback to all pixels).
    name : str
        How the image is called in error messages.

    Returns
    -------
    mean, std : ndarray, shape (3,), float64
        Per-channel statistics in ``space`` (std floored, never 0).
    """
    small = _strided(image, max_side, name)
    rgb, _, _ = split_image(small, name=name)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    rgb8 = small if small.dtype == np.uint8 and small.ndim == 3 and small.shape[-1] == 3 else rgb
    mask = torch.from_numpy(tissue_mask(np.asarray(rgb8))) if tissue_only else None
    with torch.no_grad():
        mean, std = color_stats(tensor.double(), space=space, mask=mask)
    return mean.numpy(), std.numpy()
