"""Tile grids and blending windows for seamless inference on images of any size.

Along each axis of length ``L`` the grid uses ``n = ceil((L - o) / (T - o))`` tiles of one size
``t <= T`` (a multiple of the network's divisor) spread evenly from 0 to ``L - t``, so every pair of
neighbours overlaps by at least ``o`` pixels while no pixel is computed more often than needed:
for a 2048 px side, ``T = 1024`` and ``o = 48`` give three 720 px tiles (5 % more pixels than
the image) instead of 1024 px tiles clamped at the border (50 % more).

Each tile is weighted by a separable window that is 1 in its interior and falls smoothly (a raised
cosine) to near 0 across the overlap with a neighbour, but stays 1 on sides that touch the image
border. Blended outputs are ``sum(w * y) / sum(w)``, which removes seams: a pixel near a tile edge
takes its value mostly from the neighbour in whose interior it lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Defaults: large tiles with a modest overlap; the even tile spacing keeps the extra pixels at
#: ~5-12 % for common sizes (see docs/segment.md for the measurement). Kept here, in a module
#: without torch, so that the CLI can show them in ``--help`` without importing torch.
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 48


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis: start offsets, common tile length, and padded length."""

    starts: tuple[int, ...]
    size: int
    padded: int

    @property
    def n(self) -> int:
        return len(self.starts)


def round_up(value: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value``."""
    return int(math.ceil(value / divisor) * divisor)


def axis_tiles(length: int, tile: int, overlap: int, divisor: int) -> AxisTiles:
    """Plan tiles along one axis of ``length`` pixels.

    Parameters
    ----------
    length : int
        Image length along the axis (>= 1).
    tile : int
        Largest tile length allowed (rounded down to a multiple of ``divisor``).
    overlap : int
        Minimum overlap between neighbouring tiles.
    divisor : int
        Tile lengths must be multiples of this (the network's downsampling factor).

    Returns
    -------
    AxisTiles
        If ``length <= tile`` a single tile of ``round_up(length, divisor)`` that may extend past
        the image (``padded > length``: the caller pads); otherwise tiles inside the image.
    """
    tile = max(divisor, (tile // divisor) * divisor)
    overlap = max(0, min(overlap, tile // 2))
    if length <= tile:
        size = round_up(length, divisor)
        return AxisTiles(starts=(0,), size=size, padded=size)
    n = math.ceil((length - overlap) / (tile - overlap))
    size = round_up(math.ceil((length + (n - 1) * overlap) / n), divisor)
    size = min(size, tile)
    while (n - 1) * (size - overlap) + size < length:  # guard rounding: add a tile if short
        n += 1
    last = length - size
    starts = tuple(int(round(i * last / (n - 1))) for i in range(n)) if n > 1 else (0,)
    return AxisTiles(starts=starts, size=size, padded=length)


def axis_window(tiles: AxisTiles, index: int, length: int) -> np.ndarray:
    """1-D blending weights of tile ``index`` (float32, shape ``(tiles.size,)``).

    Raised-cosine ramps over the real overlap with each neighbour; 1 on border sides. Weights stay
    strictly positive so every pixel has a defined blend.
    """
    w = np.ones(tiles.size, dtype=np.float32)
    start = tiles.starts[index]
    if index > 0:
        prev_end = tiles.starts[index - 1] + tiles.size
        ov = prev_end - start
        if ov > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ov) + 0.5) / ov)
            w[:ov] = np.minimum(w[:ov], ramp)
    if index < tiles.n - 1:
        next_start = tiles.starts[index + 1]
        ov = start + tiles.size - next_start
        if ov > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ov) + 0.5) / ov)
            w[tiles.size - ov :] = np.minimum(w[tiles.size - ov :], ramp[::-1])
    return np.maximum(w, 1e-3)


@dataclass(frozen=True)
class TileGrid:
    """A 2-D grid of equally sized tiles covering an ``height x width`` image."""

    height: int
    width: int
    rows: AxisTiles
    cols: AxisTiles

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows.padded, self.cols.padded

    def __len__(self) -> int:
        return self.rows.n * self.cols.n

    def tiles(self) -> list[tuple[int, int]]:
        """``(y0, x0)`` of every tile, row-major."""
        return [(y, x) for y in self.rows.starts for x in self.cols.starts]

    def window(self, y0: int, x0: int) -> np.ndarray:
        """2-D blending weights ``(th, tw)`` of the tile starting at ``(y0, x0)``."""
        wy = axis_window(self.rows, self.rows.starts.index(y0), self.height)
        wx = axis_window(self.cols, self.cols.starts.index(x0), self.width)
        return np.outer(wy, wx)

    @property
    def pixels_computed(self) -> int:
        """Pixels the network sees in total (the overlap's cost = this / image pixels)."""
        return len(self) * self.rows.size * self.cols.size


def plan_tiles(height: int, width: int, tile: int, overlap: int, divisor: int) -> TileGrid:
    """Plan the tile grid for an image (see the module docstring)."""
    return TileGrid(
        height=height,
        width=width,
        rows=axis_tiles(height, tile, overlap, divisor),
        cols=axis_tiles(width, tile, overlap, divisor),
    )
