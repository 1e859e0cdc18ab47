"""The lymphoid-dense morphology domain: deterministic, small round packed nuclei, valid instances."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.data.synthetic import make_nuclei
from napari_dgseg.core.data.synthetic_lymphoid import make_lymphoid_nuclei
from napari_dgseg.core.errors import InputError


def test_lymphoid_tiles_are_deterministic_and_denser_with_smaller_nuclei():
    img, lab = make_lymphoid_nuclei(128, seed=3)
    img2, lab2 = make_lymphoid_nuclei(128, seed=3)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3) and lab.dtype == np.int32
    ids = np.unique(lab)[1:]
    assert np.array_equal(ids, np.arange(1, ids.size + 1))  # contiguous ids
    areas = np.bincount(lab.ravel())[1:]
    _, ref = make_nuclei(128, "clean", 3)
    ref_areas = np.bincount(ref.ravel())[1:]
    assert ids.size > 2 * ref_areas.size  # much denser
    assert np.median(areas) < 0.5 * np.median(ref_areas)  # much smaller
    assert np.median(areas) < np.pi * 5.0**2


def test_lymphoid_takes_the_stain_domains_and_checks_input():
    a, la = make_lymphoid_nuclei(64, "clean", 1)
    b, lb = make_lymphoid_nuclei(64, "dark-stain", 1)
    assert np.array_equal(la, lb) and not np.array_equal(a, b)  # same tissue, other stain
    with pytest.raises(InputError):
        make_lymphoid_nuclei(64, "no-such-domain", 1)
    with pytest.raises(InputError):
        make_lymphoid_nuclei(64, "clean", -1)
