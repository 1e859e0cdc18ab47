"""Network input features: RGB, and per-image scaled stain densities (core/input_features.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_dgseg.core import input_features as fx
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.predict import run_tiled

H_OD = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E_OD = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def _rgb_from_concentrations(ch: np.ndarray, ce: np.ndarray) -> torch.Tensor:
    """Float RGB in [0, 1] whose optical density is exactly ``ch * H + ce * E``."""
    od = ch[..., None] * H_OD + ce[..., None] * E_OD
    rgb = (256.0 * 10.0 ** (-od) - 1.0) / 255.0
    return torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float64))


def _tissue(seed: int = 0, shape=(64, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ch = rng.uniform(0.05, 0.2, shape)
    ch[rng.random(shape) < 0.2] += 0.6  # nuclei
    ce = rng.uniform(0.2, 0.4, shape)
    return ch, ce


def test_rgb_features_are_the_old_normalisation():
    x = torch.rand(2, 3, 8, 8)
    spec = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    want = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(normalise_input(x, spec), want)
    assert fx.input_channels(spec) == 3


def test_stain_densities_recover_the_concentrations():
    ch, ce = _tissue()
    dens = fx.stain_densities(_rgb_from_concentrations(ch, ce))[0].numpy()
    assert np.allclose(dens[0], ch, atol=1e-6)
    assert np.allclose(dens[1], ce, atol=1e-6)
    white = fx.stain_densities(torch.ones(1, 3, 4, 4))
    assert torch.allclose(white, torch.zeros_like(white), atol=1e-7)


def test_scaled_densities_do_not_change_with_stain_strength():
    """A slide stained k times stronger gives the same scaled channels (the point of them)."""
    ch, ce = _tissue(1)
    spec = {"features": "rgb+stain"}
    weak = normalise_input(_rgb_from_concentrations(0.6 * ch, 0.7 * ce), spec)
    strong = normalise_input(_rgb_from_concentrations(1.5 * ch, 1.3 * ce), spec)
    assert weak.shape == (1, 5, 64, 64)
    assert torch.allclose(weak[:, 3:], strong[:, 3:], atol=1e-3)
    assert not torch.allclose(weak[:, :3], strong[:, :3], atol=1e-2)  # RGB does change


def test_statistics_ignore_blank_glass():
    ch, ce = _tissue(2)
    tissue_only = fx.image_stats(_rgb_from_concentrations(ch, ce))
    ch2, ce2 = np.zeros((64, 192)), np.zeros((64, 192))  # two thirds of the image is glass
    ch2[:, :64], ce2[:, :64] = ch, ce
    with_glass = fx.image_stats(_rgb_from_concentrations(ch2, ce2))
    assert torch.allclose(tissue_only, with_glass, atol=0.02)
    lo_h, hi_h = tissue_only[0, :2].tolist()
    assert 0.05 < lo_h < 0.25 and hi_h > 0.6  # median ~ stroma, 99th percentile ~ nuclei


def test_empty_image_is_not_stretched():
    stats = fx.image_stats(torch.ones(1, 3, 32, 32))
    assert torch.all(stats[:, 1::2] - stats[:, 0::2] >= fx.MIN_SPREAD - 1e-7)
    out = normalise_input(torch.ones(1, 3, 32, 32), {"features": "rgb+stain"})
    assert torch.isfinite(out).all()


def test_unknown_features_are_refused():
    with pytest.raises(ValueError, match="unknown input features"):
        fx.input_channels({"features": "hsv"})


class PerPixelLinear5(nn.Module):
    """Logits linear in the 5 input channels, per pixel (tiling cannot change it)."""

    divisor = 1
    discrete_outputs = ()

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(2, 5, generator=g)

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": torch.einsum("kc,bchw->bkhw", self.A.to(x.dtype), x)}


def test_tiles_share_the_whole_image_statistics():
    """Tiled == one pass over the whole image: every tile uses the image's statistics."""
    ch, ce = _tissue(3, (96, 80))
    ch[:40] *= 0.2  # a pale top: per-tile statistics would differ from the image's
    img = (_rgb_from_concentrations(ch, ce)[0].permute(1, 2, 0).numpy() * 255).round()
    img = img.clip(0, 255).astype(np.uint8)
    spec = {"features": "rgb+stain"}
    model = PerPixelLinear5()
    out = run_tiled(model, img, input_spec=spec, tile=32, overlap=8, device="cpu")["logits"]
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    want = model.infer(normalise_input(x, spec, fx.image_stats(x)))["logits"][0].numpy()
    assert np.allclose(out, want, atol=1e-4)
    per_tile = model.infer(normalise_input(x[..., :32, :32], spec))["logits"][0].numpy()
    assert not np.allclose(per_tile, want[:, :32, :32], atol=1e-2)


# ------------------------------------------------------------------------------ rgb+vessel
def _fundus(seed: int = 0, shape=(96, 96), contrast: float = 0.25) -> np.ndarray:
    """A reddish disc on black with dark, thin vertical and horizontal 'vessels'."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    img = np.zeros((h, w, 3))
    img[fov] = [0.8, 0.45, 0.2]
    img[..., 1] += 0.15 * xx / w  # uneven illumination: the top-hat must remove it
    vessel = np.zeros((h, w), bool)
    vessel[:, w // 3: w // 3 + 3] = True
    vessel[h // 2: h // 2 + 2, :] = True
    vessel &= fov
    img[vessel, 1] -= contrast
    img[..., 1] += rng.normal(0, 0.005, (h, w))
    img[~fov] = 0.0
    return (img.clip(0, 1) * 255).round().astype(np.uint8), vessel, fov


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def test_vessel_tophat_is_the_square_white_tophat_of_inverted_green():
    from skimage.morphology import white_tophat

    img, _, _ = _fundus(1)
    x = _t(img)
    got = fx.vessel_tophat(x, radius=3)[0, 0].numpy()
    inv = 1.0 - x[0, 1].numpy().astype(np.float64)
    want = white_tophat(np.pad(inv, 7, mode="edge"), np.ones((7, 7), bool))[7:-7, 7:-7]
    assert np.allclose(got, want, atol=1e-6)


def test_vessel_feature_marks_vessels_whatever_their_contrast():
    """Scaled by the image's own percentiles: a faint and a strong camera give the same map."""
    spec = {"features": "rgb+vessel"}
    maps = []
    for contrast in (0.08, 0.3):
        img, vessel, fov = _fundus(2, contrast=contrast)
        x = _t(img)
        feat = fx.build_input(x, spec)
        assert feat.shape == (1, 4, 96, 96) and fx.input_channels(spec) == 4
        v = feat[0, 3].numpy()
        assert v[vessel].mean() > 0.7 and abs(np.median(v[fov & ~vessel])) < 0.1
        maps.append(v)
    assert np.abs(maps[0] - maps[1])[fov].mean() < 0.1


def test_vessel_statistics_ignore_the_dark_surround():
    img, _, fov = _fundus(3)
    st = fx.image_stats(_t(img), {"features": "rgb+vessel"})
    inside = fx.vessel_tophat(_t(img))[0, 0].numpy()[fov]
    assert st.shape == (1, 2)
    assert st[0, 0] == pytest.approx(float(np.quantile(inside, 0.5)), abs=1e-4)
    assert st[0, 1] == pytest.approx(float(np.quantile(inside, 0.99)), abs=1e-3)
