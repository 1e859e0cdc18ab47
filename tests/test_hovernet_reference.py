"""HoVer-Net post-processing against stored reference outputs (tests/data/hovernet_*.npz).

The stored cases (inputs and expected instance labels) are made by
``tests/data/make_hovernet_reference.py``; ``tests/data/README.md`` says how and why they are
trusted. In short: the expected labels come from :func:`reference_instances` below, an
independent step-by-step implementation of the post-processing of Graham et al. 2019,
"HoVer-Net: Simultaneous segmentation and classification of nuclei in multi-tissue histology
images", written without sharing code with :mod:`napari_dgseg.core.families.hovernet.postprocess`, and
the script cross-checks every case against a transcription of the reference code's OpenCV calls
(``cv2.Sobel``, ``cv2.GaussianBlur``, ``cv2.morphologyEx``) when OpenCV is installed. The
``thin_nucleus`` case is small enough to verify by hand.

:func:`reference_instances` is written with 2D correlations over an explicitly padded array
(``numpy.pad(mode="reflect")`` is OpenCV's default ``BORDER_REFLECT_101``), an opening by
sliding-window min/max with OpenCV's border rules (erosion treats outside pixels as set,
dilation as unset), holes filled by labelling the background, and small objects counted with
``numpy.unique``. Steps:

1. ``blob = NP >= 0.5``; connected components (4-connectivity) < 10 px removed;
2. h and v min-max scaled to [0, 1]; 21x21 Sobel of h along x and of v along y; each result
   min-max scaled and inverted (``1 - minmax``);
3. ``overall = max(sobel_h, sobel_v) - (1 - blob)``, clamped at 0;
4. ``dist = -GaussianBlur3x3((1 - overall) * blob)``;
5. ``markers = blob - (overall >= 0.4)`` clamped at 0, holes filled, opened with OpenCV's 5x5
   ellipse, labelled, components < 10 px removed;
6. ``watershed(dist, markers, mask=blob)``.
"""

from __future__ import annotations

from math import comb
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from napari_dgseg.core.families.hovernet.postprocess import (
    HoverPostConfig,
    hovernet_instances,
    sobel_kernels,
)

DATA = Path(__file__).parent / "data"
CASES = (
    "touching_clean", "touching_noisy", "border_noisy", "border_sobel_h", "border_sobel_v",
    "thin_nucleus",
)


# ----------------------------------------------------------------------------- independent implementation
#: OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (5, 5))``, written out by hand.
ELLIPSE = np.array(
    [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], bool
)


