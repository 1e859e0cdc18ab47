"""Label-free selection signals: perturbations, agreement/certainty, degeneracy, choice, Spearman."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
from napari_dgseg.core.train.selection import (
    GUARD,
    PERTURBATIONS,
    UNGUARDED,
    DriftGuard,
    choose,
    is_degenerate,
    label_free_signals,
    perturb,
    select_checkpoint,
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
    assert choose(rows, "certainty", guard=UNGUARDED) == 2  # skipped
    assert choose(rows, "certainty") == 0  # the default guard also stops at it (drift)
    assert choose([parent, {"agreement": 0.5, "certainty": 0.5, "foreground": 0.3}],
                  "certainty") == 0
    pm = [parent | {"prior_match": -0.5}, better | {"prior_match": -0.1},
          everything | {"prior_match": 0.0, "degenerate": True}]
    assert choose(pm) == 1  # the default score, prior_match; ties keep the parent
    assert choose([parent | {"prior_match": -0.1}, better | {"prior_match": -0.1}]) == 0


def _ckpt(iteration: int, prior_match: float, certainty: float, agreement: float = 0.96,
          foreground: float = 0.40) -> dict:
    return {"iteration": iteration, "prior_match": prior_match, "score": prior_match,
            "certainty": certainty, "agreement": agreement, "foreground": foreground,
            "degenerate": False}


def test_a_drifted_checkpoint_with_the_best_prior_match_is_not_returned():
    """Issue 11's failure (ho-dark-blue seed 7): a drifting checkpoint that happens to match the
    reference nucleus fraction best. Its certainty collapsed, so the guard keeps the earlier one."""
    run = [_ckpt(0, -0.020, 0.93), _ckpt(20, -0.012, 0.935), _ckpt(40, -0.060, 0.86),
           _ckpt(60, -0.001, 0.62, agreement=0.91)]  # drifted, yet the best prior_match
    assert choose(run, guard=UNGUARDED) == 3  # what the unguarded rule returned
    i, record = select_checkpoint(run)
    assert i == 1
    assert record["stopped_at"] == 40 and record["passed_over"] == [60]
    assert "certainty fell 0.930 -> 0.860" in record["note"]
    assert [d["iteration"] for d in record["drifted"]] == [40, 60]
    # Without early stopping the checkpoint that lost certainty is still out, the best other wins.
    no_stop = DriftGuard(certainty_drop=GUARD.certainty_drop, agreement_drop=GUARD.agreement_drop)
    assert choose(run, guard=no_stop) == 1
    # Drift at the first scored checkpoint: the parent is kept.
    assert choose([run[0], _ckpt(20, -0.010, 0.80), _ckpt(40, -0.001, 0.70)]) == 0
    # A checkpoint must beat the parent's score by more than the margin (0.005) to replace it.
    assert choose([run[0], _ckpt(20, -0.016, 0.93)]) == 0
    assert choose([run[0], _ckpt(20, -0.014, 0.93)]) == 1


def test_an_agreement_drop_alone_is_a_sign_of_drift():
    run = [_ckpt(0, -0.021, 0.928, agreement=0.960), _ckpt(20, -0.063, 0.913, agreement=0.948),
           _ckpt(80, -0.005, 0.90, agreement=0.955)]
    assert choose(run, guard=UNGUARDED) == 2
    i, record = select_checkpoint(run)
    assert i == 0 and record["stopped_at"] == 20 and "agreement fell" in record["note"]


def test_a_healthy_improvement_is_still_chosen():
    """Certainty and agreement within the guard's tolerance: the best prior_match wins, the guard
    records nothing, and the margin keeps the parent on a tie."""
    run = [_ckpt(0, -0.030, 0.93, agreement=0.960), _ckpt(20, -0.010, 0.935, agreement=0.958),
           _ckpt(40, -0.002, 0.915, agreement=0.952), _ckpt(60, -0.020, 0.94)]
    i, record = select_checkpoint(run)
    assert i == 2 and record["drifted"] == [] and record["note"] is None
    assert record["stopped_at"] is None and record["passed_over"] == []
    assert choose(run, guard=DriftGuard(margin=0.05)) == 0  # nothing beats the parent by 0.05
    assert choose(run, guard=DriftGuard(margin=0.025)) == 2


def test_degenerate_checkpoints_stop_a_guarded_search():
    run = [_ckpt(0, -0.02, 0.93), _ckpt(20, -0.01, 0.93) | {"degenerate": True, "foreground": 0.9},
           _ckpt(40, -0.001, 0.93)]
    assert choose(run, guard=UNGUARDED) == 2  # degenerate rows are only skipped
    i, record = select_checkpoint(run)
    assert i == 0 and record["stopped_at"] == 20 and "degenerate" in record["drifted"][0]["signs"][0]
    assert GUARD.name == "m0.005+c0.02+a0.01+stop" and "early stop" in GUARD.describe()


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_the_guarded_choice_only_ever_moves_to_the_newest_checkpoint():
    """adapt keeps a checkpoint's weights when it is chosen as it is scored; that is the final
    choice only if a longer run's choice is either the earlier choice or the new checkpoint."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        run = [_ckpt(20 * i, -float(rng.uniform(0, 0.1)), float(rng.uniform(0.85, 0.95)),
                     agreement=float(rng.uniform(0.94, 0.97))) | {"degenerate": bool(rng.random() < 0.1)}
               for i in range(6)]
        run[0]["degenerate"] = False
        for guard in (GUARD, UNGUARDED, DriftGuard(margin=0.01, certainty_drop=0.05)):
            for k in range(1, len(run)):
                assert choose(run[: k + 1], guard=guard) in (choose(run[:k], guard=guard), k)


def test_the_guard_can_compare_with_a_target_statistics_baseline():
    """``baseline`` (benchmarks/dual_guard.py's replay of ``norm="dual"`` runs): certainty and
    agreement are compared with the target-statistics model's signals, not the parent's; the
    score and the degenerate check stay the parent's."""
    parent = _ckpt(0, -0.015, 0.92, agreement=0.973)
    stats_model = _ckpt(1, 0.0, 0.870, agreement=0.875)  # the parent with target statistics
    run = [parent, _ckpt(20, -0.005, 0.886, agreement=0.891), _ckpt(40, -0.001, 0.80)]
    i, record = select_checkpoint(run)  # against the parent: drift at 20, the parent is kept
    assert i == 0 and record["stopped_at"] == 20
    i, record = select_checkpoint(run, baseline=stats_model)
    assert i == 1 and record["stopped_at"] == 40
    assert "target-statistics baseline" in record["drifted"][0]["signs"][0]
    assert "target-statistics model" in record["guard"]
    # A baseline more certain than the parent makes the guard stricter, not looser.
    assert choose(run[:2], baseline=_ckpt(1, 0.0, 0.95, agreement=0.98)) == 0
    # The score is still compared with the parent's: nothing better than it, the parent stays.
    assert choose([parent, _ckpt(20, -0.030, 0.9, agreement=0.9)], baseline=stats_model) == 0


def test_the_default_guard_is_the_one_the_recorded_study_chose():
    """``GUARD`` is what ``benchmarks/selection_rules.py`` picked on the selection runs of the
    current parent (docs/hovernet-mani.md); a new study that picks another rule fails here."""
    import json
    from pathlib import Path

    study = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "selection_rules_long.json"
    chosen = json.loads(study.read_text())["chosen"]
    assert chosen["rule"] == GUARD.name and chosen["guard"] == GUARD.describe()
