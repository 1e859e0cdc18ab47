"""Colour transforms, Reinhard transfer, tissue statistics, normalize_colors and `dgseg normalize`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from napari_dgseg.core.color import transfer as transfer_mod
from napari_dgseg.core.color.tissue import (
    colour_to_float,
    has_tissue,
    image_color_stats,
    split_image,
    tissue_mask,
)
from napari_dgseg.core.color.transfer import (
    NormalizationSkippedWarning,
    color_stats,
    normalize_colors,
    transfer,
)
from napari_dgseg.core.color.transforms import (
    SPACES,
    CielabToRgb,
    LabReinhardToRgb,
    RgbToCielab,
    RgbToLabReinhard,
    cielab_to_rgb,
    from_space,
    lab_reinhard_to_rgb,
    rgb_to_cielab,
    rgb_to_lab_reinhard,
    to_space,
)
from napari_dgseg.core.errors import InputError

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


# ----------------------------------------------------------------------------------------------
# A straightforward numpy implementation of the paper's equations (methods.md section 3), written
# independently of the torch code: per-pixel matrix products, log10/10**, per-channel mean/std.
# ----------------------------------------------------------------------------------------------
NP_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
NP_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)


def np_rgb_to_lab(rgb_hwc: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    lms = rgb_hwc @ NP_LMS.T
    return np.log10(np.maximum(lms, eps)) @ NP_LAB.T


def np_lab_to_rgb(lab_hwc: np.ndarray) -> np.ndarray:
    lms = 10.0 ** (lab_hwc @ np.linalg.inv(NP_LAB).T)
    return np.clip(lms @ np.linalg.inv(NP_LMS).T, 0.0, 1.0)


def np_transfer(src_hwc: np.ndarray, ref_hwc: np.ndarray) -> np.ndarray:
    s, r = np_rgb_to_lab(src_hwc), np_rgb_to_lab(ref_hwc)
    s_mu, s_sd = s.reshape(-1, 3).mean(0), s.reshape(-1, 3).std(0)
    r_mu, r_sd = r.reshape(-1, 3).mean(0), r.reshape(-1, 3).std(0)
    return np_lab_to_rgb((s - s_mu) / s_sd * r_sd + r_mu)


def chw(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(dtype)


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().cpu().numpy()


def smooth_image(seed: int, h: int = 48, w: int = 40, lo: float = 0.15, hi: float = 0.85):
    """A smooth random float64 RGB image in [lo, hi] (stays inside (0, 1) after mild transfers)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        np.sin(
            2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx) + rng.uniform(0, 6)
        )
        for _ in range(3)
    ]
    img = np.stack(chans, -1) * 0.5 + 0.5 + rng.normal(0, 0.05, (h, w, 3))
    return lo + (hi - lo) * np.clip(img, 0, 1)


# ---------------------------------------------------------------------------------------- transforms
@pytest.mark.slow
def test_reinhard_round_trip_all_8bit_colours():
    """Every one of the 256**3 colours survives RGB -> l-alpha-beta -> RGB in float32 (< 1e-4)."""
    v = torch.arange(256, dtype=torch.float32) / 255.0
    worst = 0.0
    for r0 in range(0, 256, 32):
        grid = torch.stack(torch.meshgrid(v[r0 : r0 + 32], v, v, indexing="ij"))
        rgb = grid.reshape(3, 32 * 256, 256)
        back = lab_reinhard_to_rgb(rgb_to_lab_reinhard(rgb))
        assert back.dtype == torch.float32
        worst = max(worst, float((back - rgb).abs().max()))
    assert worst < 1e-4, worst


def test_reinhard_black_is_guarded():
    black = torch.zeros(1, 3, 2, 2)
    lab = rgb_to_lab_reinhard(black)
    assert torch.isfinite(lab).all()
    assert float(lab_reinhard_to_rgb(lab).abs().max()) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("space", SPACES)
