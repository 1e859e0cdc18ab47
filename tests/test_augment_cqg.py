"""Batched CQG augmentations (geometric, photometric) and the CQG loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_dgseg.core.augment_cqg import (
    CQGWeights,
    GeometricParams,
    PhotometricParams,
    cqg_loss,
    cqg_views,
    geometric,
    photometric,
)
from napari_dgseg.core.errors import InputError

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
NO_GEOMETRY = GeometricParams(p_hflip=0, p_vflip=0, p_rot90=0, p_affine=0, p_elastic=0)
NO_PHOTOMETRY = PhotometricParams(
    p_blur=0, p_sharpen=0, p_noise=0, p_brightness_contrast=0, p_rgb_shift=0
)
ALL_PHOTOMETRY = PhotometricParams(
    p_blur=1, p_sharpen=1, p_noise=1, p_brightness_contrast=1, p_rgb_shift=1
)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def blobs(b: int = 3, h: int = 48, w: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose grey level encodes the label (0, 1, 2 -> 0.1, 0.5, 0.9), labels long."""
    rng = np.random.default_rng(seed)
    y = np.zeros((b, h, w), np.int64)
    yy, xx = np.mgrid[:h, :w]
    for i in range(b):
        for cls in (1, 2):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(5, 10)
            y[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = cls
    grey = np.array([0.1, 0.5, 0.9])[y]
    x = np.repeat(grey[:, None], 3, axis=1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_batch_and_shapes(device):
    x, y = blobs()
    x, y = x.to(device), y.to(device)
    a1, a2, ay = cqg_views(x, y, gen(5))
    b1, b2, by = cqg_views(x, y, gen(5))
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(ay, by)
    c1, _, _ = cqg_views(x, y, gen(6))
    assert not torch.equal(a1, c1)
    for t in (a1, a2):
        assert t.shape == x.shape and t.dtype == x.dtype and t.device == x.device
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert ay.shape == y.shape and ay.dtype == y.dtype


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_labels_stay_integral_subset_and_follow_image(dtype):
    x, y = blobs(4, 40, 56, seed=1)
    big = GeometricParams(p_hflip=0.5, p_vflip=0.5, p_rot90=1, p_affine=1, p_elastic=1)
    x1, y1 = geometric(x, y.to(dtype), gen(2), big)
    assert y1.dtype == dtype and y1.shape == y.shape
    assert set(torch.unique(y1).tolist()) <= set(torch.unique(y).tolist())
    # Image and labels moved together: the grey level still encodes the label almost everywhere
    # (bilinear blending only at object borders).
    decoded = torch.bucketize(x1[:, 0].contiguous(), torch.tensor([0.3, 0.7]))
    assert float((decoded == y1.long()).float().mean()) > 0.93
    assert not torch.equal(y1.long(), y)


def test_instance_labels_and_multichannel_labels():
    x = torch.rand(2, 3, 32, 32)
    inst = torch.randint(0, 100_000, (2, 32, 32))
    _, y1 = geometric(x, inst, gen(3))
    assert set(torch.unique(y1).tolist()) <= set(torch.unique(inst).tolist())
    multi = torch.randint(0, 4, (2, 2, 32, 32))
    x1, m1 = geometric(x, multi, gen(3))
    assert m1.shape == multi.shape
    _, y_only = geometric(x, multi[:, 0], gen(3))
    assert torch.equal(m1[:, 0], y_only)  # the same draws map every label channel


def test_exact_flips_and_turns():
    x, y = blobs(2, 32, 32)
    flip = GeometricParams(p_hflip=1, p_vflip=0, p_rot90=0, p_affine=0, p_elastic=0)
    x1, y1 = geometric(x, y, gen(), flip)
    torch.testing.assert_close(x1, x.flip(-1), rtol=0, atol=1e-5)
    assert torch.equal(y1, y.flip(-1))
    turn = GeometricParams(p_hflip=0, p_vflip=0, p_rot90=1, p_affine=0, p_elastic=0)
    _, y1 = geometric(x, y, gen(), turn)
    for i in range(2):
        assert any(torch.equal(y1[i], torch.rot90(y[i], k, (-2, -1))) for k in (1, 2, 3))
    xr, yr = blobs(2, 24, 40)  # non-square: only 180-degree turns
    _, yr1 = geometric(xr, yr, gen(), turn)
    assert torch.equal(yr1, yr.flip(-1, -2))


def test_no_geometry_is_identity():
    x, y = blobs()
    x1, y1 = geometric(x, y, gen(), NO_GEOMETRY)
    torch.testing.assert_close(x1, x, rtol=0, atol=1e-5)
    assert torch.equal(y1, y)
    x_only, none = geometric(x, None, gen(), NO_GEOMETRY)
    assert none is None and x_only.shape == x.shape


def test_elastic_is_mild():
    x, y = blobs(2, 64, 64)
    elastic = GeometricParams(p_hflip=0, p_vflip=0, p_rot90=0, p_affine=0, p_elastic=1)
    _, y1 = geometric(x, y, gen(4), elastic)
    changed = float((y1 != y).float().mean())
    assert 0.0 < changed < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_photometric_zero_probability_is_exact_identity(device):
    x = torch.rand(3, 3, 20, 24, device=device)
    assert torch.equal(photometric(x, gen(), NO_PHOTOMETRY), x)


def test_photometric_does_not_change_geometry():
    x = torch.full((4, 3, 64, 64), 0.2)
    x[:, :, 20:44, 16:40] = 0.8
    out = photometric(x, gen(7), ALL_PHOTOMETRY)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)
    grey = out.mean(1)
    for i in range(4):
        g = grey[i]
        square = g > (g[20:44, 16:40].mean() + g[:10].mean()) / 2
        inside = torch.zeros_like(square)
        inside[20:44, 16:40] = True
        iou = float((square & inside).sum() / (square | inside).sum())
        assert iou > 0.9
        ys, xs = torch.nonzero(square, as_tuple=True)
        assert abs(float(ys.float().mean()) - 31.5) < 1.0
        assert abs(float(xs.float().mean()) - 27.5) < 1.0


def test_blur_matches_scipy_gaussian():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 3, 24, 20, dtype=torch.float64)
    blur_only = PhotometricParams(
        p_blur=1, blur_sigma=(1.0, 1.0), p_sharpen=0, p_noise=0, p_brightness_contrast=0,
        p_rgb_shift=0,
    )  # fmt: skip
    out = photometric(x, gen(), blur_only).numpy()
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_brightness_and_rgb_shift_ranges():
    x = torch.full((64, 3, 4, 4), 0.5)
    shift_only = PhotometricParams(
        p_blur=0, p_sharpen=0, p_noise=0, p_brightness_contrast=0, p_rgb_shift=1, rgb_shift=0.08
    )
    d = photometric(x, gen(), shift_only) - x
    assert float(d.abs().max()) <= 0.08 + 1e-6
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d))  # one shift per image and channel
    bright_only = PhotometricParams(
        p_blur=0, p_sharpen=0, p_noise=0, p_brightness_contrast=1, p_rgb_shift=0, brightness=0.2
    )
    d = photometric(x, gen(), bright_only) - x
    assert float(d.abs().max()) <= 0.2 + 1e-6 and float(d.std()) > 0.01


