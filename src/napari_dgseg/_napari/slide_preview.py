"""The result layer of a streamed slide, shown from the start of the run and growing block by block.

The Segment widget adds the slide's Labels layer when Run is pressed, not when the run ends:
napari builds a Labels layer in the GUI thread (layer controls, the vispy visual and its paint
overlays, about 0.1 s of one core, ``benchmarks/gui_stall.py``), and done at the end it froze the
viewer right when the result arrived. At Run that work is spread over several event-loop turns
before the worker starts (:mod:`napari_dgseg._napari.staged_add`). The layer's data is a list of :class:`LiveLevel` objects,
one per level of the output's pyramid (same shapes), which napari reads as any lazy multiscale
array:

* while the blocks run, every level is read from a :class:`SlidePreview`, a coarse in-memory
  picture of the labels (at most :data:`PREVIEW_SIDE` px a side, so its memory does not grow
  with the slide) that the worker paints after each block from what the block wrote: the
  block's labels for a semantic model, its own instances (not yet stitched, ids per block) for an
  instance model. The widget refreshes the layer on each block's progress signal, so the user
  watches the mask grow;
* when the run has finished, :meth:`LiveLevel.attach` points every level at the finished
  OME-Zarr level; the refresh that follows reads the visible tiles of the real result. No
  second layer is built.

The worker side (:func:`preview_executor`) wraps the engine's sequential executor; nothing here
touches Qt or a viewer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["PREVIEW_SIDE", "LiveLevel", "SlidePreview", "live_levels", "preview_executor"]

#: Longer side (pixels) of the in-memory preview of a streamed slide's labels.
PREVIEW_SIDE = 1024


class SlidePreview:
    """A coarse picture of a slide's labels (level-0 pixel ``j * factor`` at preview pixel ``j``).

    Parameters
    ----------
    shape : tuple of int
        The slide's level-0 ``(height, width)``.
    side : int, optional
        Longest preview side (default :data:`PREVIEW_SIDE`); the factor is the smallest power of
        two that fits it.
    """

    def __init__(self, shape: tuple[int, int], side: int | None = None) -> None:
        side = PREVIEW_SIDE if side is None else int(side)
        self.shape = (int(shape[0]), int(shape[1]))
        factor = 1
        while max(self.shape) > side * factor:
            factor *= 2
        self.factor = factor
        self.array = np.zeros(((self.shape[0] + factor - 1) // factor,
                               (self.shape[1] + factor - 1) // factor), np.int32)
        self.lock = threading.Lock()
        self.painted: set[int] = set()
        self._next_id = 0  # instance previews: each block's ids after the previous blocks'

    def _grid(self, lo: int, hi: int) -> slice:
        """Preview indices whose level-0 sample ``j * factor`` lies in ``[lo, hi)``."""
        f = self.factor
        return slice(-(-lo // f), -(-hi // f))

    def paint(self, plan: Any, block_id: int) -> None:
        """Copy what block ``block_id`` of ``plan`` wrote into the preview (worker thread).

        Semantic labels are read (strided) from the output's level 0; instance outputs from the
        block's piece (its own instances, renumbered after the blocks painted before). A blank
        (glass) block paints nothing.
        """
        from napari_dgseg.core.wsi.stitch import load_piece
        from napari_dgseg.core.wsi.store import open_array, piece_path

        block = plan.block(block_id)
        if block_id in self.painted or not block.tissue:
            return
        f = self.factor
        rows, cols = self._grid(block.y0, block.y1), self._grid(block.x0, block.x1)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return
        ys = np.arange(rows.start, rows.stop) * f
        xs = np.arange(cols.start, cols.stop) * f
        if plan.instances:
            path = piece_path(plan, block_id)
            if not path.is_file():
                return
            piece = load_piece(path)
            values = np.zeros((ys.size, xs.size), np.int32)
            oy, ox = piece.origin
            h, w = piece.labels.shape
            iy, ix = ys - oy, xs - ox
            ok_y, ok_x = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
            if ok_y.any() and ok_x.any():
                local = piece.labels[np.ix_(iy[ok_y], ix[ok_x])]
                values[np.ix_(ok_y, ok_x)] = np.where(local > 0, local + self._next_id, 0)
            self._next_id += piece.n
        else:
            y0, x0 = int(ys[0]), int(xs[0])
            values = np.asarray(open_array(plan, "labels", mode="r")[
                y0:int(ys[-1]) + 1:f, x0:int(xs[-1]) + 1:f], np.int32)
        with self.lock:
            self.array[rows, cols] = values
            self.painted.add(block_id)

    def read(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The preview at level-0 pixel rows ``rows`` and columns ``cols`` (nearest).

        Evenly spaced indices (a level at or below the preview's resolution, which napari shows
        when zoomed out and refreshes per block in the GUI thread) are read as a strided view
        and copied, several times faster than the fancy indexing the others need.
        """
        r = np.clip(rows // self.factor, 0, self.array.shape[0] - 1)
        c = np.clip(cols // self.factor, 0, self.array.shape[1] - 1)
        rs, cs = _as_slice(r), _as_slice(c)
        with self.lock:
            if rs is not None and cs is not None:
                return self.array[rs, cs].copy()
            return self.array[np.ix_(r, c)]


def _as_slice(index: np.ndarray) -> slice | None:
    """``index`` as an equivalent slice when it is evenly spaced and increasing, else None."""
    if index.size == 0:
        return None
    if index.size == 1:
        return slice(int(index[0]), int(index[0]) + 1)
    step = int(index[1] - index[0])
    if step <= 0 or not np.all(np.diff(index) == step):
        return None
    return slice(int(index[0]), int(index[-1]) + 1, step)


class LiveLevel:
    """One pyramid level of a streamed slide's labels, readable by napari during and after a run.

    Until :meth:`attach`, reads come from the :class:`SlidePreview` (level pixel ``i`` is level-0
    pixel ``i * downsample``, as the output's pyramid samples); after it, from ``source`` (the
    finished OME-Zarr level of the same shape).

    Parameters
    ----------
    preview : SlidePreview
    shape : tuple of int
        This level's ``(height, width)``.
    downsample : int
        Level-0 pixels per pixel of this level (``2 ** level``).
    """

    dtype = np.dtype(np.int32)
    ndim = 2

    def __init__(self, preview: SlidePreview, shape: tuple[int, int], downsample: int) -> None:
        self.preview = preview
        self.shape = (int(shape[0]), int(shape[1]))
        self.downsample = int(downsample)
        self.source: Any = None

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def attach(self, source: Any) -> None:
        """Read from ``source`` (the finished level) from now on."""
        if tuple(source.shape) != self.shape:
            raise ValueError(f"level shape {tuple(source.shape)} is not {self.shape}")
        self.source = source

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.source is not None:
            return np.asarray(self.source[key])
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2 or not all(isinstance(k, (slice, int, np.integer)) for k in key):
            return np.asarray(self)[key]
        axes = [np.arange(n)[k] for k, n in zip(key, self.shape, strict=True)]
        rows, cols = (np.atleast_1d(a) * self.downsample for a in axes)
        out = self.preview.read(rows, cols)
        if np.ndim(axes[0]) == 0:
            out = out[0]
        if np.ndim(axes[1]) == 0:
            out = out[..., 0]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def live_levels(shapes: list[tuple[int, int]], preview: SlidePreview) -> list[LiveLevel]:
    """One :class:`LiveLevel` per pyramid level shape (level ``k`` downsampled ``2 ** k``)."""
    return [LiveLevel(preview, shape, 2 ** k) for k, shape in enumerate(shapes)]


def preview_executor(preview: SlidePreview, model: Any, cancel: Any = None) -> Callable:
    """The engine's sequential executor, painting ``preview`` before each progress report.

    Blocks finished by an earlier run (resume) are painted first.
    """
    from napari_dgseg.core.wsi import sequential_executor

    inner = sequential_executor(model, cancel)

    def execute(plan: Any, block_ids: list[int], progress: Callable[[int, int], Any]) -> None:
        todo = set(block_ids)
        for block in plan.blocks:
            if block.id not in todo:
                preview.paint(plan, block.id)

        def report(done: int, total: int) -> None:
            preview.paint(plan, block_ids[done - 1])
            progress(done, total)

        inner(plan, block_ids, report)

    return execute
