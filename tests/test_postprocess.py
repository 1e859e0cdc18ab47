"""``remove_small`` and ``semantic_to_instances`` on hand-made arrays with exact expected outputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.postprocess import remove_small, semantic_to_instances


def test_remove_small_drops_instances_below_the_size_and_keeps_the_rest():
    labels = np.array(
        [
            [1, 1, 1, 0, 7],
            [0, 0, 0, 0, 7],
            [3, 3, 0, 2, 0],
            [3, 3, 0, 2, 2],
        ],
        dtype=np.int32,
    )
    out = remove_small(labels, 3)  # sizes: 1 -> 3, 2 -> 3, 3 -> 4, 7 -> 2
    want = labels.copy()
    want[want == 7] = 0
    np.testing.assert_array_equal(out, want)
    assert out.dtype == labels.dtype
    assert labels[0, 4] == 7  # the input is not modified
    # exactly at the size: kept; one above: removed too
    np.testing.assert_array_equal(remove_small(labels, 4), np.where(labels == 3, 3, 0))
    np.testing.assert_array_equal(remove_small(labels, 5), np.zeros_like(labels))


def test_remove_small_never_touches_background_even_when_it_is_small():
    labels = np.array([[5, 5, 5], [5, 0, 5], [5, 5, 5]], dtype=np.uint16)
    out = remove_small(labels, 2)  # background has 1 pixel, instance 5 has 8
    np.testing.assert_array_equal(out, labels)
    assert out.dtype == np.uint16


@pytest.mark.parametrize("min_size", [1, 0, -3])
def test_remove_small_with_size_one_or_less_is_a_no_op(min_size):
    labels = np.array([[0, 1], [2, 0]], dtype=np.int32)
    assert remove_small(labels, min_size) is labels


def test_remove_small_on_a_binary_mask_treats_the_whole_foreground_as_one_object():
    """Behaviour as implemented: a 0/1 mask is one object (the docstring's "connected components of
    a binary mask" is not what happens; see the report of issue 20)."""
    mask = np.array([[1, 0, 0, 1, 1], [0, 0, 0, 1, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(remove_small(mask, 5), mask)  # 5 foreground pixels in all
    np.testing.assert_array_equal(remove_small(mask, 6), np.zeros_like(mask))


def test_semantic_to_instances_8_connected_relabelled_contiguously():
    labels = np.array(
        [
            [1, 0, 0, 0, 2, 2],
            [0, 1, 0, 0, 2, 2],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 1],
            [1, 1, 0, 2, 0, 0],
        ],
        dtype=np.int32,
    )
    # components (8-connected, raster order): diagonal pair (2 px), the 2 x 2 block of class 2
    # (4 px), the 2 x 2 block of class 1 (4 px), the single 1 (1 px), the single 2 (1 px)
    want_all = np.array(
        [
            [1, 0, 0, 0, 2, 2],
            [0, 1, 0, 0, 2, 2],
            [0, 0, 0, 0, 0, 0],
            [3, 3, 0, 0, 0, 4],
            [3, 3, 0, 5, 0, 0],
        ],
        dtype=np.int32,
    )
    out = semantic_to_instances(labels, min_size=1)
    np.testing.assert_array_equal(out, want_all)
    assert out.dtype == np.int32
    # min_size 2 removes both single pixels; ids stay 1..n with no gaps
    want2 = np.where(want_all >= 4, 0, want_all)
    np.testing.assert_array_equal(semantic_to_instances(labels, min_size=2), want2)
    # min_size 3 also removes the diagonal pair: the remaining two become 1 and 2
    want3 = np.zeros_like(want_all)
    want3[want_all == 2] = 1
    want3[want_all == 3] = 2
    np.testing.assert_array_equal(semantic_to_instances(labels, min_size=3), want3)
    # default min_size is 10: every component here is smaller
    np.testing.assert_array_equal(semantic_to_instances(labels), np.zeros_like(labels))


def test_semantic_to_instances_default_minimum_is_10_pixels():
    labels = np.zeros((6, 12), np.int32)
    labels[0:2, 0:5] = 1  # 10 pixels: kept
    labels[4:6, 0:4] = 1  # 8 pixels
    labels[5, 4] = 1  # ... + 1 = 9 pixels: removed
    labels[3:6, 8:12] = 1  # 12 pixels: kept, becomes 2
    want = np.zeros_like(labels)
    want[0:2, 0:5] = 1
    want[3:6, 8:12] = 2
    np.testing.assert_array_equal(semantic_to_instances(labels), want)


def test_semantic_to_instances_of_one_class_only():
    labels = np.array(
        [
            [1, 1, 2, 2],
            [1, 1, 2, 2],
            [0, 0, 0, 0],
            [2, 0, 1, 1],
        ],
        dtype=np.uint8,
    )
    # class 1 and class 2 touch, so "any > 0" merges them; foreground=2 keeps class 2 apart
    np.testing.assert_array_equal(
        semantic_to_instances(labels, min_size=1),
        np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [2, 0, 3, 3]]),
    )
    np.testing.assert_array_equal(
        semantic_to_instances(labels, foreground=2, min_size=1),
        np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [2, 0, 0, 0]]),
    )
    np.testing.assert_array_equal(
        semantic_to_instances(labels, foreground=1, min_size=2),
        np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 2]]),
    )


def test_semantic_to_instances_of_an_empty_or_bool_mask():
    empty = np.zeros((4, 5), np.int32)
    out = semantic_to_instances(empty, min_size=1)
    np.testing.assert_array_equal(out, empty)
    assert out.dtype == np.int32
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:3] = True
    mask[4:6, 4:6] = True
    out = semantic_to_instances(mask, min_size=4)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert (out[1:3, 1:3] == 1).all() and (out[4:6, 4:6] == 2).all()
