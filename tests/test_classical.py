"""The classical reference segmentations and the clDice metric."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dgseg.core.classical import (
    classical_nuclei,
    classical_vessels,
    estimate_fov,
    haematoxylin,
)
from napari_dgseg.core.data.heldout_vessels import make_heldout_vessels
from napari_dgseg.core.data.synthetic import make_nuclei, make_vessels
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.metrics import cldice, dice, instance_scores

PURPLE = np.array([90, 50, 140], np.uint8)  # a haematoxylin-like dark purple
GLASS = np.array([245, 242, 246], np.uint8)


def _disc_image(centres, radius, shape=(80, 120)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = np.zeros(shape, bool)
    for cy, cx in centres:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = np.where(inside[..., None], PURPLE, np.array([220, 160, 200], np.uint8))
    return img.astype(np.uint8), inside


# ------------------------------------------------------------------------------ nuclei


def test_nuclei_on_a_clean_training_tile():
    scores = [instance_scores(classical_nuclei(img)[1], lab)
              for img, lab in (make_nuclei(256, "clean", s) for s in (11, 12))]  # fmt: skip
    assert np.mean([s["dice"] for s in scores]) > 0.8
    assert np.mean([s["aji"] for s in scores]) > 0.4


def test_watershed_splits_two_touching_nuclei():
    img, inside = _disc_image([(40, 45), (40, 69)], 13)  # overlapping by 2 px
    semantic, inst = classical_nuclei(img)
    assert dice(semantic, inside) > 0.95
    assert inst.max() == 2
    # each disc centre is in a different instance
    assert inst[40, 45] != inst[40, 69] and inst[40, 45] > 0 and inst[40, 69] > 0


def test_threshold_ignores_blank_glass():
    """Half the tile is glass: the threshold is set on tissue, so pink cytoplasm stays out."""
    img, inside = _disc_image([(40, 30)], 9)
    img[:, 60:] = GLASS
    semantic, inst = classical_nuclei(img)
    assert dice(semantic, inside) > 0.9 and inst.max() == 1


def test_nuclei_empty_and_bad_input():
    sem, inst = classical_nuclei(np.full((64, 64, 3), 240, np.uint8))
    assert sem.sum() == 0 and inst.max() == 0
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        classical_nuclei(np.zeros((64, 64), np.uint8))
    # floats in [0, 1] and RGBA are accepted
    img, _ = _disc_image([(40, 50)], 10)
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)
    assert np.array_equal(classical_nuclei(rgba)[0], classical_nuclei(img / 255.0)[0])
    assert haematoxylin(img).shape == img.shape[:2]


# ------------------------------------------------------------------------------ vessels


def test_vessels_on_held_out_fundus():
    scores = []
    for s in (0, 1):
        img, lab, fov = make_heldout_vessels(256, "hv-lesions", s)
        scores.append(dice(classical_vessels(img) & fov, lab))
    assert np.mean(scores) > 0.5


def test_vessels_on_training_fundus_and_given_fov():
    img, lab, fov = make_vessels(256, "camera-a", 21)
    assert dice(classical_vessels(img, fov), lab) > 0.7
    out = classical_vessels(img, fov)
    assert out.dtype == np.uint8 and not out[~fov].any()
    with pytest.raises(InputError, match="fov_mask"):
        classical_vessels(img, fov[:10])


def test_fov_estimate():
    for img, fov in ((make_vessels(256, "camera-b", 3)[::2]),
                     (make_heldout_vessels(256, "hv-glare-drusen", 3)[::2])):  # fmt: skip
        est = estimate_fov(img)
        assert dice(est, fov) > 0.95
        # never more than the blurred two-pixel edge outside the true field of view
        assert not (est & ~ndi.binary_dilation(fov, iterations=2)).any()
    assert not estimate_fov(np.zeros((32, 32, 3), np.uint8)).any()


# ------------------------------------------------------------------------------ clDice


def test_cldice_hand_cases():
    gt = np.zeros((21, 50), np.uint8)
    gt[10, 5:45] = 1  # a one-pixel vessel, 40 px long: its skeleton is itself
    assert cldice(gt, gt) == 1.0
    assert cldice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert cldice(np.zeros_like(gt), gt) == 0.0
    # broken in the middle: Tprec = 30/30 = 1, Tsens = 30/40 -> 2 * 0.75 / 1.75
    broken = gt.copy()
    broken[10, 20:30] = 0
    assert cldice(broken, gt) == pytest.approx(2 * 0.75 / 1.75)
    # a prediction 5 px too wide: Dice is poor, but the centreline is right
    wide = np.zeros_like(gt)
    wide[8:13, 5:45] = 1
    assert dice(wide, gt) == pytest.approx(2 * 40 / 240)
    assert cldice(wide, gt) > 0.95
    # a parallel vessel beside the true one: no centreline overlap at all
    beside = np.zeros_like(gt)
    beside[3, 5:45] = 1
    assert cldice(beside, gt) == 0.0
    with pytest.raises(InputError):
        cldice(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
