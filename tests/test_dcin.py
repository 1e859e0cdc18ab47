"""DCIN at inference: reference bank, GRIS medoid, LRIS nearest, full ensemble, slide consistency."""

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.color.bank import (
    add_bank_to_bundle,
    histogram_medoid,
    rgb_histogram,
)
from napari_dgseg.core.color.dcin import normalized_image, plan_dcin
from napari_dgseg.core.color.transfer import transfer
from napari_dgseg.core.errors import DgsegError, InputError
from napari_dgseg.core.imageprep import ImageAdapter


def _tinted(i):
    img, _ = disks_image(96, seed=i)
    tint = np.array([1.0 - 0.08 * i, 1.0, 0.8 + 0.05 * i])
    return np.clip(img * tint, 0, 255).astype(np.uint8)


def test_histogram_and_medoid():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = 255
    h = rgb_histogram(img)
    assert h.shape == (512,)
    assert np.isclose(np.linalg.norm(h), 1.0)
    assert np.isclose(h[0], h[511]) and np.count_nonzero(h) == 2
    pts = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0]])
    assert histogram_medoid(pts) == 1  # smallest mean distance to all others


def test_modes_need_bank(tiny_bundle):
    adapter = ImageAdapter.from_array(_tinted(0))
    assert plan_dcin(tiny_bundle, adapter, "auto").mode == "none"
    for mode in ("gris", "lris", "full"):
        with pytest.raises(InputError, match="dgseg bank"):
            plan_dcin(tiny_bundle, adapter, mode)
    with pytest.raises(InputError, match="choose one of"):
        plan_dcin(tiny_bundle, adapter, "fancy")
    with pytest.raises(InputError, match="reference"):
        plan_dcin(tiny_bundle, adapter, "reference")


def test_bank_gris_lris_full(tiny_bundle, tmp_path):
    images = [_tinted(i) for i in range(5)]
    bank = add_bank_to_bundle(tiny_bundle, images, [f"img{i}" for i in range(5)])
    assert bank["hist"].shape == (5, 512) and bank["embedding"].shape[0] == 5
    assert int(bank["gris"][0]) == histogram_medoid(bank["hist"].numpy())
    path = tiny_bundle.save(tmp_path / "banked.dgseg")
    from napari_dgseg.core.bundle import load_bundle

    b = load_bundle(path)
    assert b.manifest["dcin"]["images"] == 5
    # LRIS picks the bank image whose embedding is nearest: the image itself
    for i in (0, 3):
        plan = plan_dcin(b, ImageAdapter.from_array(images[i]), "lris")
        assert plan.references[0]["index"] == i
        assert plan.references[0]["reference"] == f"img{i}"
    full = plan_dcin(b, ImageAdapter.from_array(images[1]), "auto", guard=False)
    assert full.mode == "full" and [r["branch"] for r in full.references] == ["gris", "lris"]
    guarded = plan_dcin(b, ImageAdapter.from_array(images[1]), "auto")
    assert guarded.requested == "auto" and guarded.guard["action"] in ("keep", "fallback")
    assert guarded.mode == ("full" if guarded.guard["action"] == "keep" else "none")
    pred = b.predict(images[2], tile=64, overlap=16, dcin="full", return_normalized=True)
    assert pred.provenance["dcin"]["mode"] == "full"
    assert pred.uncertainty.shape == images[2].shape[:2]
    assert 0 <= pred.uncertainty.min() and pred.uncertainty.max() <= 1
    assert set(pred.extras["normalized"]) == {"gris", "lris"}
    # full = mean of the raw logits of the two branches
    from napari_dgseg.core.predict import run_tiled

    adapter = ImageAdapter.from_array(images[2])
    plan2 = plan_dcin(b, adapter, "full")
    both = run_tiled(b.model, adapter, input_spec=b.input_spec, tile=64, overlap=16,
                     branches=plan2.branches)["logits"]
    assert plan2.references == plan_dcin(b, adapter, "full").references
    maps = [run_tiled(b.model, adapter, input_spec=b.input_spec, tile=64, overlap=16,
                      branches=[br])["logits"] for br in plan2.branches]
    np.testing.assert_allclose(both, (maps[0] + maps[1]) / 2, atol=1e-5)


