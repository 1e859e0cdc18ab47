import numpy as np
import pytest

from napari_dgseg.core.tiling import axis_tiles, axis_window, plan_tiles


@pytest.mark.parametrize("length", [1, 7, 16, 100, 255, 256, 257, 1000, 2048, 3001])
@pytest.mark.parametrize("tile,overlap", [(256, 32), (512, 64), (1024, 48), (64, 0)])
def test_tiles_cover_with_overlap(length, tile, overlap):
    t = axis_tiles(length, tile, overlap, 16)
    assert t.size % 16 == 0 and t.size <= max(tile, 16) or t.n == 1
    covered = np.zeros(max(length, t.padded), bool)
    for s in t.starts:
        covered[s : s + t.size] = True
    assert covered[:length].all()
    if t.n > 1:
        assert t.starts[-1] + t.size == length  # last tile ends at the image border
        gaps = np.diff(t.starts)
        assert (t.size - gaps >= overlap).all()  # every neighbour pair overlaps enough
    else:
        assert t.padded >= length


def test_windows_partition_of_unity_shape():
    t = axis_tiles(1000, 256, 32, 16)
    total = np.zeros(1000)
    for i, s in enumerate(t.starts):
        w = axis_window(t, i, 1000)
        assert w.min() > 0 and w.max() <= 1
        total[s : s + t.size] += w
    # raised-cosine ramps of the same overlap sum to ~1 where two tiles meet
    assert np.all(total > 0.5)
    assert np.all(total < 2.0)
    # border sides keep full weight
    assert axis_window(t, 0, 1000)[0] == 1.0
    assert axis_window(t, t.n - 1, 1000)[-1] == 1.0


def test_even_spacing_costs_little():
    g = plan_tiles(2048, 2048, 1024, 48, 16)
    assert g.pixels_computed / (2048 * 2048) < 1.15
