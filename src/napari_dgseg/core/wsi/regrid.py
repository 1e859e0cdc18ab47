"""A window of a slide on the slide's own model grid, and its outputs back on level 0.

When a model works at another scale than the slide (:mod:`napari_dgseg.core.scale_inference`),
the in-memory path resamples the *whole image* to one model grid of
``round(H * f) x round(W * f)`` pixels and brings the outputs back from it. Resampling each
window by itself would put its model pixels at a slightly different phase (the factor of a
window, ``round(h * f) / h``, is not the slide's), so nuclei would come out shifted by a fraction
of a pixel from block to block. Here a window is instead a *crop of the slide's model grid*:

* :func:`model_window` picks the model-grid rows and columns covering a level-0 window (starting
  on a multiple of :data:`~napari_dgseg.core.wsi.plan.ALIGN`, the networks' downsampling grid);
* :class:`GridWindow` reads them exactly as the in-memory
  :class:`~napari_dgseg.core.resample.ResampledImage` of the whole slide would (same source
  pixels, same coordinates), from the level-0 pixels of the window plus a small border;
* :func:`back_to_window` samples the outputs at the level-0 window's pixels with the
  coordinates of :func:`~napari_dgseg.core.resample.resample_to` on the whole slide (ids by
  nearest neighbour, floats bilinearly, semantic labels as the argmax of the probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.imageprep import ImageAdapter
from napari_dgseg.core.resample import ResampledImage, _antialias_sigma, _bilinear
from napari_dgseg.core.wsi.plan import ALIGN

__all__ = ["GridWindow", "back_to_window", "model_window", "source_border"]


def source_border(factor: float) -> int:
    """Level-0 pixels read beyond a window so the resampling sees what it would on the slide."""
    return int(math.ceil(4 * _antialias_sigma(factor))) + 4 + int(math.ceil(1.0 / factor))


@dataclass(frozen=True)
class LevelZeroWindow(ImageAdapter):
    """Level-0 pixels of a window (plus a border) answering reads in slide coordinates.

    ``height``/``width`` are the slide's; ``image`` holds rows ``oy..`` and columns ``ox..``.
    """

    oy: int = 0
    ox: int = 0

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = self.image.shape[:2]
        if y0 < self.oy or x0 < self.ox or y1 > self.oy + h or x1 > self.ox + w:
            raise ValueError(f"region {(y0, y1, x0, x1)} is outside the window read "
                             f"{(self.oy, self.oy + h, self.ox, self.ox + w)}")
        return self.to_rgb_float(self.image[y0 - self.oy:y1 - self.oy, x0 - self.ox:x1 - self.ox])


@dataclass(frozen=True)
class GridWindow(ImageAdapter):
    """Rows ``j0..`` and columns ``i0..`` of the slide's model grid, as an image adapter."""

    grid: ResampledImage | None = None
    j0: int = 0
    i0: int = 0

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        assert self.grid is not None
        return self.grid.region(self.j0 + y0, self.j0 + y1, self.i0 + x0, self.i0 + x1)


