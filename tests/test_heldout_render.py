"""The held-out renderers: deterministic, valid ground truth, distinct styles, confounders are
background, independent of the training renderers, reachable through ``dgseg synth``."""

from __future__ import annotations

import ast
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2lab
from skimage.measure import label as cc_label

from napari_dgseg.cli import main
from napari_dgseg.core.data import heldout_nuclei, heldout_vessels
from napari_dgseg.core.data.heldout_nuclei import (
    HELDOUT_NUCLEI_STYLES,
    MIN_INSTANCE_AREA,
    confounder_masks,
    make_heldout_nuclei,
)
from napari_dgseg.core.data.heldout_vessels import (
    HELDOUT_VESSEL_STYLES,
    lesion_masks,
    make_heldout_vessels,
)
from napari_dgseg.core.data.synthetic import list_domains, make_sample
from napari_dgseg.core.errors import InputError

NUCLEI = list(HELDOUT_NUCLEI_STYLES)
VESSELS = list(HELDOUT_VESSEL_STYLES)


@pytest.mark.parametrize("style", NUCLEI)
def test_nuclei_deterministic_and_seed_dependent(style):
    a_img, a_lab = make_heldout_nuclei(96, style, 5)
    b_img, b_lab = make_heldout_nuclei(96, style, 5)
    c_img, _ = make_heldout_nuclei(96, style, 6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (96, 96, 3) and a_img.dtype == np.uint8 and a_lab.dtype == np.int32


@pytest.mark.parametrize("style", NUCLEI)
def test_nuclei_instances_are_valid(style):
    for seed in (0, 1):
        _, lab = make_heldout_nuclei((160, 200), style, seed)
        ids = np.unique(lab)
        ids = ids[ids > 0]
        assert ids.size > 5
        assert np.array_equal(ids, np.arange(1, ids.size + 1))  # contiguous 1..n
        pieces = cc_label(lab, background=0, connectivity=1)
        for i in ids:  # each instance is one 4-connected region of a plausible size
            assert np.unique(pieces[lab == i]).size == 1
        areas = np.bincount(lab.ravel())[1:]
        assert areas.min() >= MIN_INSTANCE_AREA
        radius = np.sqrt(np.median(areas) / np.pi)
        assert 4.0 <= radius <= 16.0, radius  # ~0.25 um/px like the training renderer


def test_nuclei_styles_differ_in_colour():
    means = {s: rgb2lab(make_heldout_nuclei(128, s, 3)[0]).reshape(-1, 3).mean(0) for s in NUCLEI}
    for a, b in combinations(NUCLEI, 2):
        assert np.linalg.norm(means[a] - means[b]) > 3.0, (a, b)


def test_confounders_are_background():
    found = {"keratin": 0, "fat": 0, "rbc": 0, "collagen": 0}
    for seed in range(6):
        _, lab = make_heldout_nuclei(256, "ho-confounders", seed)
        masks = confounder_masks(256, "ho-confounders", seed)
        for kind in ("keratin", "fat", "rbc"):
            found[kind] += int(masks[kind].sum())
            assert not np.any(lab[masks[kind]]), kind
        dense = masks["collagen"]
        found["collagen"] += int(dense.sum())
    assert all(v > 0 for v in found.values()), found  # the style really has them


def test_confounder_style_has_more_confounders_than_pale():
    def amount(style):
        return sum(
            sum(int(m.sum()) for k, m in confounder_masks(192, style, s).items() if k != "fold")
            for s in range(4)
        )

    assert amount("ho-confounders") > 1.5 * amount("ho-pale")


@pytest.mark.parametrize("style", VESSELS)
def test_vessels_deterministic_valid_and_in_fov(style):
    img, lab, fov = make_heldout_vessels(128, style, 2)
    img2, lab2, fov2 = make_heldout_vessels(128, style, 2)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2) and np.array_equal(fov, fov2)
    assert img.shape == (128, 128, 3) and lab.dtype == np.uint8 and fov.dtype == bool
    assert set(np.unique(lab)) <= {0, 1}
    assert not lab[~fov].any()
    assert 0.03 < lab[fov].mean() < 0.3
    assert img[~fov].mean() < 20 < img[fov].mean()  # dark surround


def test_vessel_lesions_and_looks_are_not_labels():
    """Same seed and field of view, different styles (lesions, glare...): same vessel labels."""
    _, a, fa = make_heldout_vessels(192, "hv-dim-vignette", 4)
    img_b, b, fb = make_heldout_vessels(192, "hv-lesions", 4)
    assert np.array_equal(fa, fb) and np.array_equal(a, b)
    img_a = make_heldout_vessels(192, "hv-dim-vignette", 4)[0]
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 5


