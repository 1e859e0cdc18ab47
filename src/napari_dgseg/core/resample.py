"""Resampling between an image's pixel grid and the model's, tile by tile.

:class:`ResampledImage` presents an image resized by a factor ``f`` (``new side = round(f x
side)``) as an :class:`~napari_dgseg.core.imageprep.ImageAdapter`: a region of the resized image
is computed from only the source pixels under it (plus a margin), so the tiled inference of
:func:`napari_dgseg.core.predict.run_tiled` still reads a lazy whole slide one tile at a time.
The value at model pixel ``(Y, X)`` is the source sampled at ``((Y + 0.5) / f - 0.5, (X + 0.5) /
f - 0.5)`` by bilinear interpolation, after a Gaussian anti-aliasing blur of sigma
``(1 / f - 1) / 2`` when shrinking: every region is computed with the same formula, so tiles agree
where they overlap and no seam appears.

:func:`resample_to` brings the model-grid outputs back to the image grid: label maps (class or
instance ids, codebook indices) by nearest neighbour, so ids are never mixed and each keeps its
number; probabilities and other float maps bilinearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.imageprep import ImageAdapter

__all__ = ["ResampledImage", "resample_to", "resampled_shape", "zoom_image"]


def resampled_shape(height: int, width: int, factor: float) -> tuple[int, int]:
    """Size of an ``height x width`` image resized by ``factor`` (each side at least 1)."""
    return max(1, int(round(height * factor))), max(1, int(round(width * factor)))


def _antialias_sigma(factor: float) -> float:
    return 0.0 if factor >= 1.0 else 0.5 * (1.0 / factor - 1.0)


def _coords(start: int, stop: int, scale: float) -> np.ndarray:
    """Source coordinates of target pixels ``start..stop-1`` (pixel centres aligned)."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5


@dataclass(frozen=True)
class ResampledImage(ImageAdapter):
    """An :class:`ImageAdapter` of ``source`` resized by ``factor``, computed region by region.

    Build it with :meth:`of`. ``height``/``width`` are the resized sides; ``image`` is the
    source's array (colour statistics are scale-free).
    """

    source: ImageAdapter | None = None
    factor_y: float = 1.0
    factor_x: float = 1.0

    @classmethod
    def of(cls, source: ImageAdapter, factor: float) -> ResampledImage:
        """Resize ``source`` by ``factor`` (> 0)."""
        h, w = resampled_shape(source.height, source.width, factor)
        return cls(image=source.image, height=h, width=w, channels=source.channels,
                   low=source.low, high=source.high, source=source,
                   factor_y=h / source.height, factor_x=w / source.width)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Resized pixels ``[y0:y1, x0:x1]`` as float32 RGB ``(h, w, 3)`` in [0, 1]."""
        src = self.source
        assert src is not None
        ys = _coords(y0, y1, 1.0 / self.factor_y)
        xs = _coords(x0, x1, 1.0 / self.factor_x)
        sig_y, sig_x = _antialias_sigma(self.factor_y), _antialias_sigma(self.factor_x)
        my, mx = int(math.ceil(4 * sig_y)) + 2, int(math.ceil(4 * sig_x)) + 2
        sy0 = max(0, int(math.floor(ys[0])) - my)
        sy1 = min(src.height, int(math.ceil(ys[-1])) + my + 1)
        sx0 = max(0, int(math.floor(xs[0])) - mx)
        sx1 = min(src.width, int(math.ceil(xs[-1])) + mx + 1)
        block = src.region(sy0, sy1, sx0, sx1)
        if sig_y > 0 or sig_x > 0:
            block = ndi.gaussian_filter(block, (sig_y, sig_x, 0), mode="nearest")
        return _bilinear(block, ys - sy0, xs - sx0)


def _bilinear(block: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``block`` ``(h, w, ...)`` at the grid ``ys x xs`` (edges clamped)."""
    h, w = block.shape[:2]
    ys = np.clip(ys, 0.0, h - 1.0)
    xs = np.clip(xs, 0.0, w - 1.0)
    y0 = np.minimum(np.floor(ys).astype(np.intp), max(h - 2, 0))
    x0 = np.minimum(np.floor(xs).astype(np.intp), max(w - 2, 0))
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)
    wx = (xs - x0).astype(np.float32)
    extra = (None,) * (block.ndim - 2)
    wy = wy[(slice(None), None, *extra)]
    wx = wx[(None, slice(None), *extra)]
    top = block[y0][:, x0] * (1 - wx) + block[y0][:, x1] * wx
    bottom = block[y1][:, x0] * (1 - wx) + block[y1][:, x1] * wx
    return np.ascontiguousarray((top * (1 - wy) + bottom * wy).astype(np.float32))


def zoom_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize a whole ``(H, W)`` or ``(H, W, C)`` array by ``factor`` the way inference does
    (anti-aliased bilinear; float32 out). Used by benchmarks and tests to make rescaled images."""
    a = np.asarray(image, np.float32)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[..., None]
    h, w = resampled_shape(a.shape[0], a.shape[1], factor)
    fy, fx = h / a.shape[0], w / a.shape[1]
    sig = (_antialias_sigma(fy), _antialias_sigma(fx), 0)
    if sig[0] > 0 or sig[1] > 0:
        a = ndi.gaussian_filter(a, sig, mode="nearest")
    out = _bilinear(a, _coords(0, h, 1 / fy), _coords(0, w, 1 / fx))
    return out[..., 0] if squeeze else out


def _nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes to ``shape`` (pixel centres aligned)."""
    h, w = array.shape[-2:]
    ys = np.clip(np.floor((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), 0, h - 1)
    xs = np.clip(np.floor((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), 0, w - 1)
    return np.ascontiguousarray(array[..., ys, :][..., xs])


def _linear(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased bilinear resize of the last two axes to ``shape``."""
    h, w = array.shape[-2:]
    fy, fx = shape[0] / h, shape[1] / w
    lead = array.shape[:-2]
    flat = np.moveaxis(array.reshape((-1, h, w)).astype(np.float32), 0, -1)
    sig = (_antialias_sigma(fy), _antialias_sigma(fx), 0)
    if sig[0] > 0 or sig[1] > 0:
        flat = ndi.gaussian_filter(flat, sig, mode="nearest")
    out = _bilinear(flat, _coords(0, shape[0], 1 / fy), _coords(0, shape[1], 1 / fx))
    return np.ascontiguousarray(np.moveaxis(out, -1, 0).reshape((*lead, *shape)))


def resample_to(value: Any, grid: tuple[int, int], shape: tuple[int, int]) -> Any:
    """Bring one output from the model grid ``grid`` back to the image grid ``shape``.

    Arrays whose last two axes are ``grid`` are resized: integer and boolean arrays (labels,
    instance ids, codebook indices) by nearest neighbour, floats bilinearly (probabilities stay
    summing to 1: a convex combination of distributions is one). Dicts are walked; anything else
    is returned unchanged.
    """
    if isinstance(value, dict):
        return {k: resample_to(v, grid, shape) for k, v in value.items()}
    if not isinstance(value, np.ndarray) or value.ndim < 2 or tuple(value.shape[-2:]) != grid:
        return value
    if value.dtype.kind in "biu":
        return _nearest(value, shape)
    return _linear(value, shape).astype(value.dtype, copy=False)
