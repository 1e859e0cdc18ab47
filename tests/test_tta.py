"""Flip test-time augmentation (``run_tiled(..., tta=True)``, ``Bundle.predict(tta=...)``).

A toy network whose outputs are exactly flip-equivariant (a per-pixel map and the image
gradient, a vector field) must give the same result with and without TTA when the vector
output's channels are declared (``flip_signs``) and a different one when they are not; discrete
maps come from the unflipped pass; an orientation-dependent network is averaged over the four
flips. Then the shipped HoVer-Net: its HV map is a vector field, and TTA keeps its instances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_dgseg.core.predict import FLIPS, run_tiled

IDENTITY_SPEC = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


class Equivariant(nn.Module):
    """``logits``: channels 0-1 of the input; ``grad``: (d/dx, d/dy) of channel 0 (central
    differences, replicate padding); ``ids``: rounded channel 0 (discrete)."""

    divisor = 8
    discrete_outputs = ("ids",)

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.passes += 1
        c = torch.nn.functional.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
        gx = (c[..., 1:-1, 2:] - c[..., 1:-1, :-2]) / 2
        gy = (c[..., 2:, 1:-1] - c[..., :-2, 1:-1]) / 2
        return {"logits": x[:, :2], "grad": torch.cat([gx, gy], 1),
                "ids": (x[:, 0] * 10).round().to(torch.int64)}


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    return np.stack([r, yy / h, xx / w], -1).astype(np.float32)


def test_equivariant_outputs_are_unchanged_by_tta_when_vector_channels_are_declared():
    img = _image()
    kw = dict(input_spec=IDENTITY_SPEC, tile=32, overlap=8, device="cpu", discrete=("ids",))
    plain = run_tiled(Equivariant(), img, **kw)
    model = Equivariant()
    tta = run_tiled(model, img, tta=True, flip_signs={"grad": ("x", "y")}, **kw)
    np.testing.assert_allclose(tta["logits"], plain["logits"], atol=1e-6)
    np.testing.assert_allclose(tta["grad"], plain["grad"], atol=1e-6)
    np.testing.assert_array_equal(tta["ids"], plain["ids"])
    # without the declaration the flipped passes' x (y) components come back with the wrong
    # sign and cancel half of the gradient
    wrong = run_tiled(Equivariant(), img, tta=True, **kw)
    assert np.abs(wrong["grad"] - plain["grad"]).max() > 0.5 * np.abs(plain["grad"]).max()
    np.testing.assert_allclose(wrong["logits"], plain["logits"], atol=1e-6)


def test_tta_runs_four_passes_per_tile_and_averages_an_orientation_dependent_network():
    class LeftRamp(nn.Module):
        divisor = 8
        discrete_outputs: tuple[str, ...] = ()

        def __init__(self) -> None:
            super().__init__()
            self.passes = 0

        def infer(self, x):
            self.passes += 1
            w = x.shape[-1]
            ramp = torch.linspace(0.0, 1.0, w).view(1, 1, 1, w).expand(x.shape[0], 2, x.shape[2], w)
            return {"logits": ramp.clone()}

    img = _image(32, 32)
    plain_model, tta_model = LeftRamp(), LeftRamp()
    plain = run_tiled(plain_model, img, input_spec=IDENTITY_SPEC, tile=32, overlap=0,
                      device="cpu")
    tta = run_tiled(tta_model, img, input_spec=IDENTITY_SPEC, tile=32, overlap=0, device="cpu",
                    tta=True)
    assert tta_model.passes == len(FLIPS) * plain_model.passes == 4
    assert not np.allclose(plain["logits"][0, 0], 0.5)
    # the ramp and its mirror average to 0.5 everywhere
    np.testing.assert_allclose(tta["logits"], 0.5, atol=1e-6)


@pytest.mark.slow
def test_shipped_hovernet_keeps_its_instances_under_tta_and_needs_the_hv_signs():
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.metrics import instance_scores

    torch.set_num_threads(1)
    bundle = load_bundle("nuclei-hovernet")
    assert bundle.family.flip_signs == {"hv": ("x", "y")}
    img, lab = make_nuclei(256, "clean", 7)
    plain = bundle.predict(img, device="cpu", tta=False, pixel_size_um=0.25)
    tta = bundle.predict(img, device="cpu", tta=True, pixel_size_um=0.25)
    assert tta.provenance["tta"] == {"flips": 4, "source": "requested"}
    assert plain.provenance["tta"]["flips"] == 1
    aji_plain = instance_scores(plain.labels, lab)["aji"]
    aji_tta = instance_scores(tta.labels, lab)["aji"]
    assert aji_tta >= aji_plain - 0.02
    # the same averaging with the HV channels treated as scalars cancels the distance maps
    maps = run_tiled(bundle.model, img.astype(np.float32) / 255.0, input_spec=bundle.input_spec,
                     device="cpu", tta=True, flip_signs={})
    good = run_tiled(bundle.model, img.astype(np.float32) / 255.0, input_spec=bundle.input_spec,
                     device="cpu", tta=True, flip_signs=bundle.family.flip_signs)
    assert np.abs(maps["hv"]).mean() < 0.5 * np.abs(good["hv"]).mean()


def test_bundle_default_comes_from_the_manifest_record(tiny_bundle):
    from napari_dgseg.core.inference import tta_default

    assert tta_default({}) is False
    assert tta_default({"inference": {"tta": True}}) is True
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    assert tiny_bundle.predict(img, device="cpu").provenance["tta"] == {
        "flips": 1, "source": "bundle default"}
    tiny_bundle.manifest["inference"] = {"tta": True}
    assert tiny_bundle.predict(img, device="cpu").provenance["tta"]["flips"] == 4
    assert tiny_bundle.predict(img, device="cpu", tta=False).provenance["tta"] == {
        "flips": 1, "source": "requested"}


def test_cli_predict_tta_flag_reaches_the_prediction(tiny_bundle, tmp_path, capsys):
    import json

    from skimage.io import imsave

    from napari_dgseg.cli import main
    from napari_dgseg.core.labels_io import read_labels

    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    imsave(tmp_path / "tile.png", img, check_contrast=False)
    model = str(tmp_path / "tiny.dgseg")
    flips = {}
    for mode in ("on", "off", "auto"):
        rc = main(["predict", "--model", model, "--out", str(tmp_path / mode), "--tta", mode,
                   "--quiet", str(tmp_path / "tile.png")])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        _, prov = read_labels(out["outputs"][0]["labels"])
        flips[mode] = (prov["tta"]["flips"], prov["tta"]["source"])
    assert flips == {"on": (4, "requested"), "off": (1, "requested"), "auto": (1, "bundle default")}
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line, exit status 2
        main(["predict", "--model", model, "--out", str(tmp_path / "x"), "--tta", "maybe",
              str(tmp_path / "tile.png")])
    assert exc.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err


def test_record_rule_wants_a_dice_gain_and_no_other_loss():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "record_tta", Path(__file__).resolve().parents[1] / "scripts" / "record_tta.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    off = {"dice": 0.70, "aji": 0.40}
    assert mod.decide(off, {"dice": 0.72, "aji": 0.40}, 0.005) is True
    assert mod.decide(off, {"dice": 0.704, "aji": 0.45}, 0.005) is False  # Dice gain too small
    assert mod.decide(off, {"dice": 0.72, "aji": 0.39}, 0.005) is False  # AJI lost
