"""Synthetic domains: determinism, valid ground truth, measurable domain differences, CLI."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dgseg.cli import main
from napari_dgseg.core.data.synthetic import (
    NUCLEI_DOMAINS,
    VESSEL_DOMAINS,
    list_domains,
    make_nuclei,
    make_sample,
    make_vessels,
    write_dataset,
)
from napari_dgseg.core.errors import InputError


def test_domains_listed():
    d = list_domains()
    assert d["nuclei"][0] == "clean" and len(d["nuclei"]) >= 4
    assert d["vessels"][0] == "camera-a" and len(d["vessels"]) >= 3


@pytest.mark.parametrize("domain", list(NUCLEI_DOMAINS))
def test_nuclei_valid_and_deterministic(domain):
    img, lab = make_nuclei((200, 240), domain, seed=4)
    img2, lab2 = make_nuclei((200, 240), domain, seed=4)
    assert img.shape == (200, 240, 3) and img.dtype == np.uint8
    assert lab.shape == (200, 240) and lab.dtype == np.int32
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    ids = np.unique(lab)
    assert ids[0] == 0 and len(ids) > 10
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # contiguous
    # every instance is one connected region (overlaps resolved into a partition)
    comps = [ndi.label(lab == i)[1] for i in ids[1:]]
    assert comps == [1] * len(comps)
    # nuclei are darker (haematoxylin) than the rest
    assert img[lab > 0].mean() < img[lab == 0].mean()
    assert not np.array_equal(make_nuclei(64, domain, 5)[0], make_nuclei(64, domain, 6)[0])


@pytest.mark.parametrize("domain", list(VESSEL_DOMAINS))
def test_vessels_valid(domain):
    img, lab, fov = make_vessels(256, domain, seed=2)
    assert img.shape == (256, 256, 3) and lab.dtype == np.uint8 and fov.dtype == bool
    assert set(np.unique(lab)) <= {0, 1} and 0.02 < lab.mean() < 0.3
    assert not lab[~fov].any()  # labels only inside the field of view
    assert img[ndi.binary_erosion(~fov, iterations=3)].max() < 40  # dark outside
    # vessels are darker than the fundus right next to them (green channel, where blood absorbs)
    v = lab.astype(bool)
    ring = ndi.binary_dilation(v, iterations=3) & ~v & fov
    assert img[..., 1][v].mean() < img[..., 1][ring].mean()


def test_domains_differ_measurably():
    from skimage.color import rgb2lab

    for kind, table in (("nuclei", NUCLEI_DOMAINS), ("vessels", VESSEL_DOMAINS)):
        means = {}
        for d in table:
            img = make_sample(kind, 192, d, seed=3).image
            means[d] = rgb2lab(img).reshape(-1, 3).mean(0)
        names = list(means)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert np.linalg.norm(means[a] - means[b]) > 3.0, (kind, a, b)


def test_same_seed_same_tissue_in_every_domain():
    """Domains change the appearance only: the ground truth of a seed is shared."""
    ref = make_nuclei(128, "clean", seed=9)[1]
    for d in NUCLEI_DOMAINS:
        np.testing.assert_array_equal(make_nuclei(128, d, seed=9)[1], ref)


def test_nuclei_sizes_overlaps_and_empty_space():
    from skimage.measure import regionprops

    img, lab = make_nuclei(256, "clean", seed=11)
    radii = np.array(
        [
            np.sqrt(p.area / np.pi)
            for p in regionprops(lab)
            if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < 256 and p.bbox[3] < 256
        ]
    )
    assert radii.min() < 7.5 and radii.max() > 11  # lymphocytes and large tumour nuclei
    # touching nuclei exist: some pixel of one instance is 4-adjacent to another instance
    a, b = lab[:, 1:], lab[:, :-1]
    assert np.any((a > 0) & (b > 0) & (a != b))
    # white glass somewhere in most tiles
    bright = [make_nuclei(128, "clean", s)[0].min(axis=2) > 220 for s in range(6)]
    assert sum(m.mean() > 0.01 for m in bright) >= 2


def test_unknown_domain_and_kind():
    with pytest.raises(InputError, match="valid domains"):
        make_nuclei(64, "scanner-zzz")
    with pytest.raises(InputError, match="valid kinds"):
        make_sample("cells")
    with pytest.raises(InputError, match="at least 16"):
        make_vessels(4)


def test_write_dataset_and_cli(tmp_path, capsys):
    import tifffile
    from skimage.io import imread

    s = write_dataset("vessels", "camera-b", 2, 64, 7, tmp_path / "v")
    assert s["files"] == ["vessels_camera-b_0000", "vessels_camera-b_0001"]
    lab = tifffile.imread(tmp_path / "v" / "labels" / "vessels_camera-b_0000.tif")
    assert lab.dtype == np.uint8
    assert (tmp_path / "v" / "masks" / "vessels_camera-b_0001.png").is_file()
    assert (
        main(
            [
                "synth",
                "nuclei",
                "--domain",
                "dark-stain",
                "--n",
                "2",
                "--size",
                "64",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "n"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["domain"] == "dark-stain" and out["n"] == 2
    img = imread(tmp_path / "n" / "images" / "nuclei_dark-stain_0000.png")
    lab = tifffile.imread(tmp_path / "n" / "labels" / "nuclei_dark-stain_0000.tif")
    assert img.shape == (64, 64, 3) and lab.dtype == np.int32
    # same seed -> byte-identical files
    main(
        [
            "synth",
            "nuclei",
            "--domain",
            "dark-stain",
            "--n",
            "2",
            "--size",
            "64",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "n2"),
        ]
    )
    a = (tmp_path / "n" / "images" / "nuclei_dark-stain_0001.png").read_bytes()
    b = (tmp_path / "n2" / "images" / "nuclei_dark-stain_0001.png").read_bytes()
    assert a == b
    capsys.readouterr()
    assert main(["synth", "--list-domains"]) == 0
    assert json.loads(capsys.readouterr().out) == list_domains(include_heldout=True)
    assert main(["synth", "nuclei", "--domain", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "valid domains" in capsys.readouterr().err