def test_lesion_masks_match_the_image():
    """hv-lesions has haemorrhages and exudates where the image is darker / brighter."""
    img, lab, fov = make_heldout_vessels(256, "hv-lesions", 0)
    masks = lesion_masks(256, "hv-lesions", 0)
    grey = img.astype(float).mean(-1)
    background = fov & (lab == 0)
    haem = masks["haemorrhage"] & background
    exud = masks["exudate"] & background
    assert haem.sum() > 20 and exud.sum() > 5
    assert grey[haem].mean() < grey[background].mean() < grey[exud].mean()
    assert not any(m[~fov].any() for m in masks.values())


def test_vessels_render_at_other_sizes_with_the_same_eye():
    small = make_heldout_vessels(128, "hv-lesions", 1)[1]
    big = make_heldout_vessels((384, 384), "hv-lesions", 1)[1]
    # the same tree, scaled: vessel fractions agree within a few percent of the area
    assert abs(small.mean() - big.mean()) < 0.04
    assert make_heldout_vessels((100, 160), "hv-green-cam", 1)[0].shape == (100, 160, 3)


def test_vessel_styles_differ_in_colour():
    def lab_mean(s):
        img, _, fov = make_heldout_vessels(128, s, 3)
        return rgb2lab(img)[fov].mean(0)

    means = {s: lab_mean(s) for s in VESSELS}
    for a, b in combinations(VESSELS, 2):
        assert np.linalg.norm(means[a] - means[b]) > 3.0, (a, b)


def test_unknown_style_and_bad_inputs_are_refused():
    with pytest.raises(InputError, match="ho-pale"):
        make_heldout_nuclei(64, "clean", 0)
    with pytest.raises(InputError, match="hv-lesions"):
        make_heldout_vessels(64, "camera-a", 0)
    with pytest.raises(InputError):
        make_heldout_nuclei(64, "ho-pale", -1)


def test_independent_of_the_training_renderers():
    """No import of the training renderers' modules (shared generic helpers only)."""
    for module in (heldout_nuclei, heldout_vessels):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(n.endswith(("synthetic_nuclei", "synthetic_vessels")) for n in names)


def test_facade_and_cli(tmp_path, capsys):
    listed = list_domains(include_heldout=True)["evaluation_only"]
    assert listed["nuclei"] == NUCLEI and listed["vessels"] == VESSELS
    assert "ho-pale" not in list_domains()["nuclei"]  # never offered as a training domain
    sample = make_sample("nuclei", 64, "ho-lymphoid", 0)  # renderer inferred from the name
    assert sample.meta["renderer"] == "heldout" and sample.domain == "ho-lymphoid"
    out = tmp_path / "ds"
    args = ["synth", "vessels", "--renderer", "heldout", "--domain", "hv-lesions", "--n", "2",
            "--size", "64", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["evaluation_only"] is True and summary["renderer"] == "heldout"
    stems = summary["files"]
    assert stems == ["vessels_hv-lesions_0000", "vessels_hv-lesions_0001"]
    for sub, ext in (("images", "png"), ("labels", "tif"), ("masks", "png")):
        assert all((out / sub / f"{s}.{ext}").is_file() for s in stems)
    bad = ["synth", "nuclei", "--renderer", "heldout", "--domain", "clean", "--out",
           str(tmp_path / "bad")]  # fmt: skip
    assert main(bad) != 0
    err = capsys.readouterr().err
    assert "ho-pale" in err and "Traceback" not in err


@pytest.mark.parametrize("style", ["ho-pale", "ho-dark-blue", "ho-lymphoid"])
def test_nucleus_attributes_follow_their_instance(style):
    """After occlusion drops some nuclei, nucleus k still describes instance k + 1 (its texture
    and darkness are applied to the right region): each instance lies around its own centre."""
    from napari_dgseg.core.data._synth_common import generators

    shape = (192, 192)
    tissue = heldout_nuclei._make_tissue(generators(7, 3)[0], shape, HELDOUT_NUCLEI_STYLES[style])
    assert len(tissue.nuclei) == tissue.labels.max()
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for k, nuc in enumerate(tissue.nuclei):
        region = tissue.labels == k + 1
        reach = nuc.radius * nuc.aspect * 1.6 + 2
        assert np.hypot(yy[region] - nuc.cy, xx[region] - nuc.cx).max() <= reach