def test_round_trip_float_and_batched(device, space):
    rng = np.random.default_rng(1)
    rgb = torch.from_numpy(rng.uniform(0, 1, (2, 3, 9, 7))).float().to(device)
    lab = to_space(rgb, space)
    assert lab.shape == rgb.shape and lab.device == rgb.device and lab.dtype == torch.float32
    back = from_space(lab, space)
    assert float((back - rgb).abs().max()) < 1e-4
    # batched == per image
    single = to_space(rgb[1], space)
    # float32: batched and single calls may sum in another order; CIELAB values reach 100, so
    # allow a few ulps relative (6e-8 each) besides the absolute 1e-5 for values near zero
    torch.testing.assert_close(single, lab[1], rtol=1e-6, atol=1e-5)


def test_reinhard_matches_numpy_equations():
    img = smooth_image(2, lo=0.0, hi=1.0)
    ours = hwc(rgb_to_lab_reinhard(chw(img, torch.float64)))
    np.testing.assert_allclose(ours, np_rgb_to_lab(img), atol=1e-12)
    back = hwc(lab_reinhard_to_rgb(chw(ours, torch.float64)))
    np.testing.assert_allclose(back, np_lab_to_rgb(ours), atol=1e-12)


def test_cielab_matches_skimage():
    from skimage.color import lab2rgb, rgb2lab

    v = np.linspace(0, 1, 33)
    grid = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(33 * 33, 33, 3)
    ours = hwc(rgb_to_cielab(chw(grid)))
    np.testing.assert_allclose(ours, rgb2lab(grid), atol=1e-3)
    lab = rgb2lab(grid)
    back = hwc(cielab_to_rgb(chw(lab)))
    np.testing.assert_allclose(back, lab2rgb(lab), atol=1e-3)


def test_function_and_module_forms_agree():
    rgb = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(RgbToLabReinhard()(rgb), rgb_to_lab_reinhard(rgb))
    torch.testing.assert_close(RgbToLabReinhard(eps=1e-3)(rgb), rgb_to_lab_reinhard(rgb, eps=1e-3))
    lab = rgb_to_lab_reinhard(rgb)
    torch.testing.assert_close(LabReinhardToRgb()(lab), lab_reinhard_to_rgb(lab))
    torch.testing.assert_close(RgbToCielab()(rgb), rgb_to_cielab(rgb))
    clab = rgb_to_cielab(rgb)
    torch.testing.assert_close(CielabToRgb()(clab), cielab_to_rgb(clab))


