"""``norm="dual"`` (domain-specific BatchNorm statistics during MaNi) against ``norm="frozen"``.

Every training pass of the network is watched through ``HoVerNet.mani_forward``: its input tells
whether it is a source (replay) or a target pass (the targets are made much darker than the
replay crops), and the first BatchNorm layer's buffers tell which statistics normalised it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.families.hovernet.model import HoVerNet
from napari_dgseg.core.train.adapt import NORM_MODES, adapt
from napari_dgseg.core.train.norm_stats import (
    DomainStatistics,
    batchnorm_layers,
    reestimate_batchnorm,
)
from napari_dgseg.core.train.selection import DriftGuard

# target_scale="native": the expected statistics are computed on the images as given (the
# resampling to the model's scale has its own tests, tests/test_target_scale.py)
KW = dict(iters=3, size=64, batch=2, seed=5, lr=1e-2, warmup=0.0, select_every=1,
          source_augment="none", target_scale="native")


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory):
    from napari_dgseg.core.train.source import train

    samples = []
    for i in range(3):
        img, lab = disks_image(96, seed=i, n=8)
        img = img.copy()
        img[lab > 0] = (90, 40, 140)
        samples.append(Sample(img, lab, f"img{i}", domain="source"))
    path = tmp_path_factory.mktemp("dual") / "parent.dgseg"
    train("hovernet", [samples], out=path, iters=4, size=64, batch=2,
          config={"widths": [8, 16, 32]}, seed=0)
    return path


def _dark_targets(n: int = 3) -> list[np.ndarray]:
    out = []
    for i in range(n):
        img, lab = disks_image(96, seed=100 + i, n=8)
        img = (img.astype(np.float32) * 0.25).astype(np.uint8)  # far darker than the source
        img[lab > 0] = (30, 10, 40)
        out.append(img)
    return out


def _watch(monkeypatch) -> list[dict]:
    """Record every training pass: its domain (by input brightness), the first BatchNorm layer's
    running mean and whether that layer was in training mode."""
    passes: list[dict] = []
    original = HoVerNet.mani_forward

    def watched(self, x):
        if torch.is_grad_enabled():  # the training passes (the probe runs without gradients)
            bn = batchnorm_layers(self)[0]
            passes.append({"mean_input": float(x.mean()), "running_mean": bn.running_mean.clone(),
                           "bn_training": bn.training})
        return original(self, x)

    monkeypatch.setattr(HoVerNet, "mani_forward", watched)
    return passes


def _split(passes: list[dict]) -> tuple[list[dict], list[dict]]:
    level = np.median([p["mean_input"] for p in passes])
    source = [p for p in passes if p["mean_input"] > level]
    target = [p for p in passes if p["mean_input"] <= level]
    assert len(source) == len(target) == KW["iters"]  # one source and one target pass each
    assert max(p["mean_input"] for p in target) < min(p["mean_input"] for p in source) - 0.5
    return source, target


def _target_statistics(parent, images) -> torch.Tensor:
    twin = copy.deepcopy(parent.model)
    reestimate_batchnorm(twin, images, parent.input_spec, size=64, device="cpu")
    return batchnorm_layers(twin)[0].running_mean.clone()


def test_dual_source_passes_see_parent_statistics_target_passes_the_target_ones(parent_file,
                                                                                monkeypatch):
    assert "dual" in NORM_MODES
    parent = load_bundle(parent_file)
    parent_mean = batchnorm_layers(parent.model)[0].running_mean.clone()
    targets = _dark_targets()
    target_mean = _target_statistics(parent, targets)
    assert not torch.allclose(parent_mean, target_mean, atol=1e-3)  # the test can tell them apart
    passes = _watch(monkeypatch)
    seen: dict[int, torch.Tensor] = {}

    def hook(it, model):
        seen[it] = batchnorm_layers(model)[0].running_mean.clone()

    new = adapt(parent, targets, norm="dual", select=False, checkpoint_hook=hook, **KW)
    source, target = _split(passes)
    for p in source:
        torch.testing.assert_close(p["running_mean"], parent_mean)
        assert not p["bn_training"]  # eval mode: nothing updates the statistics
    for p in target:
        torch.testing.assert_close(p["running_mean"], target_mean)
        assert not p["bn_training"]
    # checkpoint 0 is the parent with its own statistics, later ones carry the target statistics
    torch.testing.assert_close(seen[0], parent_mean)
    for it in (1, 2, 3):
        torch.testing.assert_close(seen[it], target_mean)
    # the returned model is a model for the target domain
    torch.testing.assert_close(batchnorm_layers(new.model)[0].running_mean, target_mean)
    assert new.provenance["norm"].startswith("dual: ")
    assert new.provenance["target_statistics"]["layers"] == len(batchnorm_layers(parent.model))
    # the parent is untouched
    torch.testing.assert_close(batchnorm_layers(parent.model)[0].running_mean, parent_mean)


def test_dual_selection_can_still_return_the_parent_with_its_own_statistics(parent_file,
                                                                            monkeypatch):
    from napari_dgseg.core.train import selection

    def parent_best(model, images, input_spec, **kw):  # every checkpoint scores below the parent
        first = not parent_best.calls
        parent_best.calls += 1
        score = 0.0 if first else -0.5
        return {"prior_match": score, "score": score, "certainty": 0.9, "agreement": 0.9,
                "foreground": 0.4, "foreground_reference": 0.4}

    parent_best.calls = 0
    monkeypatch.setattr(selection, "label_free_signals", parent_best)
    parent = load_bundle(parent_file)
    new = adapt(parent, _dark_targets(), norm="dual", **KW)
    assert new.provenance["selection"]["returned_parent_weights"] is True
    for k, v in parent.model.state_dict().items():
        torch.testing.assert_close(new.model.state_dict()[k], v)


def test_frozen_keeps_the_parent_statistics_for_every_pass_and_in_the_result(parent_file,
                                                                             monkeypatch):
    parent = load_bundle(parent_file)
    layers = batchnorm_layers(parent.model)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    passes = _watch(monkeypatch)
    new = adapt(parent, _dark_targets(), select=False, **KW)  # norm="frozen" is the default
    source, target = _split(passes)
    for p in source + target:
        torch.testing.assert_close(p["running_mean"], before[0][0])
        assert not p["bn_training"]
    for m, (mean, var) in zip(batchnorm_layers(new.model), before, strict=True):
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)
    assert new.provenance["norm"].startswith("frozen: ")
    assert new.provenance["target_statistics"] is None


def test_domain_statistics_rebinds_buffers_and_refuses_other_networks():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    other = copy.deepcopy(net)
    other[1].running_mean.fill_(2.0)
    stats = DomainStatistics(net)
    stats.capture("source")
    stats.capture("target", other)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    net.eval()
    stats.use("target")
    y = net(x).sum()
    stats.use("source")  # a recorded pass keeps its statistics: backward still works
    y.backward()
    torch.testing.assert_close(net[1].running_mean, torch.zeros(4))
    stats.use("target")
    torch.testing.assert_close(net[1].running_mean, torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="other BatchNorm layers"):
        stats.capture("bad", torch.nn.Sequential(torch.nn.BatchNorm2d(7)))


def test_dual_needs_batchnorm_and_the_cli_accepts_it(tmp_path):
    from napari_dgseg.cli import build_parser
    from napari_dgseg.core.train.source import train

    args = build_parser().parse_args(["adapt", "--model", "m", "--target", "t", "--out", "o",
                                      "--norm", "dual"])
    assert args.norm == "dual"
    img, lab = disks_image(96, seed=0, n=8)
    path = tmp_path / "gn.dgseg"
    train("hovernet", [[Sample(img, lab, "a", domain="s")]], out=path, iters=1, size=64,
          batch=1, config={"widths": [8, 16, 32], "norm": "group"}, seed=0)
    gn = load_bundle(path)
    assert not batchnorm_layers(gn.model)
    with pytest.raises(InputError, match="no BatchNorm running statistics"):
        adapt(gn, _dark_targets(), norm="dual", **KW)


def _decision_module():
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("dual_norm_decision",
                                                      bench / "dual_norm_decision.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module, bench / "results"


def test_the_recorded_decision_follows_from_the_stored_runs():
    import json

    decision, results = _decision_module()
    frozen = json.loads((results / "mani_adaptation_nuclei-hovernet_selection.json").read_text())
    dual = json.loads((results / "mani_adaptation_nuclei-hovernet_selection_dual.json").read_text())
    # the decision was made (and recorded) with the selection guard of the time
    made_with = DriftGuard(margin=0.0, certainty_drop=0.02, agreement_drop=0.01, stop_at_drift=True)
    verdict = decision.decide(copy.deepcopy(frozen), copy.deepcopy(dual), guard=made_with)
    recorded = json.loads((results / "dual_norm_decision.json").read_text())
    assert verdict["checks"] == recorded["checks"]
    assert verdict["selection_guard"] == "m0+c0.02+a0.01+stop"
    assert verdict["adopt_dual"] is recorded["adopt_dual"] is False
    assert verdict["dual"]["target_aji"]["min"] < -decision.LIMIT  # the condition that failed
    other = copy.deepcopy(dual)
    other["settings"]["n_test"] = 5  # other test tiles: the runs cannot be paired
    with pytest.raises(SystemExit, match="n_test"):
        decision.decide(copy.deepcopy(frozen), other)