def model_window(window: tuple[int, int, int, int], shape: tuple[int, int],
                 factor: float) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The model-grid rectangle ``(j0, i0, j1, i1)`` covering a level-0 window, and the grid's
    shape ``(G_h, G_w)`` for the slide ``shape`` resized by ``factor``."""
    from napari_dgseg.core.resample import resampled_shape

    gh, gw = resampled_shape(shape[0], shape[1], factor)
    fy, fx = gh / shape[0], gw / shape[1]
    y0, x0, y1, x1 = window
    j0 = int(math.floor(y0 * fy)) // ALIGN * ALIGN
    i0 = int(math.floor(x0 * fx)) // ALIGN * ALIGN
    j1 = min(gh, int(math.ceil(y1 * fy)) + 1)
    i1 = min(gw, int(math.ceil(x1 * fx)) + 1)
    return (j0, i0, j1, i1), (gh, gw)


def grid_window(level0: Any, adapter: ImageAdapter, window: tuple[int, int, int, int],
                factor: float) -> tuple[GridWindow, tuple[int, int, int, int], tuple[int, int]]:
    """Read what the model-grid crop of ``window`` needs from ``level0`` and wrap it.

    Returns
    -------
    GridWindow, (j0, i0, j1, i1), (G_h, G_w)
    """
    h, w = adapter.height, adapter.width
    (j0, i0, j1, i1), (gh, gw) = model_window(window, (h, w), factor)
    fy, fx = gh / h, gw / w
    border = source_border(min(fy, fx))
    sy0 = max(0, int(math.floor(j0 / fy)) - border)
    sx0 = max(0, int(math.floor(i0 / fx)) - border)
    sy1 = min(h, int(math.ceil(j1 / fy)) + border)
    sx1 = min(w, int(math.ceil(i1 / fx)) + border)
    pixels = level0[sy0:sy1, sx0:sx1]
    pixels = np.asarray(pixels.compute() if hasattr(pixels, "compute") else pixels)
    src = LevelZeroWindow(image=pixels, height=h, width=w, channels=adapter.channels,
                          low=adapter.low, high=adapter.high, oy=sy0, ox=sx0)
    grid = ResampledImage.of(src, factor)
    win = GridWindow(image=pixels, height=j1 - j0, width=i1 - i0, channels=adapter.channels,
                     low=adapter.low, high=adapter.high, grid=grid, j0=j0, i0=i0)
    return win, (j0, i0, j1, i1), (gh, gw)


def _coords(start: int, stop: int, grid: int, length: int) -> np.ndarray:
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * grid / length - 0.5


def back_to_window(fields: dict[str, Any], crop: tuple[int, int, int, int],
                   grid: tuple[int, int], shape: tuple[int, int],
                   window: tuple[int, int, int, int], semantic: bool) -> dict[str, Any]:
    """Outputs on a model-grid crop sampled at a level-0 window's pixels (module docstring).

    Parameters
    ----------
    fields : dict
        Outputs whose last two axes are the crop ``(j1 - j0, i1 - i0)``.
    crop : tuple of int
        ``(j0, i0, j1, i1)`` on the model grid.
    grid, shape : tuple of int
        The whole model grid and the slide's level-0 shape.
    window : tuple of int
        ``(y0, x0, y1, x1)`` on level 0.
    semantic : bool
        Semantic labels become the argmax of the resampled probabilities.
    """
    j0, i0, j1, i1 = crop
    y0, x0, y1, x1 = window
    ch, cw = j1 - j0, i1 - i0
    gh, gw = grid
    h, w = shape
    ny = np.clip(np.floor((np.arange(y0, y1) + 0.5) * gh / h).astype(np.intp), 0, gh - 1) - j0
    nx = np.clip(np.floor((np.arange(x0, x1) + 0.5) * gw / w).astype(np.intp), 0, gw - 1) - i0
    ny, nx = np.clip(ny, 0, ch - 1), np.clip(nx, 0, cw - 1)
    ly = np.clip(_coords(y0, y1, gh, h), 0.0, gh - 1.0) - j0
    lx = np.clip(_coords(x0, x1, gw, w), 0.0, gw - 1.0) - i0
    sig = (_antialias_sigma(h / gh), _antialias_sigma(w / gw), 0)

    def one(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        if not isinstance(value, np.ndarray) or value.ndim < 2 or value.shape[-2:] != (ch, cw):
            return value
        if value.dtype.kind in "biu":
            return np.ascontiguousarray(value[..., ny, :][..., nx])
        lead = value.shape[:-2]
        flat = np.moveaxis(value.reshape((-1, ch, cw)).astype(np.float32), 0, -1)
        if sig[0] > 0 or sig[1] > 0:
            flat = ndi.gaussian_filter(flat, sig, mode="nearest")
        out = _bilinear(flat, ly, lx)
        return np.ascontiguousarray(np.moveaxis(out, -1, 0).reshape((*lead, y1 - y0, x1 - x0))
                                    ).astype(value.dtype, copy=False)

    out = {k: one(v) for k, v in fields.items()}
    probs = out.get("probabilities")
    if semantic and isinstance(probs, np.ndarray) and probs.ndim == 3:
        out["labels"] = probs.argmax(axis=0).astype(np.int32)
    return out
