"""Target-statistics adaptation: every BatchNorm re-estimated, cumulative, restorable; GroupNorm no-op."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
from napari_dgseg.core.errors import CancelledError
from napari_dgseg.core.registry import get_family
from napari_dgseg.core.train.norm_stats import (
    batchnorm_layers,
    frozen_batchnorm,
    norm_kind,
    reestimate_batchnorm,
)

SPEC = dict(DEFAULT_INPUT_SPEC)


def _model(family: str, norm: str = "batch") -> torch.nn.Module:
    fam = get_family(family)
    torch.manual_seed(0)
    return fam.build_model(fam.make_config({"widths": [8, 16, 32], "norm": norm})).eval()


def _images(n: int = 4, side: int = 64, offset: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.clip(rng.normal(120 + offset, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def test_every_branch_of_hovernet_is_reestimated():
    """HoVer-Net's HV decoder is not on ``forward``'s path; its statistics must change too."""
    model = _model("hovernet")
    hv = [m for m in model.hv_decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert hv, "the HV branch has BatchNorm layers"
    before = [m.running_mean.clone() for m in hv]
    report = reestimate_batchnorm(model, _images(), SPEC, size=64)
    assert report["layers"] == len(batchnorm_layers(model)) and report["untouched"] == 0
    assert all(not torch.equal(b, m.running_mean) for b, m in zip(before, hv, strict=True))
    assert not model.training and all(not m.training for m in batchnorm_layers(model))
    assert all(m.momentum == 0.1 for m in batchnorm_layers(model))  # restored


def test_statistics_are_the_cumulative_average_of_the_crops():
    """First layer: running mean = mean over all crops of the first conv's output (not an EMA)."""
    model = _model("unet")
    imgs = _images(6, 64)
    reestimate_batchnorm(model, imgs, SPEC, size=64, batch=2)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.5) / 0.25
    conv = model.encoder.stages[0][0]
    with torch.no_grad():
        y = conv(x)
    bn = batchnorm_layers(model)[0]
    torch.testing.assert_close(bn.running_mean, y.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_shifted_images_move_the_statistics_and_a_cancel_restores_them():
    model = _model("unet")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        reestimate_batchnorm(model, _images(), SPEC, size=64, cancel=ev)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    a = reestimate_batchnorm(model, _images(offset=0), SPEC, size=64)
    m0 = batchnorm_layers(model)[0].running_mean.clone()
    reestimate_batchnorm(model, _images(offset=60), SPEC, size=64)
    assert a["crops"] == 4 and not torch.equal(m0, batchnorm_layers(model)[0].running_mean)


def test_groupnorm_network_has_nothing_to_reestimate():
    model = _model("unet", norm="group")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = reestimate_batchnorm(model, _images(), SPEC, size=64)
    assert norm_kind(model) == "group" and report["layers"] == 0 and "GroupNorm" in report["note"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_frozen_batchnorm_keeps_statistics_during_training_passes():
    model = _model("unet").train()
    stats = [m.running_mean.clone() for m in batchnorm_layers(model)]
    x = torch.randn(2, 3, 64, 64) * 3 + 2
    with frozen_batchnorm(model):
        model(x).sum().backward()
        assert model.training and all(not m.training for m in batchnorm_layers(model))
    assert all(m.training for m in batchnorm_layers(model))  # modes restored
    for s, m in zip(stats, batchnorm_layers(model), strict=True):
        assert torch.equal(s, m.running_mean)
    assert batchnorm_layers(model)[0].weight.grad is not None  # affine still learns


def test_images_smaller_than_the_crop_are_used_whole_at_the_divisor():
    model = _model("unet")  # divisor 4
    report = reestimate_batchnorm(model, _images(3, side=70), SPEC, size=256)
    assert report["crops"] == 3 and report["untouched"] == 0
