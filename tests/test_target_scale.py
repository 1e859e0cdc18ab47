"""Adaptation at the model's scale: target images resampled as the parent's inference would."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import disks_image
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.train import target_scale as ts


def _sample(size=96, seed=0, labels=True):
    img, lab = disks_image(size, seed=seed, n=8)
    return Sample(img, lab if labels else None, f"t{seed}", domain="target")


def _fixed(factor, applied=True):
    return lambda bundle, image, device: {"factor": factor, "applied": applied, "reason": "test"}


def test_native_keeps_every_image_untouched(monkeypatch):
    called = []
    monkeypatch.setattr(ts, "inference_factor", lambda *a: called.append(a))
    samples = [_sample(seed=1), _sample(seed=2)]
    out, report = ts.targets_at_scale(object(), samples, mode="native", min_side=64)
    assert out == samples and report["mode"] == "native" and not called


def test_model_scale_resamples_images_and_labels_together(monkeypatch):
    monkeypatch.setattr(ts, "inference_factor", _fixed(1.5))
    s = _sample(size=96, seed=3)
    (out,), report = ts.targets_at_scale(object(), [s], mode="model", min_side=64)
    assert out.image.shape == (144, 144, 3) and out.image.dtype == np.uint8
    assert out.labels.shape == (144, 144)
    # the same objects, 1.5x larger, still on the same pixels of the image
    assert set(np.unique(out.labels)) == set(np.unique(s.labels))
    for lab in np.unique(s.labels)[1:]:
        ratio = np.count_nonzero(out.labels == lab) / np.count_nonzero(s.labels == lab)
        assert 1.9 < ratio < 2.6  # area grows with the square of the factor
    dark_in = out.image[out.labels > 0].mean()
    dark_out = out.image[out.labels == 0].mean()
    assert abs(dark_in - s.image[s.labels > 0].mean()) < 25 and dark_in != dark_out
    assert report["factors"] == [1.5] and report["resampled"] == 1
    assert out.meta["target_scale_factor"] == 1.5


def test_a_factor_not_applied_leaves_the_image(monkeypatch):
    monkeypatch.setattr(ts, "inference_factor", _fixed(0.8, applied=False))
    s = _sample(seed=4)
    (out,), report = ts.targets_at_scale(object(), [s], mode="model", min_side=64)
    assert out is s and report["factors"] == [1.0] and report["resampled"] == 0


def test_a_shrunk_image_smaller_than_the_crop_is_mirrored_up_to_it(monkeypatch):
    monkeypatch.setattr(ts, "inference_factor", _fixed(0.5))
    s = _sample(size=96, seed=5)
    (out,), report = ts.targets_at_scale(object(), [s], mode="model", min_side=64)
    assert out.image.shape[:2] == (64, 64) and out.labels.shape == (64, 64)
    # the first 48 rows are the resampled image, the rest its mirror
    np.testing.assert_array_equal(out.image[48:64], out.image[47:31:-1])
    assert report["mirrored_to_crop"] == 1


def test_unknown_mode_is_one_clear_line():
    with pytest.raises(InputError, match="unknown target scale 'pixels'; valid: model, native"):
        ts.targets_at_scale(object(), [], mode="pixels", min_side=64)


def test_inference_factor_is_what_the_shipped_model_applies():
    """Small nuclei (a training tile shrunk to 0.6x) are enlarged by about 1 / 0.6."""
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.resample import zoom_image

    img, _ = make_nuclei(320, "clean", 11)
    small = np.clip(np.rint(zoom_image(img, 0.6)), 0, 255).astype(np.uint8)
    bundle = load_bundle("nuclei-hovernet")
    decision = ts.inference_factor(bundle, small, "cpu")
    assert decision["applied"] and 1.35 < decision["factor"] < 2.0
    assert decision["factor"] == pytest.approx(
        bundle.predict(small, device="cpu", tta=False).provenance["scale"]["factor"])


def test_adapt_trains_on_the_resampled_targets_and_records_them(monkeypatch, tmp_path):
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.train import adapt as adapt_mod
    from napari_dgseg.core.train.source import train

    parent = tmp_path / "p.dgseg"
    train("hovernet", [[_sample(seed=i) for i in range(3)]], out=parent, iters=2, size=64,
          batch=2, config={"widths": [8, 16, 32]}, seed=0)
    monkeypatch.setattr(ts, "inference_factor", _fixed(1.5))
    seen = []
    original = adapt_mod.CropSampler.__init__

    def spy(self, domains, *a, **k):
        seen.append([s.image.shape for _, samples in domains for s in samples])
        original(self, domains, *a, **k)

    monkeypatch.setattr(adapt_mod.CropSampler, "__init__", spy)
    targets = [_sample(seed=20 + i, labels=False).image for i in range(2)]
    new = adapt_mod.adapt(load_bundle(parent), targets, iters=2, size=64, batch=2,
                          target_scale="model", holdout=0)
    assert seen[-1] == [(144, 144, 3)] * 2  # the target sampler draws from resampled images
    assert new.provenance["target_scale"]["factors"] == [1.5, 1.5]
    native = adapt_mod.adapt(load_bundle(parent), targets, iters=1, size=64, batch=2,
                             target_scale="native", holdout=0)
    assert seen[-1] == [(96, 96, 3)] * 2 and native.provenance["target_scale"]["mode"] == "native"
    stats = adapt_mod.adapt(load_bundle(parent), targets, method="stats", target_scale="model")
    assert stats.provenance["target_scale"]["resampled"] == 2


def test_cli_choices_are_the_modes():
    from napari_dgseg.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["adapt", "--model", "m", "--target", "t", "--out", "o.dgseg",
                              "--target-scale", "model"])
    assert args.target_scale == "model"
    action = next(a for sub in parser._subparsers._group_actions
                  for a in sub.choices["adapt"]._actions if a.dest == "target_scale")
    assert sorted(action.choices) == sorted(ts.TARGET_SCALES)


def test_adapted_bundle_keeps_the_parents_scale_inference_and_colour_records(tmp_path):
    """An adapted model is resampled and normalised as its parent is: the parent's training
    scale, measured inference choices and colour-normalisation record carry over (and survive a
    save); its held-out evaluation does not (it describes the parent's weights)."""
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.resample import zoom_image
    from napari_dgseg.core.train.adapt import INHERITED_RECORDS, adapt

    parent = load_bundle("nuclei-hovernet")
    assert all(k in parent.manifest for k in INHERITED_RECORDS) and "evaluation" in parent.manifest
    tiles = [make_nuclei(192, "clean", 40 + i)[0] for i in range(2)]
    adapted = adapt(parent, tiles, method="stats", device="cpu")
    adapted.save(tmp_path / "a.dgseg")
    again = load_bundle(tmp_path / "a.dgseg")
    for key in INHERITED_RECORDS:
        assert again.manifest[key] == parent.manifest[key], key
    assert "evaluation" not in again.manifest
    assert again.scale == parent.scale  # the size tolerance the parent recorded included
    small = np.clip(np.rint(zoom_image(make_nuclei(320, "clean", 11)[0], 0.6)), 0, 255).astype(np.uint8)
    mine = again.predict(small, device="cpu").provenance["scale"]
    theirs = parent.predict(small, device="cpu").provenance["scale"]
    assert mine["proposed"] == theirs["proposed"] and mine["applied"] == theirs["applied"]