def _correlate2d_reflect101(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full 2D correlation with OpenCV's default border (reflect without repeating the edge)."""
    ky, kx = kernel.shape
    padded = np.pad(img.astype(np.float64), ((ky // 2, ky // 2), (kx // 2, kx // 2)), mode="reflect")
    windows = sliding_window_view(padded, (ky, kx))
    return np.einsum("ijkl,kl->ij", windows, kernel)


def sobel_2d(size: int, axis: str) -> np.ndarray:
    """OpenCV's ``Sobel`` kernel of odd ``size`` as a 2D array (derivative along ``axis``)."""
    smooth = np.array([comb(size - 1, k) for k in range(size)], float)
    inner = np.array([comb(size - 3, k) for k in range(size - 2)], float)
    deriv = np.zeros(size)
    deriv[2:] += inner  # (inner * [-1, 0, 1]) written as shifted copies
    deriv[:-2] -= inner
    return np.outer(smooth, deriv) if axis == "x" else np.outer(deriv, smooth)


def _minmax(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a, dtype=np.float64)


def _label4(mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(mask, connectivity=1)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every labelled component with fewer than ``min_size`` pixels."""
    ids, counts = np.unique(labels, return_counts=True)
    small = ids[(ids > 0) & (counts < min_size)]
    return np.where(np.isin(labels, small), 0, labels)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background components (4-connected) that do not touch the image border become foreground."""
    bg = _label4(~mask)
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    return mask | ((bg > 0) & ~np.isin(bg, border))


def _open(mask: np.ndarray) -> np.ndarray:
    """Opening with :data:`ELLIPSE`, OpenCV border rules (image border never erodes)."""
    win = sliding_window_view(np.pad(mask, 2, constant_values=True), (5, 5))
    eroded = np.all(win[..., ELLIPSE], axis=-1)
    win = sliding_window_view(np.pad(eroded, 2, constant_values=False), (5, 5))
    return np.any(win[..., ELLIPSE], axis=-1)


def reference_instances(
    np_prob: np.ndarray, hv: np.ndarray, *, open_markers: bool = True
) -> np.ndarray:
    """HoVer-Net instances, step by step; ids relabelled ``1..n`` in raster order of first pixel.

    Parameters
    ----------
    np_prob : np.ndarray
        ``(H, W)`` nuclear-pixel probability.
    hv : np.ndarray
        ``(2, H, W)`` horizontal (x) and vertical (y) maps.
    open_markers : bool
        Apply the 5x5 elliptic opening to the markers (the reference does).

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 instance ids.
    """
    from skimage.segmentation import watershed

    blob = _remove_small(_label4(np_prob >= 0.5), 10) > 0
    if not blob.any():
        return np.zeros(np_prob.shape, np.int32)
    h_dir = _minmax(hv[0].astype(np.float64))
    v_dir = _minmax(hv[1].astype(np.float64))
    sobel_h = 1.0 - _minmax(_correlate2d_reflect101(h_dir, sobel_2d(21, "x")))
    sobel_v = 1.0 - _minmax(_correlate2d_reflect101(v_dir, sobel_2d(21, "y")))
    overall = np.clip(np.maximum(sobel_h, sobel_v) - (1.0 - blob), 0.0, None)
    gauss = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    dist = -_correlate2d_reflect101((1.0 - overall) * blob, gauss)
    marker = blob & ~(overall >= 0.4)
    marker = _fill_holes(marker)
    if open_markers:
        marker = _open(marker)
    markers = _remove_small(_label4(marker), 10)
    out = watershed(dist, markers=markers, mask=blob)
    return canonical(out)


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel ids to ``1..n`` in order of each instance's first pixel in raster order."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    order = ids[keep][np.argsort(first[keep])]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


# ----------------------------------------------------------------------------- stored cases
def load_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(np_prob, hv, expected)`` of a stored case, inputs as float32."""
    with np.load(DATA / f"hovernet_{name}.npz") as z:
        return z["np_prob"].astype(np.float32), z["hv"].astype(np.float32), z["expected"].astype(np.int32)


@pytest.mark.parametrize("name", CASES)
def test_package_matches_stored_reference(name):
    prob, hv, expected = load_case(name)
    got = hovernet_instances(prob, hv)
    assert got.dtype == np.int32 and got.shape == expected.shape
    # ids 1..n without gaps; the numbering itself is free, so compare after canonical relabelling
    assert set(np.unique(got)) == set(range(int(got.max()) + 1))
    diff = int((canonical(got) != expected).sum())
    assert diff == 0, f"{name}: {diff} px differ from the stored reference"


@pytest.mark.parametrize("name", CASES)
def test_independent_implementation_reproduces_stored(name):
    prob, hv, expected = load_case(name)
    np.testing.assert_array_equal(reference_instances(prob, hv), expected)


@pytest.mark.parametrize("name", ["touching_noisy", "border_noisy", "thin_nucleus"])
def test_marker_opening_changes_these_cases(name):
    """Control: without the 5x5 opening the same maps give other instances (the cases can tell)."""
    prob, hv, expected = load_case(name)
    unopened = reference_instances(prob, hv, open_markers=False)
    assert (unopened != expected).sum() > 100


# ----------------------------------------------------------------------------- hand-verified facts
def test_thin_nucleus_case_by_hand():
    """Hand-verified: the 5 px tall bar (rows 20-24) loses its marker, the disk is one instance.

    In the 5 px tall bar the vertical map jumps by 2 over 5 rows, so the edge energy
    ``overall`` is >= 0.4 everywhere in the bar except its centre row: the marker is a 1 px tall
    line (row 22, columns 17-37: 21 px, which the < 10 px size filter alone would keep). The
    5x5 ellipse needs 5 set rows in its centre column, so the opening removes that line and the
    watershed leaves the bar unlabelled. The disk (radius 6) keeps a marker and becomes one
    instance covering exactly its pixels.
    """
    prob, hv, expected = load_case("thin_nucleus")
    yy, xx = np.mgrid[:48, :64]
    disk = (yy - 12) ** 2 + (xx - 52) ** 2 <= 36
    bar = np.zeros_like(disk)
    bar[20:25, 10:45] = True
    assert np.array_equal(prob > 0.5, disk | bar)
    for labels in (expected, hovernet_instances(prob, hv)):
        assert np.all(labels[disk] == 1) and np.all(labels[~disk] == 0)
    # without the opening the bar keeps a marker and is found too
    unopened = reference_instances(prob, hv, open_markers=False)
    assert len(np.unique(unopened[bar])) == 1 and unopened[bar][0] > 0


def test_reference_opening_by_hand():
    """The independent opening: OpenCV's 5x5 ellipse, image border never erodes."""
    m = np.zeros((12, 12), bool)
    m[3:8, 3:8] = True  # 5x5 square -> erosion leaves its centre -> dilation gives the ellipse
    expected = np.zeros_like(m)
    expected[3:8, 3:8] = ELLIPSE
    np.testing.assert_array_equal(_open(m), expected)
    bar = np.zeros((12, 12), bool)
    bar[4:8, :] = True  # 4 rows: thinner than the ellipse's centre column
    assert not _open(bar).any()
    edge = np.zeros((12, 12), bool)
    edge[:3, :] = True  # 3 rows at the top border: outside counts as set, so it survives
    np.testing.assert_array_equal(_open(edge), edge)


# ----------------------------------------------------------------------------- package helpers by hand
def test_package_defaults_are_the_reference_values():
    from napari_dgseg.core.families.hovernet.postprocess import ELLIPSE_5

    assert HoverPostConfig() == HoverPostConfig(
        np_threshold=0.5, min_size=10, sobel_size=21, marker_threshold=0.4
    )
    np.testing.assert_array_equal(ELLIPSE_5, ELLIPSE)
    assert ELLIPSE_5.dtype == bool


def test_package_opening_matches_the_independent_one():
    from napari_dgseg.core.families.hovernet.postprocess import ELLIPSE_5
    from napari_dgseg.core.families.hovernet.postprocess import _open as package_open

    rng = np.random.default_rng(0)
    cases = [np.zeros((12, 12), bool), np.ones((12, 12), bool)]
    square = np.zeros((12, 12), bool)
    square[3:8, 3:8] = True
    edge = np.zeros((12, 12), bool)
    edge[:3, :] = True  # touches the border: must not be eroded from outside
    corner = np.zeros((12, 12), bool)
    corner[:2, :2] = True  # too small to hold the ellipse even with the border counted as set
    cases += [square, edge, corner, edge.T, rng.random((30, 40)) > 0.3]
    for m in cases:
        np.testing.assert_array_equal(package_open(m, ELLIPSE_5), _open(m))


def test_package_small_object_removal_by_hand():
    from napari_dgseg.core.families.hovernet.postprocess import _remove_small

    lab = np.zeros((10, 10), np.int32)
    lab[0, :9] = 1  # 9 px: removed
    lab[2, :10] = 2  # 10 px: kept (sizes < min_size go)
    lab[4:6, :6] = 3  # 12 px: kept
    lab[8, 0] = 4  # 1 px: removed
    out = _remove_small(lab, 10)
    assert set(np.unique(out)) == {0, 2, 3}
    np.testing.assert_array_equal(out[lab == 2], 2)
    assert _remove_small(lab, 1) is lab  # nothing is smaller than 1 px
    assert not _remove_small(np.zeros((3, 3), np.int32), 10).any()
    single = np.zeros((6, 6), np.int32)
    single[1:3, 1:3] = 1  # the only label, 4 px: removed too
    assert not _remove_small(single, 10).any()
    np.testing.assert_array_equal(_remove_small(lab, 2), np.where(lab == 4, 0, lab))


def test_sobel_kernel_sizes_by_hand():
    d3, s3 = sobel_kernels(3)
    np.testing.assert_array_equal(d3, [-1, 0, 1])
    np.testing.assert_array_equal(s3, [1, 2, 1])
    for size in (21, 7):
        d, s = sobel_kernels(size)
        np.testing.assert_array_equal(np.outer(s, d), sobel_2d(size, "x"))
    for bad in (1, 2, 4, 20):
        with pytest.raises(ValueError, match=f"odd and >= 3, got {bad}"):
            sobel_kernels(bad)


def test_inputs_are_read_as_float32():
    """float16 / float64 inputs give exactly what their float32 cast gives."""
    with np.load(DATA / "hovernet_touching_noisy.npz") as z:
        p16, hv16 = z["np_prob"], z["hv"]
    p32, hv32 = p16.astype(np.float32), hv16.astype(np.float32)
    expected = hovernet_instances(p32, hv32)
    np.testing.assert_array_equal(hovernet_instances(p16, hv16), expected)
    empty = hovernet_instances(np.zeros_like(p16), hv16)  # no nuclear pixel: all background
    assert empty.dtype == np.int32 and empty.shape == p16.shape and not empty.any()
    # 0.5 - 1e-10 is 0.5 once cast to float32, so these pixels are nuclear pixels
    blob = p32 >= 0.5
    p64 = np.where(blob, 0.5 - 1e-10, 0.0)
    np.testing.assert_array_equal(
        hovernet_instances(p64, hv32.astype(np.float64)),
        hovernet_instances(blob.astype(np.float32), hv32),
    )


@pytest.mark.parametrize("name", ["thin_nucleus", "touching_clean"])
def test_hv_maps_are_min_max_scaled(name):
    """The h and v maps are min-max scaled first, so scaling them by a power of two (exact in
    floating point) changes nothing, however small the resulting range."""
    prob, hv, expected = load_case(name)
    for scale in (0.125, 0.25, 8.0):
        assert np.array_equal(canonical(hovernet_instances(prob, hv * scale)), expected), scale
