"""Task colours: masks contrast with the tissue the task works on."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from napari_dgseg._napari.display import default_contour, task_colours

RED = (255, 64, 64)  # the default class colour of bundles
FUNDUS = (200, 70, 30)  # a red-orange retina
HEMATOXYLIN = (110, 60, 150)
EOSIN = (230, 130, 190)


def _hue_distance(a, b) -> float:
    ha = colorsys.rgb_to_hsv(*(v / 255 for v in a))[0]
    hb = colorsys.rgb_to_hsv(*(v / 255 for v in b))[0]
    d = abs(ha - hb)
    return min(d, 1 - d)


def test_vessels_are_not_red_on_fundus():
    colours = task_colours(["background", "vessel"], "vessels", {0: (0, 0, 0), 1: RED})
    assert colours[1] != RED
    assert _hue_distance(colours[1], FUNDUS) > 0.4  # near-complementary hue


def test_nuclei_contrast_with_both_stains():
    colours = task_colours(["background", "nucleus"], "nuclei", {1: RED})
    assert _hue_distance(colours[1], HEMATOXYLIN) > 0.3
    assert _hue_distance(colours[1], EOSIN) > 0.3


def test_task_decides_for_an_unnamed_foreground_and_unknown_classes_keep_theirs():
    assert task_colours(["bg", "foreground"], "retinal vessels")[1] == task_colours(
        ["bg", "vessel"]
    )[1]
    colours = task_colours(["bg", "gland", "nucleus"], "mixed", {1: (1, 2, 3), 2: RED})
    assert colours[1] == (1, 2, 3)
    assert colours[2] != RED


@pytest.mark.parametrize("output,width", [("instances", 2), ("semantic", 0)])
def test_default_contour(output, width):
    assert default_contour(output) == width


def test_colormaps_put_background_clear():
    pytest.importorskip("napari")
    from napari_dgseg._napari.display import instance_colormap, semantic_colormap

    sem = semantic_colormap({0: (0, 0, 0), 1: (0, 230, 255)})
    assert np.allclose(sem.map(np.array([0]))[0][3], 0.0)
    assert np.allclose(sem.map(np.array([1]))[0][:3], [0, 230 / 255, 1.0])
    inst = instance_colormap((170, 255, 0))
    assert np.allclose(inst.map(np.array([0]))[0][3], 0.0)
    assert np.allclose(inst.map(np.array([57]))[0][:3], [170 / 255, 1.0, 0.0])
