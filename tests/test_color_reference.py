"""Colour spaces and Reinhard transfer against independent references.

* l-alpha-beta: a numpy implementation written here from Reinhard, Ashikhmin, Gooch and Shirley
  (2001), "Color transfer between images" (IEEE CG&A 21(5)): the RGB -> LMS matrix, the log, the
  decorrelating matrix ``diag(1/sqrt3, 1/sqrt6, 1/sqrt2) [[1,1,1],[1,1,-2],[1,-1,0]]`` and the
  paper's own inverse ``[[1,1,1],[1,1,-1],[1,-2,0]] diag(sqrt3/3, sqrt6/6, sqrt2/2)``.
* CIELAB: ``skimage.color.rgb2lab`` / ``lab2rgb`` with illuminant D65 and the 2-degree observer
  (what the module documents).
* Transfer: after ``transfer`` with the image's own statistics as target, the output's per-channel
  mean and std in the working space equal the reference's. Target and reference statistics are
  chosen far apart (means and stds) so that mixing them up cannot pass.

Edge colours (black, white, primaries, greys, values on both sides of the sRGB and CIELAB
piecewise thresholds) are tested along with random colours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.color.transfer import STD_FLOOR, color_stats, transfer
from napari_dgseg.core.color.transforms import (
    SPACES,
    cielab_to_rgb,
    from_space,
    lab_reinhard_to_rgb,
    rgb_to_cielab,
    rgb_to_lab_reinhard,
    to_space,
)
from napari_dgseg.core.errors import InputError

# ------------------------------------------------------------------------------------------------
# Reinhard et al. 2001, written from the paper
# ------------------------------------------------------------------------------------------------
RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
#: The paper's printed LMS -> RGB matrix (rounded to 4 decimals; only a transcription check).
LMS_TO_RGB_PRINTED = np.array(
    [[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]]
)
LOG_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
LAB_TO_LOG = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -2.0, 0.0]]) @ np.diag(
    [np.sqrt(3) / 3, np.sqrt(6) / 6, np.sqrt(2) / 2]
)
EPS = 1e-6  # the documented guard before log10 (black only)


def ref_rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (..., 3) l-alpha-beta, per pixel, float64."""
    lms = np.einsum("ij,...j->...i", RGB_TO_LMS, rgb)
    return np.einsum("ij,...j->...i", LOG_TO_LAB, np.log10(np.maximum(lms, EPS)))