def test_reference_mode_moves_colours(tiny_bundle):
    src = _tinted(0)
    ref = _tinted(4)
    plan = plan_dcin(tiny_bundle, ImageAdapter.from_array(src), "reference", reference=ref)
    out = normalized_image(ImageAdapter.from_array(src), plan.branches[0])
    assert np.abs(out.astype(float).mean((0, 1)) - ref.mean((0, 1))).max() < \
        np.abs(src.astype(float).mean((0, 1)) - ref.mean((0, 1))).max()


def _seam_ratio(img: np.ndarray, step: int) -> float:
    """Mean |difference| across tile borders divided by the mean across interior columns/rows."""
    f = img.astype(np.float64)
    dx = np.abs(np.diff(f, axis=1)).mean(axis=(0, 2))
    dy = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2))
    border_x = dx[step - 1 :: step]
    border_y = dy[step - 1 :: step]
    interior = np.concatenate([np.delete(dx, np.s_[step - 1 :: step]), np.delete(dy, np.s_[step - 1 :: step])])
    return float(np.concatenate([border_x, border_y]).mean() / interior.mean())


@pytest.mark.slow  # about 30 s on the 2-core development machine
def test_whole_slide_no_seam():
    """3000 x 3000 with tile 512: one set of target statistics for every tile, so no seams."""
    from napari_dgseg.core.color.tissue import image_color_stats
    from napari_dgseg.core.data.synthetic import make_nuclei

    img, _ = make_nuclei((3000, 3000), domain=_other_nuclei_domain(), seed=5)
    adapter = ImageAdapter.from_array(img)
    ref_mean, ref_std = np.array([-0.4, 0.05, 0.01]), np.array([0.25, 0.04, 0.02])
    from napari_dgseg.core.color.dcin import target_sample
    from napari_dgseg.core.color.normalizers import METHODS, get_normalizer, tissue_samples

    reference, _ = make_nuclei(512, domain="clean", seed=6)
    sample = target_sample(adapter)  # once per slide, as plan_dcin does
    for method in METHODS:  # every method: one set of statistics for the slide, no seams
        norm = get_normalizer(method)
        branch = norm.branch(norm.fit(*tissue_samples(sample)), norm.fit(*tissue_samples(reference)))
        slide_norm = normalized_image(adapter, branch, block=512)
        assert _seam_ratio(slide_norm, 512) < 1.5, method
        assert np.abs(slide_norm.astype(int) - img).mean() > 1.0, method  # it did change colours
    # negative control: statistics per tile (what DCIN must not do) do leave seams
    per_tile = np.zeros_like(img)
    for y in range(0, 3000, 512):
        for x in range(0, 3000, 512):
            blk = img[y : y + 512, x : x + 512]
            m, s = image_color_stats(blk)
            t = torch.from_numpy(blk).permute(2, 0, 1)[None].float() / 255
            out = transfer(t, m, s, ref_mean, ref_std)[0].permute(1, 2, 0).numpy()
            per_tile[y : y + 512, x : x + 512] = np.round(out * 255).astype(np.uint8)
    assert _seam_ratio(per_tile, 512) > _seam_ratio(slide_norm, 512)


def _other_nuclei_domain() -> str:
    from napari_dgseg.core.data.synthetic import list_domains

    return list_domains()["nuclei"][1]


@pytest.fixture
def banked(tiny_bundle):
    add_bank_to_bundle(tiny_bundle, [_tinted(i) for i in range(4)])
    return tiny_bundle


def test_bad_input_no_nan(banked):
    white = np.full((80, 80, 3), 250, np.uint8)
    pred = banked.predict(white, tile=64, dcin="full")
    assert "no tissue" in pred.provenance["dcin"]["notice"]
    assert np.isfinite(pred.probabilities).all()
    rgb = _tinted(1)
    grey = rgb.mean(2).astype(np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    u16 = rgb.astype(np.uint16) * 257
    for img in (grey, rgba, u16):
        pred = banked.predict(img, tile=64, dcin="full")
        assert pred.labels.shape == rgb.shape[:2]
        assert np.isfinite(pred.probabilities).all() and np.isfinite(pred.uncertainty).all()
    with pytest.raises(DgsegError, match="not an image at all"):
        banked.predict(rgb, tile=64, dcin="reference", reference="not an image at all")
    with pytest.raises(InputError, match="mean, std|image array"):
        banked.predict(rgb, tile=64, dcin="reference", reference=42)
