"""Instances at slide scale: each nucleus exactly once, whole, with an id unique over the slide.

Every block computes instances on its window (block + margin). Stitching then follows one rule.

Ownership rule
--------------
An instance found in block ``B``'s window is a *candidate* of ``B`` when

1. it does not touch the window's edge (unless that edge is the slide's border): touching
   means it may be cut, and the block that sees it whole will have it; and
2. its centroid lies in ``B``'s rectangle grown by :data:`TOLERANCE` pixels.

Two windows segment a nucleus on a block border from slightly different context, so their
centroids can fall on different sides of the border; the tolerance makes both blocks keep it
(never neither). :func:`resolve_duplicates` then finds candidates of different blocks that
overlap by at least :data:`SAME_OBJECT` of the smaller one (the same nucleus) and keeps the one
of highest priority: centroid inside its own block's rectangle first (the true owner), then the
lower block id, then the lower local id. The priority is a total order, so every pair is decided
the same way wherever it is looked at, and every nucleus is kept exactly once.

Assumption: every object is smaller than the margin (it then lies wholly inside the window of
the block owning its centroid, so it is never cut); the default margin is about twice the
largest nucleus at the model's scale. Larger objects may be cut at a window edge.

Ids: the survivors are numbered 1..N in (block id, local id) order, so ids are unique and
consecutive over the slide. :func:`compose_block` writes a block's rectangle from its own
candidates and its eight neighbours' (where two kept instances claim a pixel, the first written
wins: the block's own, then the neighbours in id order).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dgseg.core.wsi.plan import Block, SlidePlan

__all__ = [
    "SAME_OBJECT",
    "TOLERANCE",
    "Piece",
    "compose_block",
    "load_piece",
    "own_instances",
    "piece_bytes",
    "resolve_duplicates",
]

#: Pixels a candidate's centroid may lie outside its block (see the module docstring).
TOLERANCE = 8
#: Two candidates overlapping by this share of the smaller one are one object.
SAME_OBJECT = 0.5


@dataclass
class Piece:
    """A block's candidate instances.

    Attributes
    ----------
    block : int
    origin : tuple of int
        Slide coordinates ``(y, x)`` of ``labels[0, 0]``.
    labels : np.ndarray
        ``(h, w)`` int32 local ids ``1..n`` (0 elsewhere), cropped to the candidates' extent.
    centroids : np.ndarray
        ``(n, 2)`` float64 slide coordinates of each local id ``1..n``.
    bboxes : np.ndarray
        ``(n, 4)`` int64 slide ``(y0, x0, y1, x1)``.
    areas : np.ndarray
        ``(n,)`` int64 pixels.
    own : np.ndarray
        ``(n,)`` bool: the centroid lies in the block's own rectangle.
    """

    block: int
    origin: tuple[int, int]
    labels: np.ndarray
    centroids: np.ndarray
    bboxes: np.ndarray
    areas: np.ndarray
    own: np.ndarray

    @property
    def n(self) -> int:
        return int(len(self.areas))


def own_instances(instances: np.ndarray, window: tuple[int, int, int, int], block: Block,
                  shape: tuple[int, int], tolerance: int = TOLERANCE) -> Piece:
    """The candidates of ``block`` among the instances of its window (the ownership rule).

    Parameters
    ----------
    instances : np.ndarray
        ``(h, w)`` instance ids on the window (0 = background).
    window : tuple of int
        ``(y0, x0, y1, x1)`` of the window on the slide.
    block : Block
    shape : tuple of int
        The slide's level-0 ``(height, width)``.
    tolerance : int
        See :data:`TOLERANCE`.
    """
    from scipy import ndimage as ndi

    wy0, wx0, wy1, wx1 = window
    lab = np.asarray(instances)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    empty = Piece(block.id, (block.y0, block.x0), np.zeros((0, 0), np.int32),
                  np.zeros((0, 2)), np.zeros((0, 4), np.int64), np.zeros(0, np.int64),
                  np.zeros(0, bool))
    if ids.size == 0:
        return empty
    # touching a window edge that is not the slide's border: maybe cut, not ours
    edges = []
    if wy0 > 0:
        edges.append(lab[0])
    if wy1 < shape[0]:
        edges.append(lab[-1])
    if wx0 > 0:
        edges.append(lab[:, 0])
    if wx1 < shape[1]:
        edges.append(lab[:, -1])
    cut = np.unique(np.concatenate(edges)) if edges else np.zeros(0, lab.dtype)
    ids = np.setdiff1d(ids, cut)
    if ids.size == 0:
        return empty
    cents = np.asarray(ndi.center_of_mass(np.ones(lab.shape, np.uint8), lab, ids), float)
    cents = cents.reshape(-1, 2) + np.array([wy0, wx0], float)
    cy, cx = cents[:, 0], cents[:, 1]
    keep = ((cy >= block.y0 - tolerance) & (cy < block.y1 + tolerance)
            & (cx >= block.x0 - tolerance) & (cx < block.x1 + tolerance))
    ids, cents = ids[keep], cents[keep]
    if ids.size == 0:
        return empty
    own = ((cents[:, 0] >= block.y0) & (cents[:, 0] < block.y1)
           & (cents[:, 1] >= block.x0) & (cents[:, 1] < block.x1))
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    local = lut[lab]
    slices = ndi.find_objects(local)
    bboxes = np.array([[s[0].start + wy0, s[1].start + wx0, s[0].stop + wy0, s[1].stop + wx0]
                       for s in slices], np.int64)
    areas = np.bincount(local.ravel(), minlength=ids.size + 1)[1:].astype(np.int64)
    y0, x0 = bboxes[:, 0].min(), bboxes[:, 1].min()
    y1, x1 = bboxes[:, 2].max(), bboxes[:, 3].max()
    crop = np.ascontiguousarray(local[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0])
    return Piece(block.id, (int(y0), int(x0)), crop, cents, bboxes, areas, own)


def piece_bytes(piece: Piece) -> bytes:
    """A piece as a compressed ``.npz`` document."""
    buf = io.BytesIO()
    np.savez_compressed(buf, block=np.int64(piece.block), origin=np.asarray(piece.origin),
                        labels=piece.labels, centroids=piece.centroids, bboxes=piece.bboxes,
                        areas=piece.areas, own=piece.own)
    return buf.getvalue()


def load_piece(path: str | Path, with_labels: bool = True) -> Piece:
    """Read a piece written from :func:`piece_bytes` (``with_labels=False``: summaries only)."""
    with np.load(path, allow_pickle=False) as z:
        labels = z["labels"] if with_labels else np.zeros((0, 0), np.int32)
        return Piece(int(z["block"]), tuple(int(v) for v in z["origin"]), labels,
                     z["centroids"], z["bboxes"], z["areas"], z["own"].astype(bool))


def neighbours(plan: SlidePlan, block_id: int) -> list[int]:
    """Ids of the (up to eight) blocks around ``block_id``."""
    rows, cols = plan.grid_shape()
    r, c = divmod(block_id, cols)
    out = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols:
                out.append((r + dr) * cols + c + dc)
    return out


class PieceCache:
    """The last few pieces read (composing row by row reuses most of them)."""

    def __init__(self, plan: SlidePlan, size: int = 12) -> None:
        from napari_dgseg.core.wsi.store import piece_path

        self._path = lambda i: piece_path(plan, i)
        self._size = size
        self._items: OrderedDict[int, Piece | None] = OrderedDict()

    def get(self, block_id: int) -> Piece | None:
        if block_id in self._items:
            self._items.move_to_end(block_id)
            return self._items[block_id]
        p = self._path(block_id)
        piece = load_piece(p) if p.is_file() else None
        self._items[block_id] = piece
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return piece


def _priority(piece: Piece, local: int) -> tuple[int, int, int]:
    return (int(piece.own[local - 1]), -piece.block, -local)


def _pair_overlaps(a: Piece, b: Piece) -> list[tuple[int, int, int]]:
    """``(local_a, local_b, pixels)`` for every pair of a's and b's candidates that overlap."""
    ay0, ax0 = a.origin
    by0, bx0 = b.origin
    y0, x0 = max(ay0, by0), max(ax0, bx0)
    y1 = min(ay0 + a.labels.shape[0], by0 + b.labels.shape[0])
    x1 = min(ax0 + a.labels.shape[1], bx0 + b.labels.shape[1])
    if y1 <= y0 or x1 <= x0:
        return []
    la = a.labels[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0].astype(np.int64).ravel()
    lb = b.labels[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0].astype(np.int64).ravel()
    both = (la > 0) & (lb > 0)
    if not both.any():
        return []
    code = la[both] * (int(lb.max()) + 1) + lb[both]
    pairs, counts = np.unique(code, return_counts=True)
    base = int(lb.max()) + 1
    return [(int(p // base), int(p % base), int(n)) for p, n in zip(pairs, counts, strict=True)]


def resolve_duplicates(plan: SlidePlan, blocks: list[int]) -> dict[int, np.ndarray]:
    """Drop duplicate candidates and number the survivors over the slide.

    Parameters
    ----------
    plan : SlidePlan
    blocks : list of int
        Blocks that have a piece.

    Returns
    -------
    dict
        Block id -> int32 lookup table ``local id -> slide id`` (0: dropped duplicate).
    """
    cache = PieceCache(plan)
    have = set(blocks)
    dropped: dict[int, set[int]] = {i: set() for i in blocks}
    for a_id in sorted(blocks):
        a = cache.get(a_id)
        if a is None or a.n == 0:
            continue
        for b_id in neighbours(plan, a_id):
            if b_id <= a_id or b_id not in have:
                continue
            b = cache.get(b_id)
            if b is None or b.n == 0:
                continue
            for la, lb, pixels in _pair_overlaps(a, b):
                if pixels < SAME_OBJECT * min(a.areas[la - 1], b.areas[lb - 1]):
                    continue
                if _priority(a, la) > _priority(b, lb):
                    dropped[b_id].add(lb)
                else:
                    dropped[a_id].add(la)
    luts: dict[int, np.ndarray] = {}
    next_id = 1
    for i in sorted(blocks):
        p = cache.get(i)
        n = 0 if p is None else p.n
        lut = np.zeros(n + 1, np.int32)
        for local in range(1, n + 1):
            if local not in dropped[i]:
                lut[local] = next_id
                next_id += 1
        luts[i] = lut
    return luts


def compose_block(plan: SlidePlan, block_id: int, luts: dict[int, np.ndarray],
                  cache: PieceCache) -> np.ndarray:
    """The final instance ids of one block's rectangle (see the module docstring)."""
    b = plan.block(block_id)
    out = np.zeros((b.y1 - b.y0, b.x1 - b.x0), np.int32)
    for i in [block_id, *neighbours(plan, block_id)]:
        if i not in luts:
            continue
        piece = cache.get(i)
        if piece is None or piece.n == 0:
            continue
        py0, px0 = piece.origin
        y0, x0 = max(b.y0, py0), max(b.x0, px0)
        y1 = min(b.y1, py0 + piece.labels.shape[0])
        x1 = min(b.x1, px0 + piece.labels.shape[1])
        if y1 <= y0 or x1 <= x0:
            continue
        ids = luts[i][piece.labels[y0 - py0:y1 - py0, x0 - px0:x1 - px0]]
        target = out[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
        free = (target == 0) & (ids > 0)
        target[free] = ids[free]
    return out