def test_gradcheck_forward_transforms():
    torch.manual_seed(0)
    rgb = (0.1 + 0.8 * torch.rand(1, 3, 3, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(rgb_to_lab_reinhard, (rgb,))
    assert torch.autograd.gradcheck(rgb_to_cielab, (rgb,))
    lab = rgb_to_lab_reinhard(rgb).detach().requires_grad_()
    assert torch.autograd.gradcheck(lab_reinhard_to_rgb, (lab,))
    clab = rgb_to_cielab(rgb).detach().requires_grad_()
    assert torch.autograd.gradcheck(cielab_to_rgb, (clab,))


def test_bad_space_and_bad_tensors():
    rgb = torch.rand(3, 4, 4)
    with pytest.raises(InputError, match="lab-reinhard, cielab"):
        to_space(rgb, "hsv")
    with pytest.raises(InputError, match="lab-reinhard"):
        from_space(rgb, "xyz")
    with pytest.raises(InputError, match="shape"):
        rgb_to_lab_reinhard(torch.rand(4, 4, 3))
    with pytest.raises(InputError, match="floating"):
        rgb_to_cielab(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="torch.Tensor"):
        rgb_to_lab_reinhard(np.zeros((3, 4, 4)))


# ------------------------------------------------------------------------------------------ transfer
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("space", SPACES)
def test_transfer_to_own_statistics_is_identity(device, space):
    rgb = chw(smooth_image(3, lo=0.0, hi=1.0)).unsqueeze(0).to(device)
    mean, std = color_stats(rgb, space)
    out = transfer(rgb, mean, std, mean, std, space=space)
    tol = 1e-5 if space == "lab-reinhard" else 5e-5
    assert float((out - rgb).abs().max()) < tol


def test_transfer_matches_numpy_equations():
    src, ref = smooth_image(4, lo=0.0, hi=1.0), smooth_image(5, lo=0.2, hi=0.7)
    expected = np_transfer(src, ref)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        s, r = chw(src, dtype), chw(ref, dtype)
        tm, ts = color_stats(s)
        rm, rs = color_stats(r)
        ours = hwc(transfer(s, tm, ts, rm, rs))
        np.testing.assert_allclose(ours, expected, atol=atol)


def test_transfer_gradcheck():
    torch.manual_seed(1)
    x = (0.3 + 0.4 * torch.rand(1, 3, 3, 3, dtype=torch.float64)).requires_grad_()
    mean, std = color_stats(x.detach())
    ref_mean = (mean + 0.01).requires_grad_()
    ref_std = (std * 1.05).requires_grad_()
    tgt_mean = mean.clone().requires_grad_()
    tgt_std = std.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c, d, e: transfer(a, b, c, d, e), (x, tgt_mean, tgt_std, ref_mean, ref_std)
    )
    assert torch.autograd.gradcheck(lambda a: color_stats(a)[1], (x,))


def test_transfer_batched_stats_and_tiles_are_consistent():
    """Per-image stats broadcast over a batch, and tiling with one set of stats is seam-free."""
    imgs = torch.stack([chw(smooth_image(s)) for s in (6, 7)])
    mean, std = color_stats(imgs)
    assert mean.shape == (2, 3) and std.shape == (2, 3)
    rm, rs = torch.tensor([-0.4, 0.01, 0.0]), torch.tensor([0.2, 0.05, 0.02])
    whole = transfer(imgs, mean, std, rm, rs)
    for i in range(2):
        torch.testing.assert_close(transfer(imgs[i], mean[i], std[i], rm, rs), whole[i])
    tiles = torch.cat(
        [transfer(imgs[0][:, :, c : c + 16], mean[0], std[0], rm, rs) for c in range(0, 40, 16)],
        dim=-1,
    )
    torch.testing.assert_close(tiles, whole[0], rtol=0, atol=1e-6)


def test_color_stats_mask_matches_numpy_and_empty_mask_falls_back():
    img = smooth_image(8)
    mask = np.zeros(img.shape[:2], bool)
    mask[10:30, 5:25] = True
    mean, std = color_stats(chw(img, torch.float64), mask=torch.from_numpy(mask))
    lab = np_rgb_to_lab(img)[mask]
    np.testing.assert_allclose(mean.numpy(), lab.mean(0), atol=1e-12)
    np.testing.assert_allclose(std.numpy(), lab.std(0), atol=1e-12)
    m_all, s_all = color_stats(chw(img, torch.float64))
    m_empty, s_empty = color_stats(
        chw(img, torch.float64), mask=torch.zeros(48, 40, dtype=torch.bool)
    )
    torch.testing.assert_close(m_empty, m_all)
    torch.testing.assert_close(s_empty, s_all)
    flat_mean, flat_std = color_stats(torch.full((3, 4, 4), 0.5))
    assert torch.isfinite(flat_mean).all() and (flat_std > 0).all()
    with pytest.raises(InputError, match="mask"):
        color_stats(chw(img), mask=torch.ones(3, 3, dtype=torch.bool))


def test_transfer_flat_target_no_nan():
    flat = torch.full((1, 3, 8, 8), 0.7)
    mean, std = color_stats(flat)
    out = transfer(flat, mean, std, torch.tensor([-0.3, 0.0, 0.0]), torch.tensor([0.1, 0.1, 0.1]))
    assert torch.isfinite(out).all()
    with pytest.raises(InputError, match="3 values"):
        transfer(flat, mean[..., :2], std, mean, std)


# ------------------------------------------------------------------------------ tissue and numpy API
def slide_like(seed: int = 0, h: int = 120, w: int = 160, tint=(0, 0, 0)) -> np.ndarray:
    """White background with a pink/purple 'tissue' block carrying texture."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 244, np.uint8)
    tissue = smooth_image(seed, h // 2, w // 2, lo=0.0, hi=1.0)
    base = np.array([200, 120, 190]) + np.array(tint)
    block = base + (tissue - 0.5) * np.array([60, 80, 50]) + rng.normal(0, 4, tissue.shape)
    img[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = np.clip(block, 0, 255).astype(
        np.uint8
    )
    return img


def test_tissue_mask_excludes_white_and_black_and_falls_back():
    img = slide_like()
    mask = tissue_mask(img)
    assert mask.dtype == bool
    assert mask[30:90, 40:120].mean() > 0.95
    assert mask[:25].mean() == 0.0 and mask[:, :35].mean() == 0.0
    fundus = np.zeros((100, 100, 3), np.uint8)
    yy, xx = np.mgrid[:100, :100]
    inside = (yy - 50) ** 2 + (xx - 50) ** 2 < 40**2
    fundus[inside] = (180, 80, 30)
    fm = tissue_mask(fundus)
    assert fm[inside].all() and not fm[~inside].any()
    white = np.full((50, 50, 3), 250, np.uint8)
    assert tissue_mask(white).all()
    assert not tissue_mask(white, fallback=False).any()
    assert not has_tissue(white) and has_tissue(img)


def test_image_color_stats_dask_equals_numpy_and_uses_tissue():
    import dask.array as da

    img = slide_like(1, 300, 260)
    m_np, s_np = image_color_stats(img, max_side=100)
    m_da, s_da = image_color_stats(da.from_array(img, chunks=(64, 64, 3)), max_side=100)
    np.testing.assert_allclose(m_da, m_np)
    np.testing.assert_allclose(s_da, s_np)
    assert m_np.shape == (3,) and s_np.shape == (3,)
    # tissue-only stats equal the stats of the tissue block alone (background excluded)
    block = img[75:225, 65:195]
    m_blk, _ = image_color_stats(block, max_side=10_000, tissue_only=False)
    m_full, _ = image_color_stats(img, max_side=10_000)
    np.testing.assert_allclose(m_full, m_blk, atol=2e-3)
    m_all, _ = image_color_stats(img, max_side=10_000, tissue_only=False)
    assert abs(m_all[0] - m_blk[0]) > 0.05


def test_normalize_colors_moves_statistics_to_reference():
    img = slide_like(2, tint=(-40, 30, -30))
    ref = slide_like(3)
    out = normalize_colors(img, ref)
    assert out.dtype == np.uint8 and out.shape == img.shape
    m_ref, s_ref = image_color_stats(ref)
    m_out, s_out = image_color_stats(out)
    m_in, _ = image_color_stats(img)
    assert np.abs(m_out - m_ref).max() < 0.1 * np.abs(m_in - m_ref).max()
    np.testing.assert_allclose(s_out, s_ref, rtol=0.15)
    # background stays white-ish (not included in the statistics, mapped but bright)
    assert out[:10].mean() > 200
    # reference given as statistics gives the same result
    np.testing.assert_array_equal(normalize_colors(img, (m_ref, s_ref)), out)


def test_normalize_colors_dtypes_and_channels():
    img8 = slide_like(4, tint=(20, -20, 10))
    ref = slide_like(5)
    out8 = normalize_colors(img8, ref)
    f = img8.astype(np.float32) / 255
    outf = normalize_colors(f, ref)
    assert outf.dtype == np.float32 and 0.0 <= outf.min() and outf.max() <= 1.0
    assert np.abs(outf * 255 - out8).max() <= 1.0
    # uint16 is read by the imageprep rule (robust percentiles) and written over the full range:
    # the same as normalizing the float image that rule gives, up to uint16 rounding
    img16 = img8.astype(np.uint16) * 16  # 12-bit data in a 16-bit container
    out16 = normalize_colors(img16, ref)
    expected = normalize_colors(colour_to_float(img16), ref)
    assert out16.dtype == np.uint16
    assert np.abs(out16 / 65535.0 - expected).max() <= 1.0 / 65535.0
    rgba = np.concatenate([img8, np.full(img8.shape[:2] + (1,), 77, np.uint8)], -1)
    out_rgba = normalize_colors(rgba, ref)
    assert out_rgba.shape[-1] == 4 and (out_rgba[..., 3] == 77).all()
    np.testing.assert_array_equal(out_rgba[..., :3], out8)
    grey = img8.mean(-1).astype(np.uint8)
    out_grey = normalize_colors(grey, ref)
    assert out_grey.shape == grey.shape + (3,) and out_grey.dtype == np.uint8
    for space in SPACES:
        assert normalize_colors(img8, ref, space=space, tissue_only=False).shape == img8.shape


def test_normalize_colors_blank_tile_is_skipped_with_notice():
    white = np.full((64, 64, 3), 255, np.uint8)
    with pytest.warns(NormalizationSkippedWarning, match="no tissue"):
        out = normalize_colors(white, slide_like(6))
    np.testing.assert_array_equal(out, white)
    flat = np.full((32, 32, 3), 128, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = normalize_colors(flat, slide_like(6), tissue_only=False)
    assert any(issubclass(w.category, NormalizationSkippedWarning) for w in caught)
    np.testing.assert_array_equal(out, flat)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ("reference.png", "image array"),
        (None, "image array"),
        (([0.0, 0.0], [1.0, 1.0]), "3 values"),
        (([0.0, 0.0, 0.0], [1.0, 0.0, 1.0]), "std > 0"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros(5), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
    ],
)
def test_normalize_colors_bad_reference(reference, match):
    with pytest.raises(InputError, match=match):
        normalize_colors(slide_like(7), reference)


def test_normalize_colors_bad_image_and_space():
    ref = slide_like(8)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        normalize_colors(slide_like(9).astype(np.float32), ref)
    with pytest.raises(InputError, match="uint8"):
        normalize_colors(slide_like(9).astype(np.int32), ref)
    with pytest.raises(InputError, match="cielab"):
        normalize_colors(slide_like(9), ref, space="hed")
    nan = slide_like(9).astype(np.float32) / 255
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        normalize_colors(nan, ref)


def test_split_image_grey_channel_axis():
    rgb, alpha, dtype = split_image(np.zeros((5, 6, 1), np.uint16))
    assert rgb.shape == (5, 6, 3) and alpha is None and dtype == np.uint16


def test_row_blocks_do_not_change_result(monkeypatch):
    img, ref = slide_like(10), slide_like(11)
    whole = normalize_colors(img, ref)
    monkeypatch.setattr(transfer_mod, "_BLOCK_PIXELS", 7 * 160)
    np.testing.assert_array_equal(normalize_colors(img, ref), whole)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_normalize_png_and_tif(tmp_path, capsys):
    import skimage.io
    import tifffile

    from napari_dgseg.cli import main

    src, ref = tmp_path / "in.png", tmp_path / "ref.tif"
    img, refimg = slide_like(12, tint=(-30, 20, -20)), slide_like(13)
    skimage.io.imsave(src, img, check_contrast=False)
    tifffile.imwrite(ref, refimg, photometric="rgb")
    for out_name, space in (("out.png", "lab-reinhard"), ("out.tif", "cielab")):
        out = tmp_path / out_name
        rc = main(
            ["normalize", str(src), "--reference", str(ref), "--out", str(out), "--space", space]
        )
        assert rc == 0
        report = json.loads(capsys.readouterr().out)
        assert report["space"] == space and report["out"] == str(out)
        assert set(report) >= {
            "input",
            "reference",
            "out",
            "space",
            "target_mean",
            "target_std",
            "reference_mean",
            "reference_std",
        }
        written = tifffile.imread(out) if out.suffix == ".tif" else skimage.io.imread(out)
        np.testing.assert_array_equal(written, normalize_colors(img, refimg, space=space))
        m_ref = image_color_stats(refimg, space=space)[0]
        np.testing.assert_allclose(report["reference_mean"], m_ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png", "out.tif", "ref.tif"]


def test_cli_normalize_bad_input(tmp_path, capsys):
    import skimage.io

    from napari_dgseg.cli import main

    good = tmp_path / "good.png"
    skimage.io.imsave(good, slide_like(14), check_contrast=False)
    notimg = tmp_path / "notes.png"
    notimg.write_text("this is not an image")
    cases = [
        ([str(tmp_path / "missing.png"), "--reference", str(good)], "does not exist"),
        ([str(good), "--reference", str(notimg)], "could not read reference"),
        ([str(good), "--reference", str(tmp_path)], "does not exist"),
        ([str(good), "--reference", __file__], "not a supported image type"),
    ]
    for argv, message in cases:
        rc = main(["normalize", *argv, "--out", str(tmp_path / "o.png")])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
    rc = main(["normalize", str(good), "--reference", str(good), "--out", str(tmp_path / "o.gif")])
    assert rc == 2 and "unsupported suffix" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
