"""Label-free selection signals: perturbations, agreement/certainty, degeneracy, choice, Spearman."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
from napari_dgseg.core.train.selection import (
    PERTURBATIONS,
    choose,
    is_degenerate,
    label_free_signals,
    perturb,
    spearman,
)


class _Threshold(torch.nn.Module):
    """Foreground where the (normalised) red channel is below ``t``; sharpness ``k``."""

    divisor = 1
    discrete_outputs: tuple[str, ...] = ()

    def __init__(self, t: float, k: float) -> None:
        super().__init__()
        self.t, self.k = t, k

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fg = self.k * (self.t - x[:, :1])
        return {"logits": torch.cat([-fg, fg], dim=1) / 2}


def _image() -> np.ndarray:
    img = np.full((64, 64, 3), 225, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 150] = (90, 50, 140)
    return img


def test_perturbations_are_deterministic_photometric_changes():
    img = _image()
    for p in PERTURBATIONS:
        a, b = perturb(img, p, seed=3), perturb(img, p, seed=3)
        assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
        assert not np.array_equal(a, img)


def test_a_confident_consistent_model_scores_higher_than_an_unsure_one():
    spec = dict(DEFAULT_INPUT_SPEC)
    sharp = label_free_signals(_Threshold(0.0, 20.0), [_image()], spec)
    soft = label_free_signals(_Threshold(0.0, 0.3), [_image()], spec)
    assert sharp["certainty"] > soft["certainty"]
    assert 0.0 < sharp["foreground"] < 0.3 and sharp["agreement"] > 0.9


def test_prior_match_prefers_the_foreground_fraction_of_the_reference():
    """The selection score: closeness of the nucleus fraction to the target-statistics estimate."""
    spec = dict(DEFAULT_INPUT_SPEC)
    img = [_image()]
    disk = float((_image()[..., 0] < 128).mean())  # the true foreground fraction
    right = label_free_signals(_Threshold(0.0, 20.0), img, spec, reference_foreground=disk)
    too_much = label_free_signals(_Threshold(2.0, 20.0), img, spec, reference_foreground=disk)
    assert too_much["foreground"] > 2 * right["foreground"]
    assert right["score"] == right["prior_match"] > too_much["score"]
    assert right["prior_match"] > -0.1 and right["foreground_reference"] == pytest.approx(disk, abs=1e-4)


def test_degenerate_checkpoints_are_never_chosen():
    parent = {"agreement": 0.8, "certainty": 0.7, "foreground": 0.3, "score": 0.56}
    everything = {"agreement": 1.0, "certainty": 1.0, "foreground": 0.99, "score": 1.0}
    assert is_degenerate(everything, parent) and not is_degenerate(parent, parent)
    better = {"agreement": 0.85, "certainty": 0.8, "foreground": 0.28}
    rows = [parent, everything | {"degenerate": True}, better | {"degenerate": False}]
    assert choose(rows, "certainty") == 2
    assert choose([parent, {"agreement": 0.5, "certainty": 0.5, "foreground": 0.3}],
                  "certainty") == 0
    pm = [parent | {"prior_match": -0.5}, better | {"prior_match": -0.1},
          everything | {"prior_match": 0.0, "degenerate": True}]
    assert choose(pm) == 1  # the default score, prior_match; ties keep the parent
    assert choose([parent | {"prior_match": -0.1}, better | {"prior_match": -0.1}]) == 0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))
