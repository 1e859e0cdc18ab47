"""relabel: threshold and minimum object size re-derive labels from kept probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.relabel import foreground_probability, relabel


def _two_class(fg: np.ndarray) -> np.ndarray:
    fg = fg.astype(np.float32)
    return np.stack([1.0 - fg, fg])


def test_threshold_half_is_argmax_for_two_classes():
    rng = np.random.default_rng(0)
    p = _two_class(rng.random((20, 30)))
    assert np.array_equal(relabel(p, 0.5), p.argmax(axis=0))


def test_higher_threshold_drops_unsure_pixels():
    fg = np.zeros((10, 10), np.float32)
    fg[1:4, 1:4] = 0.9  # sure object
    fg[6:9, 6:9] = 0.6  # unsure object (keratin-like)
    p = _two_class(fg)
    low = relabel(p, 0.5)
    high = relabel(p, 0.7)
    assert low[7, 7] == 1 and high[7, 7] == 0
    assert low[2, 2] == 1 and high[2, 2] == 1
    assert int(high.sum()) == 9


def test_min_size_removes_small_components_only():
    fg = np.zeros((12, 12), np.float32)
    fg[0:5, 0:5] = 0.9  # 25 px
    fg[8, 8] = 0.9  # 1 px speck
    fg[10:12, 10:12] = 0.9  # 4 px
    out = relabel(_two_class(fg), 0.5, min_size=5)
    assert out[2, 2] == 1 and out[8, 8] == 0 and out[11, 11] == 0
    assert int(out.sum()) == 25
    assert int(relabel(_two_class(fg), 0.5, min_size=4).sum()) == 29


def test_multiclass_keeps_most_probable_foreground_class():
    p = np.zeros((3, 2, 2), np.float32)
    p[:, 0, 0] = [0.4, 0.35, 0.25]  # background most probable, foreground 0.6
    p[:, 0, 1] = [0.8, 0.1, 0.1]
    p[:, 1, 0] = [0.1, 0.2, 0.7]
    p[:, 1, 1] = [0.2, 0.7, 0.1]
    out = relabel(p, 0.5)
    assert out.tolist() == [[1, 0], [2, 1]]
    assert relabel(p, 0.65).tolist() == [[0, 0], [2, 1]]
    assert np.allclose(foreground_probability(p), 1.0 - p[0])


def test_instances_are_trimmed_not_resplit():
    inst = np.zeros((8, 8), np.int32)
    inst[0:4, 0:4] = 3
    inst[5:8, 5:8] = 7
    fg = np.where(inst > 0, 0.9, 0.1).astype(np.float32)
    fg[0:4, 0] = 0.55  # the left column of instance 3 is unsure
    out = relabel(_two_class(fg), 0.6, instances=inst)
    assert set(np.unique(out)) == {0, 3, 7}
    assert (out[0:4, 0] == 0).all() and (out[0:4, 1:4] == 3).all()
    out = relabel(_two_class(fg), 0.6, min_size=10, instances=inst)
    assert set(np.unique(out)) == {0, 3}


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.0}, {"threshold": 1.5}, {"min_size": -1}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        relabel(_two_class(np.zeros((2, 2))), **kwargs)
