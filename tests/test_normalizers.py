"""Colour normalizers: one interface, every method; composition robustness; stains; old banks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.color.normalizers import (
    METHODS,
    STD_RATIO_BOUND,
    get_normalizer,
    histogram_samples,
    lab_samples,
    tissue_samples,
)
from napari_dgseg.core.errors import InputError


def _two_class(fraction: float, seed: int, n: int = 20000) -> np.ndarray:
    """Colour samples: purple 'nuclei' (share ``fraction``) and pink 'stroma', with noise."""
    rng = np.random.default_rng(seed)
    k = int(fraction * n)
    nuc = np.array([0.42, 0.22, 0.58]) + rng.normal(0, 0.03, (k, 3))
    stroma = np.array([0.91, 0.66, 0.80]) + rng.normal(0, 0.03, (n - k, 3))
    return np.clip(np.concatenate([nuc, stroma]), 0, 1)


def _beer_lambert(h: np.ndarray, e: np.ndarray, size: int = 96, seed: int = 0) -> np.ndarray:
    """A two-stain image ``I = 255 exp(-(c_H h + c_E e)) - 1`` as uint8 RGB (H&E-like)."""
    rng = np.random.default_rng(seed)
    c_h = np.where(rng.random((size, size)) < 0.3, rng.uniform(0.6, 1.2, (size, size)), 0.05)
    c_e = rng.uniform(0.2, 0.8, (size, size))
    od = c_h[..., None] * h + c_e[..., None] * e
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).round().astype(np.uint8)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(InputError, match="reinhard.*balanced.*macenko"):
        get_normalizer("vahadane")
    with pytest.raises(InputError, match="zero pixels"):
        get_normalizer("balanced").fit(np.zeros((0, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_and_transforms_batches(method):
    norm = get_normalizer(method)
    a = _beer_lambert(np.array([0.56, 0.72, 0.41]), np.array([0.22, 0.80, 0.56]), seed=1)
    b = _beer_lambert(np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11]), seed=2)
    sa, sb = norm.fit(*tissue_samples(a)), norm.fit(*tissue_samples(b))
    assert sa.shape == (norm.size,) and np.isfinite(sa[:6]).all()
    branch = norm.branch(sa, sb)
    x = torch.from_numpy(np.stack([a, a[::-1]])).permute(0, 3, 1, 2).float() / 255
    y = branch(x)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    torch.testing.assert_close(branch(x[1]), y[1])  # single image == its row of the batch
    assert (y - x).abs().mean() > 0.01  # colours moved
    # to its own statistics: (almost) the identity; Macenko drops the OD off the stain plane
    same = norm.branch(sa, sa)(x)
    assert (same - x).abs().mean() < (0.02 if method == "macenko" else 1e-4)
    # float64 works too (gradcheck-ready dtype)
    assert branch(x.double()).dtype == torch.float64


def test_balanced_statistics_do_not_depend_on_composition():
    plain, bal = get_normalizer("reinhard"), get_normalizer("balanced")
    sparse, dense = _two_class(0.05, 0), _two_class(0.5, 1)
    d_plain = np.abs(plain.fit(sparse) - plain.fit(dense))
    d_bal = np.abs(bal.fit(sparse) - bal.fit(dense))
    # the mean lightness and its spread are what turned stroma nucleus-dark
    assert d_bal[0] < 0.1 * d_plain[0] and d_bal[3] < 0.2 * d_plain[3]
    # one colour only (no second class): falls back to the plain statistics
    one = _two_class(0.0, 2)
    np.testing.assert_allclose(bal.fit(one), plain.fit(one), atol=0.05)


def test_bounded_reinhard_limits_the_std_ratio():
    norm = get_normalizer("reinhard-bounded")
    target = np.array([-0.5, 0.0, 0.0, 0.05, 0.01, 0.01])
    ref = np.array([-0.5, 0.0, 0.0, 0.20, 0.04, 0.04])  # 4x the spread
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.3, 0.9, (1, 3, 32, 32)))
    y = norm.branch(target, ref)(x)
    lab_x = lab_samples(x[0].reshape(3, -1).T.numpy())
    lab_y = lab_samples(y[0].reshape(3, -1).T.numpy())
    ratio = lab_y.std(0) / lab_x.std(0)
    assert (ratio <= STD_RATIO_BOUND + 1e-6).all()
    plain = get_normalizer("reinhard").branch(target, ref)(x)
    assert lab_samples(plain[0].reshape(3, -1).T.numpy()).std(0)[0] / lab_x.std(0)[0] > 2  # (clipping to [0, 1] caps it below 4)


def test_macenko_recovers_the_stain_vectors():
    h = np.array([0.5626, 0.7201, 0.4062])
    e = np.array([0.2159, 0.8012, 0.5581])
    stats = get_normalizer("macenko").fit(*tissue_samples(_beer_lambert(h, e, 160)))
    angle = lambda u, v: np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(v), -1, 1)))  # noqa: E731
    assert angle(stats[6:9], h) < 5 and angle(stats[9:12], e) < 5
    assert (stats[12:14] > 0).all()
    # one stain only: no stain statistics, the transfer falls back to Reinhard
    grey = np.repeat(np.linspace(0.3, 0.9, 400)[:, None], 3, axis=1)
    assert np.isnan(get_normalizer("macenko").fit(grey)[6:]).all()


def test_old_banks_estimate_balanced_statistics_from_their_histogram():
    from napari_dgseg.core.color.bank import reference_stats, rgb_histogram
    from napari_dgseg.core.color.tissue import image_color_stats
    from napari_dgseg.core.data.synthetic import make_nuclei

    img, _ = make_nuclei(256, domain="clean", seed=3)
    mean, std = image_color_stats(img)
    bank = {"hist": torch.from_numpy(rgb_histogram(img))[None],
            "mean": torch.from_numpy(mean)[None], "std": torch.from_numpy(std)[None]}
    exact = get_normalizer("balanced").fit(*tissue_samples(img))
    approx, origin = reference_stats(bank, 0, get_normalizer("balanced"))
    assert origin == "histogram"
    np.testing.assert_allclose(approx[:3], exact[:3], atol=0.25 * exact[3:6].max())
    np.testing.assert_allclose(approx[3:], exact[3:], rtol=0.25)
    stats, origin = reference_stats(bank, 0, get_normalizer("macenko"))
    assert "no stain" in origin and np.isnan(stats[6:]).all()
    # a bank with stored statistics returns them as they are
    bank["ref_balanced"] = torch.from_numpy(exact)[None]
    stored, origin = reference_stats(bank, 0, get_normalizer("balanced"))
    assert origin == "bank" and np.array_equal(stored, exact)
    centres, weights = histogram_samples(rgb_histogram(img))
    assert len(centres) == len(weights) and (weights > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_branches_run_on_cuda(method):
    norm = get_normalizer(method)
    a = _beer_lambert(np.array([0.56, 0.72, 0.41]), np.array([0.22, 0.80, 0.56]))
    s = norm.fit(*tissue_samples(a))
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    cpu = norm.branch(s, s * 1.01)(x)
    gpu = norm.branch(s, s * 1.01)(x.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_normalize_colors_honours_tissue_only_for_the_reference():
    """Regression: the reference's statistics were always taken from tissue pixels only."""
    from napari_dgseg.core.color.transfer import normalize_colors

    rng = np.random.default_rng(0)
    image = np.clip(rng.normal([200, 120, 170], 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    reference = np.full((64, 64, 3), 250, np.uint8)  # white glass ...
    reference[16:48, 16:48] = np.clip(rng.normal([120, 60, 150], 15, (32, 32, 3)), 0, 255)
    tissue = normalize_colors(image, reference, tissue_only=True).astype(float)
    every = normalize_colors(image, reference, tissue_only=False).astype(float)
    # with the glass counted, the reference is much lighter on average
    assert every.mean() > tissue.mean() + 20
    inner = reference[16:48, 16:48].astype(float)
    assert abs(tissue.mean() - inner.mean()) < 15
