"""Tile grids and blending windows against independent computations.

The windows are checked value by value against a separate per-pixel formula of the raised cosine
(written as ``sin^2``, not with the module's array slicing), and the raw weights of overlapping
tiles must add up to 1: exactly (1e-6) wherever the 1e-3 positivity floor is not active, and within
that floor everywhere else, for grids in which no pixel lies in three tiles.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_dgseg.core.tiling import axis_tiles, axis_window, plan_tiles, round_up

FLOOR = 1e-3


def expected_weight(starts: tuple[int, ...], size: int, index: int, p: int) -> float:
    """Weight of tile ``index`` at absolute pixel ``p``: an independent per-pixel formula.

    1 inside the tile, ``sin^2`` ramps (= raised cosine) across the real overlap with each
    neighbour, the smaller of the two where both ramps reach, never below ``FLOOR``.
    """
    s = starts[index]
    assert s <= p < s + size
    w = 1.0
    if index > 0:
        ov = starts[index - 1] + size - s
        if ov > 0 and p < s + ov:
            w = min(w, math.sin(math.pi * (p - s + 0.5) / (2 * ov)) ** 2)
    if index < len(starts) - 1:
        nxt = starts[index + 1]
        ov = s + size - nxt
        if ov > 0 and p >= nxt:
            w = min(w, math.sin(math.pi * (s + size - p - 0.5) / (2 * ov)) ** 2)
    return max(w, FLOOR)


CONFIGS = [
    (length, tile, overlap, divisor)
    for length in (1, 7, 8, 16, 100, 255, 256, 257, 1000, 2048, 3001)
    for tile, overlap, divisor in ((256, 32, 16), (512, 64, 16), (1024, 48, 16), (64, 0, 16),
                                   (64, 8, 8), (128, 32, 32), (100, 10, 1))
]


@pytest.mark.parametrize("length,tile,overlap,divisor", CONFIGS)
def test_tiles_cover_with_overlap(length, tile, overlap, divisor):
    t = axis_tiles(length, tile, overlap, divisor)
    cap = max(divisor, tile // divisor * divisor)
    assert t.size % divisor == 0
    assert t.size <= cap or t.n == 1
    assert t.starts[0] == 0
    assert list(t.starts) == sorted(set(t.starts))
    covered = np.zeros(max(length, t.padded), bool)
    for s in t.starts:
        covered[s : s + t.size] = True
    assert covered[:length].all()
    if length <= cap:  # one tile, padded up to the divisor; the caller pads the image
        assert t.starts == (0,)
        assert t.size == t.padded == round_up(length, divisor) >= length
        assert t.padded - length < divisor
    else:
        assert t.padded == length
        assert t.starts[-1] + t.size == length  # last tile ends exactly at the image border
        gaps = np.diff(t.starts)
        assert (t.size - gaps >= min(overlap, cap // 2)).all()  # neighbours overlap enough
        assert gaps.max() - gaps.min() <= 1  # spread evenly
        ov = min(overlap, cap // 2)
        assert t.n == math.ceil((length - ov) / (cap - ov))  # no more tiles than needed


def test_documented_example_three_720_px_tiles():
    t = axis_tiles(2048, 1024, 48, 16)
    assert t.starts == (0, 664, 1328) and t.size == 720 and t.padded == 2048
    g = plan_tiles(2048, 2048, 1024, 48, 16)
    assert g.pixels_computed == 9 * 720 * 720
    assert g.pixels_computed / (2048 * 2048) < 1.15


def test_overlap_is_capped_at_half_a_tile_and_tile_at_divisor():
    # an overlap larger than half the tile is reduced to half of it
    t = axis_tiles(1000, 256, 300, 16)
    assert t == axis_tiles(1000, 256, 128, 16)
    assert min(t.size - g for g in np.diff(t.starts)) >= 128
    # ... but not less: an overlap of 100 (between a third and a half of 256) is kept
    t = axis_tiles(1000, 256, 100, 16)
    assert min(t.size - g for g in np.diff(t.starts)) >= 100
    # half of an odd tile is rounded down (an integer overlap)
    assert axis_tiles(1000, 101, 60, 1) == axis_tiles(1000, 101, 50, 1)
    assert all(isinstance(s, int) for s in axis_tiles(1000, 101, 60, 1).starts)
    # a tile smaller than the divisor becomes one divisor long
    t = axis_tiles(100, 10, 0, 16)
    assert t.size == 16 and t.starts[-1] == 100 - 16
    # a tile that is not a multiple of the divisor is rounded down
    assert axis_tiles(1000, 100, 0, 16).size <= 96


def test_round_up():
    assert [round_up(v, 16) for v in (1, 15, 16, 17, 32, 33)] == [16, 16, 16, 32, 32, 48]
    assert round_up(7, 1) == 7


@pytest.mark.parametrize("length,tile,overlap,divisor", CONFIGS + [(122, 64, 8, 32), (98, 64, 32, 8)])
def test_window_values_match_independent_formula(length, tile, overlap, divisor):
    t = axis_tiles(length, tile, overlap, divisor)
    for i, s in enumerate(t.starts):
        w = axis_window(t, i, length)
        assert w.dtype == np.float32 and w.shape == (t.size,)
        want = np.array([expected_weight(t.starts, t.size, i, s + j) for j in range(t.size)])
        np.testing.assert_allclose(w, want, rtol=0, atol=1e-6)


def _coverage_and_sum(t, length):
    total = np.zeros(t.padded)
    cover = np.zeros(t.padded, int)
    for i, s in enumerate(t.starts):
        total[s : s + t.size] += axis_window(t, i, length)
        cover[s : s + t.size] += 1
    return total, cover


@pytest.mark.parametrize("length,tile,overlap,divisor", CONFIGS)
def test_weights_sum_to_one(length, tile, overlap, divisor):
    t = axis_tiles(length, tile, overlap, divisor)
    total, cover = _coverage_and_sum(t, length)
    # pixels of one tile only (interiors, image borders, padding): weight exactly 1
    np.testing.assert_array_equal(total[cover == 1], 1.0)
    # overlaps: the two raised-cosine ramps add up to 1, exactly where no weight hit the floor
    floored = np.zeros(t.padded, bool)
    for i, s in enumerate(t.starts):
        floored[s : s + t.size] |= axis_window(t, i, length) <= FLOOR
    exact = (cover == 2) & ~floored
    np.testing.assert_allclose(total[exact], 1.0, rtol=0, atol=1e-6)
    # ... and at the few floored pixels the sum exceeds 1 by at most the floor
    two = floored & (cover == 2)
    assert np.all(total[two] >= 1.0 - 1e-6) and np.all(total[two] <= 1.0 + FLOOR + 1e-6)
    # a coarse divisor can round tiles up so far that tiles i-1 and i+1 meet (here: 128 px tiles
    # for a 255 px side with divisor 32); there the sum is not 1 (blending divides by it)
    assert (cover == 3).sum() <= 2 * t.n
    assert np.all(np.abs(total[cover == 3] - 1.0) < 0.01)
    if t.n > 1 and t.size - (t.starts[1] - t.starts[0]) > 0:
        assert exact.any()  # the exact check is not vacuous


@pytest.mark.parametrize(
    "h,w,tile,overlap,divisor",
    [(300, 200, 128, 32, 16), (64, 64, 128, 16, 16), (1000, 37, 256, 48, 16), (130, 250, 64, 16, 8),
     (5, 3, 64, 16, 16)],
)
def test_2d_windows_sum_to_one_including_corners(h, w, tile, overlap, divisor):
    g = plan_tiles(h, w, tile, overlap, divisor)
    total = np.zeros(g.padded_shape)
    floored = np.zeros(g.padded_shape, bool)
    th, tw = g.tile_shape
    assert len(g) == len(g.tiles()) == g.rows.n * g.cols.n
    assert g.tiles() == [(y, x) for y in g.rows.starts for x in g.cols.starts]
    for y0, x0 in g.tiles():
        win = g.window(y0, x0)
        assert win.shape == (th, tw)
        want_y = [expected_weight(g.rows.starts, th, g.rows.starts.index(y0), y0 + j) for j in range(th)]
        want_x = [expected_weight(g.cols.starts, tw, g.cols.starts.index(x0), x0 + j) for j in range(tw)]
        np.testing.assert_allclose(win, np.outer(want_y, want_x), rtol=0, atol=1e-6)
        total[y0 : y0 + th, x0 : x0 + tw] += win
        ry = np.array(want_y) <= FLOOR
        rx = np.array(want_x) <= FLOOR
        floored[y0 : y0 + th, x0 : x0 + tw] |= ry[:, None] | rx[None, :]
    np.testing.assert_allclose(total[~floored], 1.0, rtol=0, atol=1e-6)
    assert np.all(np.abs(total - 1.0) <= 2 * FLOOR + 1e-6)
    assert g.padded_shape[0] >= h and g.padded_shape[1] >= w


def test_border_sides_keep_full_weight_and_ramps_are_monotone():
    t = axis_tiles(1000, 256, 32, 16)
    first, last = axis_window(t, 0, 1000), axis_window(t, t.n - 1, 1000)
    assert first[0] == 1.0 and last[-1] == 1.0
    mid = axis_window(t, 1, 1000)
    ov = t.starts[0] + t.size - t.starts[1]
    assert np.all(np.diff(mid[:ov]) > 0) and np.all(np.diff(mid[-ov:]) < 0)
    assert mid[0] < 0.01 and mid[ov - 1] > 0.99 and np.all(mid[ov:-ov] == 1.0)
    # a single tile is all ones
    np.testing.assert_array_equal(axis_window(axis_tiles(50, 256, 32, 16), 0, 50), 1.0)


def test_triple_overlap_grids_still_give_positive_bounded_weights():
    """When rounding to the divisor makes tiles i-1 and i+1 meet, weights are not a partition of
    unity any more (blending divides by their sum), but they stay in (0, 1] and follow the formula."""
    t = axis_tiles(122, 64, 8, 32)
    total, cover = _coverage_and_sum(t, 122)
    assert cover.max() == 3
    assert np.all(total >= 1.0 - 1e-6)