def test_cqg_loss_equals_hand_computation():
    torch.manual_seed(0)
    l1 = torch.randn(2, 3, 5, 5, requires_grad=True)
    l2 = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 5))
    total, parts = cqg_loss(l1, l2, target, F.cross_entropy)
    ce1 = F.cross_entropy(l1, target).detach()
    ce2 = F.cross_entropy(l2, target).detach()
    mse = ((l1 - l2) ** 2).mean().detach()
    torch.testing.assert_close(total, 0.3 * ce1 + 0.7 * ce2 + 1.0 * mse)
    assert parts["seg1"] == pytest.approx(float(ce1))
    assert parts["seg2"] == pytest.approx(float(ce2))
    assert parts["consistency"] == pytest.approx(float(mse))
    assert parts["total"] == pytest.approx(float(total.detach()))
    total.backward()
    assert l1.grad is not None and l2.grad is not None
    w = CQGWeights(seg1=1.0, seg2=0.0, consistency=2.0)
    total_w, _ = cqg_loss(l1, l2, target, F.cross_entropy, w)
    torch.testing.assert_close(total_w, ce1 + 2.0 * mse)
    with pytest.raises(InputError, match="same shape"):
        cqg_loss(l1, l2[:, :2], target, F.cross_entropy)


def test_bad_inputs():
    x, y = blobs()
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        geometric(x[0], y, gen())
    with pytest.raises(InputError, match="integer"):
        geometric(x, y.float(), gen())
    with pytest.raises(InputError, match="matching"):
        geometric(x, y[:, :10], gen())
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        photometric((x * 255).to(torch.uint8), gen())