def ref_lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) l-alpha-beta -> RGB clipped to [0, 1], with the exact inverse of RGB_TO_LMS."""
    lms = 10.0 ** np.einsum("ij,...j->...i", LAB_TO_LOG, lab)
    return np.clip(np.einsum("ij,...j->...i", np.linalg.inv(RGB_TO_LMS), lms), 0.0, 1.0)


def to_t(a: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """(H, W, 3) numpy -> (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(dtype)


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def edge_colours() -> np.ndarray:
    """(N, 1, 3): cube corners, greys, 8-bit steps near 0 and 1, both sides of the thresholds."""
    corners = np.array(np.meshgrid([0.0, 1.0], [0.0, 1.0], [0.0, 1.0])).reshape(3, -1).T
    greys = np.repeat(np.linspace(0, 1, 11)[:, None], 3, 1)
    steps = np.array(
        [[1 / 255, 0, 0], [0, 1 / 255, 0], [0, 0, 1 / 255], [254 / 255, 1, 1], [1, 1, 254 / 255]]
    )
    srgb_knee = np.array([[0.04045 - 1e-4] * 3, [0.04045 + 1e-4] * 3, [0.0404, 0.5, 0.0406]])
    # sRGB grey with Y / Yn near (6/29)^3, the CIELAB knee: linear 0.008856 -> sRGB ~0.0955
    lab_knee = np.array([[0.0950] * 3, [0.0960] * 3, [0.0955, 0.0, 0.2]])
    return np.concatenate([corners, greys, steps, srgb_knee, lab_knee])[:, None, :]


def random_colours(seed: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dark = rng.uniform(0.0, 0.12, (n // 3, 3))  # the linear segments of sRGB and CIELAB
    return np.concatenate([rng.uniform(0, 1, (n - n // 3, 3)), dark])[:, None, :]


ALL_COLOURS = [pytest.param(edge_colours(), id="edge"), pytest.param(random_colours(0), id="rand")]


# --------------------------------------------------------------------------------- l-alpha-beta


def test_reference_matrices_transcribed_from_the_paper():
    # the printed inverse is rounded to 4 decimals, so it inverts RGB_TO_LMS only to ~1e-2
    np.testing.assert_allclose(LMS_TO_RGB_PRINTED @ RGB_TO_LMS, np.eye(3), atol=1e-2)
    # the decorrelating matrix and the paper's inverse are exact inverses
    np.testing.assert_allclose(LAB_TO_LOG @ LOG_TO_LAB, np.eye(3), atol=1e-15)


def test_module_matrices_equal_the_published_ones():
    """The float64 matrices the transforms are built from: Reinhard 2001 and sRGB/D65."""
    from napari_dgseg.core.color.transforms import _matrices

    m = _matrices()
    want = {
        "rgb_to_lms": RGB_TO_LMS,
        "lms_to_rgb": np.linalg.inv(RGB_TO_LMS),
        "loglms_to_lab": LOG_TO_LAB,
        "lab_to_loglms": LAB_TO_LOG,
        "rgb_to_xyz": SRGB_TO_XYZ,
        "xyz_to_rgb": np.linalg.inv(SRGB_TO_XYZ),
    }
    assert set(m) == set(want)
    for key, value in want.items():
        assert m[key].dtype == torch.float64, key
        # inverses computed by torch vs numpy LAPACK: a few ulps of entries up to ~5
        np.testing.assert_allclose(m[key].numpy(), value, rtol=0, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("colours", ALL_COLOURS)
def test_lab_reinhard_forward_and_inverse_equal_paper_float64(colours):
    # float64 on both sides, same operations in a different order: differences are rounding,
    # a few ulps of values up to |log10(1e-6) * sqrt3| ~ 10.4, so 1e-12 is ample.
    ours = to_np(rgb_to_lab_reinhard(to_t(colours)))
    np.testing.assert_allclose(ours, ref_rgb_to_lab(colours), rtol=0, atol=1e-12)
    back = to_np(lab_reinhard_to_rgb(to_t(ref_rgb_to_lab(colours))))
    np.testing.assert_allclose(back, ref_lab_to_rgb(ref_rgb_to_lab(colours)), rtol=0, atol=1e-12)
    # round trip: exact, except black, whose LMS was raised to eps: it comes back as
    # inv(M) (eps, eps, eps) ~ 1e-6 (the documented "black within 1e-6")
    black = (colours == 0).all(-1, keepdims=True)
    want = np.where(black, np.linalg.inv(RGB_TO_LMS) @ np.full(3, EPS), colours)
    np.testing.assert_allclose(back, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("colours", ALL_COLOURS)
def test_lab_reinhard_float32_close_to_float64_reference(colours):
    # float32 has a relative precision of 6e-8; log10 and two 3x3 products on values up to
    # ~10 keep the absolute error below ~1e-6, checked with margin at 1e-5.
    ours = rgb_to_lab_reinhard(to_t(colours, torch.float32))
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(to_np(ours), ref_rgb_to_lab(colours), rtol=0, atol=1e-5)
    back = lab_reinhard_to_rgb(to_t(ref_rgb_to_lab(colours), torch.float32))
    assert back.dtype == torch.float32
    np.testing.assert_allclose(to_np(back), colours, rtol=0, atol=1e-5)


def test_lab_reinhard_achromatic_axis():
    """Equal L, M, S (a neutral in LMS) has alpha = beta = 0 and l = sqrt3 log10(v) (paper)."""
    v = np.array([0.02, 0.3, 0.9])
    rgb = np.einsum("ij,nj->ni", np.linalg.inv(RGB_TO_LMS), np.repeat(v[:, None], 3, 1))
    lab = to_np(rgb_to_lab_reinhard(to_t(rgb[:, None, :])))[:, 0, :]
    np.testing.assert_allclose(lab[:, 1:], 0.0, atol=1e-13)
    np.testing.assert_allclose(lab[:, 0], np.sqrt(3) * np.log10(v), atol=1e-13)


def test_lab_reinhard_black_uses_eps_and_custom_eps():
    black = torch.zeros(3, 1, 1, dtype=torch.float64)
    lab = to_np(rgb_to_lab_reinhard(black))[0, 0]
    np.testing.assert_allclose(lab, [np.sqrt(3) * -6.0, 0.0, 0.0], atol=1e-12)
    lab3 = to_np(rgb_to_lab_reinhard(black, eps=1e-3))[0, 0]
    np.testing.assert_allclose(lab3, [np.sqrt(3) * -3.0, 0.0, 0.0], atol=1e-12)
    # the module form passes its eps on
    from napari_dgseg.core.color.transforms import RgbToLabReinhard

    np.testing.assert_allclose(to_np(RgbToLabReinhard(eps=1e-3)(black))[0, 0],
                               [np.sqrt(3) * -3.0, 0.0, 0.0], atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(to_np(RgbToLabReinhard()(black))[0, 0], lab, atol=1e-12)
    # eps only guards values below it: a dark colour is unchanged by eps=1e-6
    dark = np.full((1, 1, 3), 1 / 255)
    np.testing.assert_allclose(
        to_np(rgb_to_lab_reinhard(to_t(dark))), ref_rgb_to_lab(dark), atol=1e-12
    )


def test_lab_reinhard_inverse_clips_out_of_gamut():
    lab = ref_rgb_to_lab(np.array([[[0.5, 0.5, 0.5]]]))
    bright = lab + np.array([1.0, 0.0, 0.0])  # 10**(1/sqrt3 * sqrt3 ...) -> far above white
    dark = lab - np.array([5.0, 0.0, 0.0])
    assert to_np(lab_reinhard_to_rgb(to_t(bright))).min() == 1.0
    assert to_np(lab_reinhard_to_rgb(to_t(dark))).max() < 1e-2
    wild = lab + np.array([0.0, 3.0, -3.0])
    out = to_np(lab_reinhard_to_rgb(to_t(wild)))
    assert out.min() >= 0.0 and out.max() <= 1.0
    unclipped = np.einsum(
        "ij,...j->...i", np.linalg.inv(RGB_TO_LMS), 10.0 ** np.einsum("ij,...j->...i", LAB_TO_LOG, wild)
    )
    np.testing.assert_allclose(out, np.clip(unclipped, 0, 1), atol=1e-12)
    assert (unclipped < 0).any() or (unclipped > 1).any()  # the case really is out of gamut


# --------------------------------------------------------------------------------------- CIELAB
# Tolerances versus scikit-image: skimage uses the rounded CIELAB constants 7.787 and 0.008856
# where the module uses the exact 1 / (3 (6/29)^2) = 7.787037 and (6/29)^3 = 0.0088565. On the
# linear segment (t <= 0.008856) f differs by at most 3.7e-5 * 0.008856 = 3.3e-7, so
# L = 116 fy - 16 by <= 3.8e-5, a = 500 (fx - fy) by <= 1.7e-4, b = 200 (fy - fz) by <= 6.6e-5.
# The limits below are those bounds rounded up; everything else (matrix, white point, sRGB curve)
# is identical, so any other difference would exceed them.
LAB_ATOL = np.array([5e-5, 2e-4, 8e-5])
# Inverse: the same 3.3e-7 (relative to the white point, <= 1.09) in XYZ, times the XYZ -> RGB
# matrix (row sums of absolute values <= 3.3) and the sRGB linear-segment slope 12.92: 1.5e-5.
RGB_ATOL = 1.5e-5


# CIE 15:2004 with exact constants (epsilon = 216/24389 = (6/29)^3, kappa = 24389/27) and the
# sRGB curve of IEC 61966-2-1 (linear segment for C <= 0.04045 and for linear values <=
# 0.0031308), written here in numpy; the module must agree to float64 rounding.
SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
CIE_EPS, CIE_KAPPA = 216 / 24389, 24389 / 27


def ref_rgb_to_cielab(rgb: np.ndarray) -> np.ndarray:
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = np.einsum("ij,...j->...i", SRGB_TO_XYZ, lin) / WHITE_D65
    f = np.where(t > CIE_EPS, np.cbrt(t), (CIE_KAPPA * t + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)  # fmt: skip


def ref_cielab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    t = np.where(f**3 > CIE_EPS, f**3, (116 * f - 16) / CIE_KAPPA)
    lin = np.einsum("ij,...j->...i", np.linalg.inv(SRGB_TO_XYZ), t * WHITE_D65)
    safe = np.maximum(lin, 0.0031308)  # only used where lin > 0.0031308
    return np.clip(np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * safe ** (1 / 2.4) - 0.055), 0, 1)


@pytest.mark.parametrize("colours", ALL_COLOURS)
def test_cielab_equals_exact_cie_equations(colours):
    # float64, same equations: differences are rounding (values <= ~130): 1e-10
    ours = to_np(rgb_to_cielab(to_t(colours)))
    np.testing.assert_allclose(ours, ref_rgb_to_cielab(colours), rtol=0, atol=1e-10)
    lab = ref_rgb_to_cielab(colours)
    np.testing.assert_allclose(to_np(cielab_to_rgb(to_t(lab))), ref_cielab_to_rgb(lab),
                               rtol=0, atol=1e-10)  # fmt: skip


def test_srgb_knee_uses_the_linear_segment():
    """IEC 61966-2-1: C = 0.04045 itself is on the linear segment (the branches differ by 2e-9,
    which moves L* by ~2e-6)."""
    knee = np.full((1, 1, 3), 0.04045)
    ours = to_np(rgb_to_cielab(to_t(knee)))
    np.testing.assert_allclose(ours, ref_rgb_to_cielab(knee), rtol=0, atol=1e-10)
    power = ((0.04045 + 0.055) / 1.055) ** 2.4
    assert abs(power - 0.04045 / 12.92) > 1e-9  # the test can tell the two branches apart


def test_linear_to_srgb_knee_uses_the_linear_segment():
    """IEC 61966-2-1 encoding: a linear value of exactly 0.0031308 is on the 12.92 segment.

    No CIELAB input lands on that value exactly, so the private helper is called directly; the
    two branches differ there by 3e-8.
    """
    from napari_dgseg.core.color.transforms import _linear_to_srgb

    knee = torch.tensor([0.0031308, 0.5], dtype=torch.float64)
    out = _linear_to_srgb(knee).numpy()
    assert out[0] == pytest.approx(12.92 * 0.0031308, abs=1e-15)
    assert out[1] == pytest.approx(1.055 * 0.5 ** (1 / 2.4) - 0.055, abs=1e-15)
    assert abs(1.055 * 0.0031308 ** (1 / 2.4) - 0.055 - 12.92 * 0.0031308) > 1e-8


@pytest.mark.parametrize("colours", ALL_COLOURS)
def test_cielab_forward_equals_skimage(colours):
    from skimage.color import rgb2lab

    ours = to_np(rgb_to_cielab(to_t(colours)))
    want = rgb2lab(colours, illuminant="D65", observer="2")
    err = np.abs(ours - want).reshape(-1, 3).max(0)
    assert (err <= LAB_ATOL).all(), err


@pytest.mark.parametrize("colours", ALL_COLOURS)
def test_cielab_inverse_equals_skimage(colours):
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(colours, illuminant="D65", observer="2")
    ours = to_np(cielab_to_rgb(to_t(lab)))
    np.testing.assert_allclose(ours, lab2rgb(lab, illuminant="D65", observer="2"), atol=RGB_ATOL)
    # own round trip in float64 is exact up to rounding
    np.testing.assert_allclose(to_np(cielab_to_rgb(rgb_to_cielab(to_t(colours)))), colours,
                               atol=1e-12)  # fmt: skip


def test_cielab_anchor_values():
    # white -> L 100, a = b = 0 (white point); black -> 0, 0, 0; these hold exactly by design.
    wb = to_np(rgb_to_cielab(to_t(np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]))))[0]
    # white: XYZ = the row sums of the sRGB matrix, which differ from the D65 white by ~1e-5
    # relative, so L = 100 and a, b are the small exact values below (not 0)
    sums = np.array([0.412453 + 0.357580 + 0.180423, 1.0, 0.019334 + 0.119193 + 0.950227])
    fx, fz = np.cbrt(sums[0] / 0.95047), np.cbrt(sums[2] / 1.08883)
    np.testing.assert_allclose(wb[0], [100.0, 500 * (fx - 1), 200 * (1 - fz)], atol=1e-9)
    np.testing.assert_allclose(wb[1], [0.0, 0.0, 0.0], atol=1e-12)
    # sRGB 0.5 grey: L* = 53.389 (CIE 1976 with the sRGB curve; also skimage's value)
    assert to_np(rgb_to_cielab(to_t(np.full((1, 1, 3), 0.5))))[0, 0, 0] == pytest.approx(
        53.389, abs=1e-3
    )


def test_cielab_inverse_clips_out_of_gamut():
    lab = np.array([[[50.0, 120.0, -120.0], [100.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]])
    out = to_np(cielab_to_rgb(to_t(lab)))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0, 2].max() == 0.0  # below black
    np.testing.assert_allclose(out[0, 1], 1.0, atol=1e-3)


@pytest.mark.parametrize("space", SPACES)
def test_batch_and_leading_dims(space):
    rgb = np.random.default_rng(5).uniform(0, 1, (2, 2, 4, 5, 3))
    t = torch.from_numpy(rgb).permute(0, 1, 4, 2, 3)  # (2, 2, 3, 4, 5)
    out = to_space(t, space)
    assert out.shape == t.shape
    for i in range(2):
        for j in range(2):
            # batched einsum may sum in another order: rounding only
            torch.testing.assert_close(out[i, j], to_space(t[i, j], space), rtol=0, atol=1e-12)
    torch.testing.assert_close(from_space(out, space), t, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------- transfer


def _smooth(seed: int, lo: float, hi: float, tint=(1.0, 1.0, 1.0), h: int = 24, w: int = 20):
    """A smooth random RGB image in [lo, hi] times a per-channel tint (float64)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx)
                           + rng.uniform(0, 6))
        for _ in range(3)
    ]  # fmt: skip
    return (lo + (hi - lo) * np.stack(chans, -1)) * np.array(tint)


def _stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = lab.reshape(-1, 3)
    return flat.mean(0), flat.std(0)  # population std, as documented


# target: dim, bluish; reference: bright, warm. In both spaces every channel mean differs by far
# more than the tolerances and some std ratio is far from 1 (1.6 to 2.6), so swapping a target
# and a reference statistic changes the output by far more than the tolerances; the images stay
# inside the gamut after the transfer (no clipping), which keeps the transfer exactly affine.
TARGET = _smooth(1, 0.30, 0.55, tint=(0.85, 0.9, 1.0))
REFERENCE = _smooth(2, 0.45, 0.75, tint=(1.0, 0.85, 0.85))


def _working_stats(rgb: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    if space == "lab-reinhard":
        return _stats(ref_rgb_to_lab(rgb))
    from skimage.color import rgb2lab

    return _stats(rgb2lab(rgb, illuminant="D65", observer="2"))


@pytest.mark.parametrize("space", SPACES)
def test_transfer_output_has_reference_statistics(space):
    """Module statistics in, module statistics out: equal to the reference's up to float64."""
    t_mean, t_std = color_stats(to_t(TARGET), space)
    r_mean, r_std = color_stats(to_t(REFERENCE), space)
    gap = (r_mean - t_mean).abs().min(), (r_std / t_std).log().abs().max()
    assert gap[0] > 0.01 and gap[1] > 0.4  # target and reference really differ
    out = transfer(to_t(TARGET), t_mean, t_std, r_mean, r_std, space=space)
    # no pixel was clipped, so the transfer is an exact affine map in the working space
    assert float(out.min()) > 1e-6 and float(out.max()) < 1 - 1e-6
    o_mean, o_std = color_stats(out, space)
    # float64 throughout; the only error is rounding of a forward/backward round trip (~1e-13)
    torch.testing.assert_close(o_mean, r_mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(o_std, r_std, rtol=0, atol=1e-9)


@pytest.mark.parametrize("space", SPACES)
def test_transfer_statistics_measured_independently(space):
    """Statistics from numpy (Reinhard) / skimage (CIELAB) in and out."""
    t_mean, t_std = _working_stats(TARGET, space)
    r_mean, r_std = _working_stats(REFERENCE, space)
    out = transfer(to_t(TARGET), t_mean, t_std, r_mean, r_std, space=space)
    rgb = to_np(out)
    assert rgb.min() > 1e-6 and rgb.max() < 1 - 1e-6  # not clipped
    o_mean, o_std = _working_stats(rgb, space)
    if space == "lab-reinhard":
        tol = 1e-10  # same formulas in float64
    else:
        # skimage's CIELAB differs from the module's by <= LAB_ATOL per pixel (see above); that
        # enters through the target statistics (scaled by sigma_ref / sigma_target <= 3) and
        # through the measurement of the output: <= (3 + 1) * 2e-4 < 1e-3. Swapping target and
        # reference means would move the mean by several CIELAB units.
        tol = 1e-3
    np.testing.assert_allclose(o_mean, r_mean, rtol=0, atol=tol)
    np.testing.assert_allclose(o_std, r_std, rtol=0, atol=tol)
    assert np.abs(r_mean - t_mean).min() > 100 * tol


@pytest.mark.parametrize("space", SPACES)
def test_transfer_is_the_per_pixel_formula_for_any_statistics(space):
    """Target statistics need not be the image's own: out = from((x - mu_t) / sd_t * sd_r + mu_r)."""
    mu_t, sd_t = np.array([-0.9, 0.02, -0.01]), np.array([0.15, 0.04, 0.03])
    mu_r, sd_r = np.array([-0.7, -0.01, 0.02]), np.array([0.10, 0.05, 0.02])
    if space == "cielab":
        mu_t, sd_t = np.array([45.0, 8.0, -6.0]), np.array([9.0, 4.0, 5.0])
        mu_r, sd_r = np.array([60.0, 14.0, 3.0]), np.array([6.0, 5.0, 3.0])
    x = to_t(TARGET)
    out = to_np(transfer(x, mu_t, sd_t, mu_r, sd_r, space=space))
    if space == "lab-reinhard":
        want = ref_lab_to_rgb((ref_rgb_to_lab(TARGET) - mu_t) / sd_t * sd_r + mu_r)
        atol = 1e-10
    else:
        from skimage.color import lab2rgb, rgb2lab

        lab = (rgb2lab(TARGET, illuminant="D65", observer="2") - mu_t) / sd_t * sd_r + mu_r
        want = np.clip(lab2rgb(lab, illuminant="D65", observer="2"), 0, 1)
        # per-pixel LAB_ATOL in the input (scaled by sd_r / sd_t <= 1.25) and RGB_ATOL back;
        # CIELAB -> sRGB has a slope below 0.02 per unit here: 2e-4 * 1.25 * 0.02 + 1.5e-5.
        atol = 2e-5
    np.testing.assert_allclose(out, want, rtol=0, atol=atol)


def test_transfer_batched_statistics_per_image():
    imgs = np.stack([TARGET, REFERENCE])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    mu_t = np.stack([_stats(ref_rgb_to_lab(im))[0] for im in imgs])
    sd_t = np.stack([_stats(ref_rgb_to_lab(im))[1] for im in imgs])
    mu_r = np.array([[-0.5, 0.03, 0.01], [-0.8, -0.02, 0.02]])
    sd_r = np.array([[0.08, 0.02, 0.01], [0.05, 0.01, 0.02]])
    out = transfer(x, torch.from_numpy(mu_t), torch.from_numpy(sd_t), mu_r.tolist(), sd_r)
    assert out.shape == x.shape and out.dtype == torch.float64
    for i in range(2):
        want = ref_lab_to_rgb((ref_rgb_to_lab(imgs[i]) - mu_t[i]) / sd_t[i] * sd_r[i] + mu_r[i])
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), want, atol=1e-10)
        lab_mean, lab_std = _stats(ref_rgb_to_lab(out[i].permute(1, 2, 0).numpy()))
        np.testing.assert_allclose(lab_mean, mu_r[i], atol=1e-10)
        np.testing.assert_allclose(lab_std, sd_r[i], atol=1e-10)


@pytest.mark.parametrize("space", SPACES)
def test_transfer_float32_keeps_dtype_and_matches_float64(space):
    t_mean, t_std = color_stats(to_t(TARGET), space)
    r_mean, r_std = color_stats(to_t(REFERENCE), space)
    want = transfer(to_t(TARGET), t_mean, t_std, r_mean, r_std, space=space)
    got = transfer(to_t(TARGET, torch.float32), t_mean, t_std, r_mean, r_std, space=space)
    assert got.dtype == torch.float32
    # float32 round trip through the colour space: ~1e-6 (see the transform tests), margin 1e-5
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_transfer_floors_target_std_and_checks_shapes():
    x = to_t(TARGET)
    mu_t, sd_t = _stats(ref_rgb_to_lab(TARGET))
    mu_r, sd_r = np.array([-0.6, 0.0, 0.01]), np.array([0.1, 0.02, 0.02])
    zero_sd = sd_t.copy()
    zero_sd[2] = 0.0  # a flat channel: divided by STD_FLOOR, not by zero
    out = transfer(x, mu_t, zero_sd, mu_r, sd_r)
    floored = zero_sd.copy()
    floored[2] = STD_FLOOR
    torch.testing.assert_close(out, transfer(x, mu_t, floored, mu_r, sd_r), rtol=0, atol=0)
    assert torch.isfinite(out).all()
    for bad in (np.zeros(2), np.float64(1.0), np.zeros((2, 4))):
        with pytest.raises(InputError, match="3 values per image"):
            transfer(x, bad, sd_t, mu_r, sd_r)
    with pytest.raises(InputError, match="ref_std"):
        transfer(x, mu_t, sd_t, mu_r, np.ones(4))
    with pytest.raises(InputError, match="unknown colour space"):
        transfer(x, mu_t, sd_t, mu_r, sd_r, space="hsv")


def test_color_stats_weighted_mask_and_batch():
    imgs = torch.stack([to_t(TARGET), to_t(REFERENCE)])
    rng = np.random.default_rng(7)
    w = rng.uniform(0, 1, (2,) + TARGET.shape[:2])
    w[1] = 0.0  # empty mask for the second image: falls back to all pixels
    mean, std = color_stats(imgs, "lab-reinhard", mask=torch.from_numpy(w))
    assert mean.shape == (2, 3) and std.shape == (2, 3)
    lab0 = ref_rgb_to_lab(TARGET).reshape(-1, 3)
    w0 = w[0].reshape(-1, 1)
    m0 = (lab0 * w0).sum(0) / w0.sum()
    s0 = np.sqrt((((lab0 - m0) ** 2) * w0).sum(0) / w0.sum())
    np.testing.assert_allclose(mean[0].numpy(), m0, atol=1e-12)
    np.testing.assert_allclose(std[0].numpy(), s0, atol=1e-12)
    m1, s1 = _stats(ref_rgb_to_lab(REFERENCE))
    np.testing.assert_allclose(mean[1].numpy(), m1, atol=1e-12)
    np.testing.assert_allclose(std[1].numpy(), s1, atol=1e-12)
    # no mask at all: plain population statistics; a flat image's std is floored
    m_all, s_all = color_stats(imgs[1], "cielab")
    from skimage.color import rgb2lab

    m_sk, s_sk = _stats(rgb2lab(REFERENCE, illuminant="D65", observer="2"))
    np.testing.assert_allclose(m_all.numpy(), m_sk, atol=LAB_ATOL.max())
    np.testing.assert_allclose(s_all.numpy(), s_sk, atol=2 * LAB_ATOL.max())
    _, s_flat = color_stats(torch.full((3, 4, 4), 0.5, dtype=torch.float64))
    np.testing.assert_allclose(s_flat.numpy(), STD_FLOOR, rtol=1e-6)


# --------------------------------------------------------------------------- exact messages
# Bad input must be answered with one line that names the argument and says what to do; these
# pin the full text (names included), so a message that loses its subject or advice fails.


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("fn", "name"),
    [(rgb_to_lab_reinhard, "rgb"), (rgb_to_cielab, "rgb"), (lab_reinhard_to_rgb, "lab"),
     (cielab_to_rgb, "lab"), (lambda x: transfer(x, [0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]),
                              "rgb")],
)  # fmt: skip
def test_tensor_check_messages(fn, name):
    assert _message(fn, np.zeros((3, 2, 2))) == (
        f"{name} must be a torch.Tensor of shape (3, H, W) or (B, 3, H, W), got ndarray; "
        "convert with torch.from_numpy(array).permute(2, 0, 1)."
    )
    assert _message(fn, torch.zeros(2, 2, 3)) == (
        f"{name} must have shape (3, H, W) or (B, 3, H, W) (channels first, 3 channels), got "
        "(2, 2, 3); move the channel axis with .permute(...) and drop alpha."
    )
    assert _message(fn, torch.zeros(4, 4)) == (
        f"{name} must have shape (3, H, W) or (B, 3, H, W) (channels first, 3 channels), got "
        "(4, 4); move the channel axis with .permute(...) and drop alpha."
    )
    assert _message(fn, torch.zeros(1, 3, 2, 2, dtype=torch.uint8)) == (
        f"{name} must be a floating-point tensor (RGB in [0, 1]), got torch.uint8; "
        "convert uint8 images with .float() / 255."
    )
    # accepted: (3, H, W) and (B, 3, H, W), with W = 3 or H = 3 not mistaken for channels
    for shape in ((3, 3, 3), (2, 3, 4, 3), (1, 1, 3, 3, 5)):
        assert fn(torch.full(shape, 0.5)).shape == shape


def test_space_and_statistics_messages():
    rgb = torch.rand(3, 4, 4, dtype=torch.float64)
    want = "unknown colour space 'hsv'; choose one of lab-reinhard, cielab."
    assert _message(to_space, rgb, "hsv") == want
    assert _message(from_space, rgb, "hsv") == want
    ok = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    for pos, name in enumerate(("target_mean", "target_std", "ref_mean", "ref_std")):
        args = [ok[0], ok[1], ok[0], ok[1]]
        args[pos] = [1.0, 2.0]
        assert _message(transfer, rgb, *args) == (
            f"{name} must have 3 values per image (shape (3,) or (B, 3)), got (2,)."
        )
        args[pos] = 1.0
        assert _message(transfer, rgb, *args) == (
            f"{name} must have 3 values per image (shape (3,) or (B, 3)), got ()."
        )
    # (B, 3) statistics are accepted
    assert transfer(rgb[None].repeat(2, 1, 1, 1), torch.zeros(2, 3), torch.ones(2, 3),
                    torch.zeros(2, 3), torch.ones(2, 3)).shape == (2, 3, 4, 4)  # fmt: skip
    assert _message(color_stats, rgb[None], "cielab", mask=torch.ones(4, 4)) == (
        "mask must have shape (1, 4, 4) (one value per pixel), got (4, 4)."
    )
    assert _message(color_stats, rgb, mask=torch.ones(1, 4, 4)) == (
        "mask must have shape (4, 4) (one value per pixel), got (1, 4, 4)."
    )


def test_reference_messages():
    from napari_dgseg.core.color.transfer import normalize_colors

    img = (np.random.default_rng(0).uniform(0.2, 0.8, (16, 16, 3)) * 255).astype(np.uint8)
    assert _message(normalize_colors, img, ([0, 0], [1, 1])) == (
        "reference given as a pair must be (mean, std) with 3 values each, got shapes (2,) and "
        "(2,); pass an image array instead if that is what you meant."
    )
    assert _message(normalize_colors, img, ([0, 0, 0], [1, 1])) == (
        "reference given as a pair must be (mean, std) with 3 values each, got shapes (3,) and "
        "(2,); pass an image array instead if that is what you meant."
    )
    tail = "(2,) and (3,); pass an image array instead if that is what you meant."
    assert _message(normalize_colors, img, ([0, 0], [1, 1, 1])).endswith(tail)
    for bad in (([0, np.nan, 0], [1, 1, 1]), ([0, 0, 0], [1, np.inf, 1]), ([0, 0, 0], [1, 0, 1]),
                ([0, 0, 0], [1, -1, 1])):  # fmt: skip
        assert _message(normalize_colors, img, bad) == (
            "reference (mean, std) must be finite with std > 0."
        )
    msg = _message(normalize_colors, img, (["a", "b", "c"], [1, 1, 1]))
    assert msg.startswith("reference pair must be (mean, std) with 3 numbers each; could not "
                          "read it as numbers (") and msg.endswith(").")  # fmt: skip
    assert _message(normalize_colors, img, "ref.png") == (
        "reference must be an image array (H, W, 3) or a (mean, std) pair, got str; read the "
        "file first (e.g. skimage.io.imread) or use `dgseg normalize INPUT --reference FILE`."
    )
    assert _message(normalize_colors, img, np.zeros((4, 4, 5), np.uint8)).startswith(
        "reference must have shape"
    )
    # a pair with small positive std and a 3-tuple image-like list are read as intended
    pair = ([-0.5, 0.01, 0.0], [0.1, 0.02, 0.03])
    out = normalize_colors(img, pair, tissue_only=False)
    from napari_dgseg.core.color.tissue import image_color_stats

    m, s = image_color_stats(out, tissue_only=False)
    np.testing.assert_allclose(m, pair[0], atol=0.01)  # uint8 rounding of the output
    np.testing.assert_allclose(s, pair[1], atol=0.01)


def test_normalize_colors_image_messages_and_skip_warnings():
    from napari_dgseg.core.color.transfer import NormalizationSkippedWarning, normalize_colors

    ref = ([-0.5, 0.01, 0.0], [0.1, 0.02, 0.03])
    assert _message(normalize_colors, np.zeros((4, 4, 5), np.uint8), ref).startswith(
        "image must have shape"
    )
    assert _message(normalize_colors, np.zeros((4, 4), np.int32), ref).startswith(
        "image has integer dtype int32"
    )
    white = np.full((32, 32, 3), 255, np.uint8)
    with pytest.warns(NormalizationSkippedWarning) as rec:
        normalize_colors(white, ref)
    assert [str(w.message) for w in rec] == [
        "no tissue found in the image (blank or white background only); colour normalization "
        "skipped, the image is returned unchanged."
    ]
    flat = np.full((32, 32, 3), (150, 60, 120), np.uint8)
    with pytest.warns(NormalizationSkippedWarning) as rec:
        out = normalize_colors(flat, ref)
    assert [str(w.message) for w in rec] == [
        "the image is flat (one colour); colour normalization skipped, the image is returned "
        "unchanged."
    ]
    np.testing.assert_array_equal(out, flat)


def test_normalize_colors_reference_as_lazy_array():
    """A reference that is not an ndarray but array-like (dask) is read as an image."""
    import dask.array as da

    from napari_dgseg.core.color.transfer import normalize_colors

    rng = np.random.default_rng(1)
    img = (rng.uniform(0.2, 0.7, (24, 24, 3)) * 255).astype(np.uint8)
    ref = (np.clip(rng.uniform(0.3, 0.9, (24, 24, 3)) * [1.0, 0.8, 0.9], 0, 1) * 255).astype(
        np.uint8
    )
    want = normalize_colors(img, ref)
    np.testing.assert_array_equal(normalize_colors(img, da.from_array(ref, chunks=8)), want)
    assert np.abs(want.astype(int) - img).max() > 10  # the reference really changed the image


@pytest.mark.parametrize("space", SPACES)
def test_transfer_clips_out_of_gamut_results(space):
    """A reference far brighter / more saturated than the gamut allows: clipped to [0, 1]."""
    x = to_t(TARGET)
    t_mean, t_std = _working_stats(TARGET, space)
    if space == "lab-reinhard":
        r_mean, r_std = t_mean + np.array([0.4, 0.0, 0.0]), t_std * np.array([1.0, 6.0, 6.0])
        unclipped = ref_lab_to_rgb_unclipped((ref_rgb_to_lab(TARGET) - t_mean) / t_std * r_std
                                             + r_mean)  # fmt: skip
    else:
        r_mean, r_std = t_mean + np.array([40.0, 0.0, 0.0]), t_std * np.array([1.0, 8.0, 8.0])
        unclipped = None
    out = to_np(transfer(x, t_mean, t_std, r_mean, r_std, space=space))
    assert out.min() == 0.0 and out.max() == 1.0  # both bounds reached, nothing beyond
    if unclipped is not None:
        assert unclipped.min() < -0.01 and unclipped.max() > 1.01
        np.testing.assert_allclose(out, np.clip(unclipped, 0, 1), rtol=0, atol=1e-10)


def ref_lab_to_rgb_unclipped(lab: np.ndarray) -> np.ndarray:
    lms = 10.0 ** np.einsum("ij,...j->...i", LAB_TO_LOG, lab)
    return np.einsum("ij,...j->...i", np.linalg.inv(RGB_TO_LMS), lms)


def test_color_stats_single_pixel_mask():
    x = to_t(TARGET)
    mask = torch.zeros(TARGET.shape[:2], dtype=torch.bool)
    mask[5, 7] = True  # weight sum exactly 1: not empty
    mean, std = color_stats(x, mask=mask)
    np.testing.assert_allclose(mean.numpy(), ref_rgb_to_lab(TARGET[5, 7]), atol=1e-12)
    np.testing.assert_allclose(std.numpy(), STD_FLOOR, rtol=1e-6)  # one pixel: floored


@pytest.mark.parametrize("space", SPACES)
def test_normalize_colors_matches_reference_statistics_in_its_space(space):
    """The numpy front door in each space: output statistics (in that space) equal the reference's."""
    from napari_dgseg.core.color.tissue import image_color_stats
    from napari_dgseg.core.color.transfer import normalize_colors

    img = (TARGET * 255).round().astype(np.uint8)
    ref = (REFERENCE * 255).round().astype(np.uint8)
    out = normalize_colors(img, ref, space=space, tissue_only=False)
    m_out, s_out = image_color_stats(out, space=space, tissue_only=False)
    m_ref, s_ref = image_color_stats(ref, space=space, tissue_only=False)
    m_in, _ = image_color_stats(img, space=space, tissue_only=False)
    # uint8 output: rounding moves a pixel by <= 0.5/255, i.e. ~0.002 in l-alpha-beta and
    # ~0.3 in CIELAB units; 2 % of the initial mean gap is far above that and far below the gap
    tol = 0.02 * np.abs(m_in - m_ref).max()
    np.testing.assert_allclose(m_out, m_ref, atol=tol)
    np.testing.assert_allclose(s_out, s_ref, atol=tol)


def test_reference_pair_with_non_numeric_std():
    from napari_dgseg.core.color.transfer import normalize_colors

    img = (TARGET * 255).round().astype(np.uint8)
    msg = _message(normalize_colors, img, ([0.0, 0.0, 0.0], ["a", "b", "c"]))
    assert msg.startswith("reference pair must be (mean, std) with 3 numbers each; could not "
                          "read it as numbers (")  # fmt: skip


def _slide(seed: int, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """White background with a textured tissue block (uint8)."""
    img = np.full((90, 120, 3), 245, np.uint8)
    block = _smooth(seed, 0.25, 0.7, tint=tint, h=50, w=70)
    img[20:70, 25:95] = (block * 255).round().astype(np.uint8)
    return img


def test_normalize_colors_tissue_only_switch():
    """tissue_only=False takes the white background into the statistics; True leaves it out."""
    from napari_dgseg.core.color.tissue import image_color_stats
    from napari_dgseg.core.color.transfer import normalize_colors

    img = _slide(3, tint=(0.8, 0.9, 1.0))
    # reference given as statistics, so only the image's statistics depend on the switch
    ref = image_color_stats(_slide(4, tint=(1.0, 0.8, 0.8)))
    out_all = normalize_colors(img, ref, tissue_only=False)
    out_tissue = normalize_colors(img, ref, tissue_only=True)
    assert np.abs(out_all.astype(int) - out_tissue).max() > 10
    r_mean, r_std = ref
    t_mean, t_std = image_color_stats(img, tissue_only=False)
    want = transfer(to_t(img.astype(np.float64) / 255, torch.float32), t_mean, t_std, r_mean,
                    r_std)  # fmt: skip
    want = np.round(to_np(want) * 255)
    assert np.abs(out_all.astype(float) - want).max() <= 1  # uint8 rounding


def test_normalize_colors_warning_points_at_the_caller():
    from napari_dgseg.core.color.transfer import NormalizationSkippedWarning, normalize_colors

    with pytest.warns(NormalizationSkippedWarning) as rec:
        normalize_colors(np.full((16, 16, 3), 255, np.uint8), _slide(5))
    assert rec[0].filename == __file__  # stacklevel 2: the user's line, not transfer.py


def test_normalize_colors_row_blocks_cover_every_row(monkeypatch):
    from napari_dgseg.core.color import transfer as transfer_mod

    img, ref, decoy = _slide(6), _slide(7, tint=(1.0, 0.8, 0.8)), _slide(8, tint=(0.7, 1, 1))
    whole = transfer_mod.normalize_colors(img, ref)
    monkeypatch.setattr(transfer_mod, "_BLOCK_PIXELS", 7 * 120)  # 7-row blocks
    # a decoy of the same size first, so that a block left unwritten would show other values
    transfer_mod.normalize_colors(decoy, ref)
    np.testing.assert_array_equal(transfer_mod.normalize_colors(img, ref), whole)


def test_color_stats_keep_the_image_dtype_with_any_mask_dtype():
    x = to_t(TARGET, torch.float32)
    for mask in (torch.ones(TARGET.shape[:2], dtype=torch.float64),
                 torch.ones(TARGET.shape[:2], dtype=torch.bool)):  # fmt: skip
        mean, std = color_stats(x, mask=mask)
        assert mean.dtype == torch.float32 and std.dtype == torch.float32
