"""Local feature masks and local alignment (Mind the Gap's D1/D2): maths, adaptation, bundles, CLI.

The parent is a tiny U-Net trained for a few iterations on dark disks (its bundle carries the
labelled replay set); the *shift* is a colour permutation, tint and blur of the same kind of
tiles, which the parent's features show clearly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import disks_image
from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import BundleError, InputError
from napari_dgseg.core.local_align import (
    D1Config,
    PixelDiscriminator,
    inference_model,
    load_d1,
    local_feature_mask,
    reweight_features,
    supports_local_mask,
)
from napari_dgseg.core.local_align.discriminators import OutputDiscriminator, domain_accuracy
from napari_dgseg.core.local_align.gap_map import (
    domain_gap_map,
    fit_d1_steps,
    mask_of_features,
    replay_features,
)
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.registry import get_family
from napari_dgseg.core.train.adapt import adapt


def shifted(img: np.ndarray) -> np.ndarray:
    """Another 'scanner': channels permuted, tinted, blurred."""
    out = img[..., [2, 0, 1]].astype(float) * np.array([0.75, 0.95, 0.6])
    return np.clip(gaussian_filter(out, sigma=(1.5, 1.5, 0)), 0, 255).astype(np.uint8)


def run(gen):
    """Drive a core generator to its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    from napari_dgseg.core.train.source import train

    samples = [Sample(*disks_image(96, seed=i, n=8), f"s{i}", domain="a") for i in range(4)]
    path = tmp_path_factory.mktemp("parent") / "parent.dgseg"
    train("unet", [samples], out=path, iters=30, size=64, batch=2,
          config={"widths": [8, 16, 32]}, seed=0)
    return load_bundle(path)


def features(bundle, images):
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return bundle.family.features_and_infer(bundle.model.eval(),
                                                normalise_input(x, bundle.input_spec), None)[0]


# ----------------------------------------------------------------------------- maths
def test_mask_range_shape_and_the_reweighting_formula():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 12, 10)
    d1 = PixelDiscriminator(D1Config(8, hidden=16))
    with torch.no_grad():
        m = local_feature_mask(d1, f)
        np.testing.assert_allclose(m.numpy(), d1(f).abs().numpy())
    assert m.shape == (2, 1, 12, 10) and bool((m >= 0).all()) and float(m.max()) > 0
    f_hat = reweight_features(f, m)
    expected = f.numpy() * (1.0 + np.tanh(m.detach().numpy()))  # f + f * tanh(m), channel-expanded
    np.testing.assert_allclose(f_hat.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    # a D1 with a known output: weights 0, last bias -2 -> m = 2 everywhere
    for p in d1.parameters():
        torch.nn.init.zeros_(p)
    d1.net[-1].bias.data.fill_(-2.0)
    m = local_feature_mask(d1, f)
    assert torch.allclose(m, torch.full_like(m, 2.0))
    assert torch.allclose(reweight_features(f, m), f * (1 + np.tanh(2.0)))
    # the displayed mask is tanh(m): [0, 1)
    shown = mask_of_features(d1, f[0])
    assert shown.shape == (12, 10) and shown.dtype == np.float32
    np.testing.assert_allclose(shown, np.tanh(2.0), rtol=1e-6)


def test_kernel_3_d1_draws_the_same_map_in_bands_as_at_once():
    from napari_dgseg.core.local_align import gap_map

    torch.manual_seed(1)
    f = torch.randn(4, 300, 20)
    d1 = PixelDiscriminator(D1Config(4, hidden=8, kernel=3)).eval()
    whole = torch.tanh(d1(f[None]).abs())[0, 0].detach().numpy()
    old = gap_map.BAND_ROWS
    gap_map.BAND_ROWS = 64  # several bands with their halos
    try:
        np.testing.assert_allclose(mask_of_features(d1, f), whole, atol=1e-6)
    finally:
        gap_map.BAND_ROWS = old
    assert OutputDiscriminator(2)(torch.rand(1, 2, 64, 64)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("name, config", [
    ("unet", {"widths": [8, 16]}),
    ("ram", {"widths": [8, 16]}),
    ("sqvae", {"widths": [8, 16], "latent_channels": 8, "codebook_size": 4, "codebook_size_beta": 2}),
    ("hovernet", {"widths": [8, 16]}),
])
def test_every_family_with_features_gives_the_mani_map_and_its_infer_outputs(name, config):
    fam = get_family(name)
    torch.manual_seed(0)
    model = fam.build_model(config).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f_mani, _ = fam.features_and_outputs(model, x)
        f, maps = fam.features_and_infer(model, x, None)
        ref = model.infer(x)
        assert torch.equal(f, f_mani)  # D1 reads the map MaNi pools
        assert set(maps) == set(ref)
        for key in ref:
            assert torch.allclose(maps[key].float(), ref[key].float(), atol=1e-6), key
        # the predictor reads the reweighted map: doubling the features changes the logits
        _, doubled = fam.features_and_infer(model, x, lambda g: 2 * g)
        assert not torch.allclose(doubled["logits"], ref["logits"])


def test_families_without_features_say_so_in_one_line(tmp_path):
    from napari_dgseg.core.local_align.bundled import check_family

    for name in ("classical-he", "classical-fundus"):
        fam = get_family(name)
        assert fam.features_and_infer is None
        with pytest.raises(InputError) as err:
            check_family(fam)
        assert "\n" not in str(err.value) and "unet" in str(err.value)


# ----------------------------------------------------------------------------- D1 on a shift
def test_d1_separates_a_synthetic_shift(parent):
    src = replay_features(parent)
    tgt = features(parent, [shifted(disks_image(96, seed=100 + i, n=8)[0]) for i in range(2)])
    d1 = run(fit_d1_steps(src, tgt, steps=200, seed=0))
    held_src = features(parent, [disks_image(96, seed=300 + i, n=8)[0] for i in range(2)])
    held_tgt = features(parent, [shifted(disks_image(96, seed=400 + i, n=8)[0]) for i in range(2)])
    with torch.no_grad():
        acc = domain_accuracy(d1(held_src), d1(held_tgt))
        m_src = float(torch.tanh(d1(held_src).abs()).mean())
        m_tgt = float(torch.tanh(d1(held_tgt).abs()).mean())
    assert acc > 0.9, acc
    assert m_tgt > 0.5 > 0.0 < m_src, (m_src, m_tgt)


def test_the_mask_is_higher_on_an_injected_out_of_domain_patch(parent):
    img, _ = disks_image(160, seed=7, n=20)
    patch = shifted(disks_image(160, seed=8, n=20)[0])
    inside = np.zeros(img.shape[:2], bool)
    inside[40:104, 60:124] = True
    img = img.copy()
    img[inside] = patch[inside]
    gap = domain_gap_map(parent, img, steps=200, device="cpu", rescale="off")
    mask = gap.local_mask
    assert mask.shape == img.shape[:2] and mask.dtype == np.float32
    assert float(mask.min()) >= 0.0 and float(mask.max()) < 1.0
    ring = np.zeros_like(inside)
    ring[32:112, 52:132] = True  # the patch border blends both: compare core and far field
    core = np.zeros_like(inside)
    core[48:96, 68:116] = True
    m_in, m_out = float(mask[core].mean()), float(mask[~ring].mean())
    assert m_in > 2 * m_out and m_in > m_out + 0.2, (m_in, m_out)
    assert gap.provenance["steps"] == 200 and gap.provenance["replay_crops"] > 0


# ----------------------------------------------------------------------------- adaptation
@pytest.mark.slow
def test_local_alignment_lowers_the_domain_accuracy(parent):
    """Same run with and without D1's adversarial pressure (lambda_d1 = 0 vs 1): with it, the
    run's own D1 and a D1 fitted afresh to the adapted model separate the shift less well."""
    targets = [shifted(disks_image(96, seed=100 + i, n=8)[0]) for i in range(4)]
    held_src = [disks_image(96, seed=300 + i, n=8)[0] for i in range(4)]
    held_tgt = [shifted(disks_image(96, seed=400 + i, n=8)[0]) for i in range(4)]
    online, fresh = {}, {}
    for w in (0.0, 1.0):
        b = adapt(parent, targets, iters=40, size=64, batch=2, local_alignment=True,
                  output_discriminator=False, d1_weight=w, mi_weight=0.0, lr=1e-4, warmup=0.0,
                  select=False, device="cpu", seed=0)
        online[w] = b.provenance["local_alignment"]["final"]["d1_accuracy"]
        fs, ft = features(b, held_src), features(b, held_tgt)
        d1 = run(fit_d1_steps(fs[:2], ft[:2], steps=200, seed=0))
        with torch.no_grad():
            fresh[w] = domain_accuracy(d1(fs[2:]), d1(ft[2:]))
    print("online", online, "fresh", fresh)
    assert online[1.0] < online[0.0], online
    assert fresh[1.0] < fresh[0.0], fresh


# ----------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def adapted_file(parent, tmp_path_factory):
    targets = [shifted(disks_image(96, seed=100 + i, n=8)[0]) for i in range(2)]
    path = tmp_path_factory.mktemp("adapted") / "adapted.dgseg"
    adapt(parent, targets, iters=3, size=64, batch=2, local_alignment=True, device="cpu",
          out=path)
    return path


def test_adapted_bundle_stores_d1_and_predicts_local_masks(parent, adapted_file):
    b = load_bundle(adapted_file)
    assert supports_local_mask(b) and not supports_local_mask(parent)
    entry = b.manifest["local_alignment"]
    assert entry["reweight"] is True and entry["weights"] == {"d1": 0.01, "d2": 0.01}
    assert entry["d1"] == {"in_channels": 8, "hidden": 32, "kernel": 1}
    tensors = b.extra("local_align")
    assert tensors and all(k.startswith("d1.") for k in tensors)
    prov = b.provenance["local_alignment"]
    assert prov["d1"] and prov["d2"] and "Mind the Gap" in prov["method"]
    img = shifted(disks_image(80, seed=5, n=6)[0])
    pred = b.predict(img, device="cpu", tile=64, overlap=16)
    assert pred.local_mask.shape == (80, 80) and pred.local_mask.dtype == np.float32
    assert 0.0 <= float(pred.local_mask.min()) and float(pred.local_mask.max()) < 1.0
    assert parent.predict(img, device="cpu").local_mask is None
    # predictions follow the target flow: the head reads f + f * tanh(|D1(f)|)
    model, d1 = inference_model(b), load_d1(b)
    x = normalise_input(torch.from_numpy(img[None, :64, :64]).permute(0, 3, 1, 2).float() / 255,
                        b.input_spec)
    with torch.no_grad():
        f = b.model.features(x)
        m = d1(f).abs()
        expected = b.model.head(f + f * torch.tanh(m))
        out = model.infer(x)
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert torch.allclose(out["local_mask"], torch.tanh(m), atol=1e-6)


def test_a_forged_d1_entry_is_refused_in_one_line(adapted_file):
    b = load_bundle(adapted_file)
    b.manifest["local_alignment"]["d1"]["hidden"] = 7
    with pytest.raises(BundleError) as err:
        load_d1(b)
    assert "do not fit" in str(err.value) and "\n" not in str(err.value)
    b = load_bundle(adapted_file)
    b.manifest["local_alignment"]["d1"]["in_channels"] = 10**9
    with pytest.raises(BundleError, match="invalid"):
        b.predict(np.zeros((64, 64, 3), np.uint8), device="cpu")


def test_bad_requests_say_what_to_do(parent, tiny_bundle):
    targets = [shifted(disks_image(96, seed=1, n=8)[0])]
    with pytest.raises(InputError, match="--norm frozen"):
        adapt(parent, targets, iters=1, size=64, local_alignment=True, norm="mixed")
    with pytest.raises(InputError, match="--method mani"):
        adapt(parent, targets, local_alignment=True, method="stats")
    with pytest.raises(InputError, match="d1_weight"):
        adapt(parent, targets, iters=1, size=64, local_alignment=True, d1_weight=-1.0)
    with pytest.raises(InputError, match="replay set"):
        domain_gap_map(tiny_bundle, targets[0], steps=2)
    with pytest.raises(InputError, match="classical baseline"):
        domain_gap_map(load_bundle("classical-he"), targets[0], steps=2)


def test_cli_adapt_local_alignment_then_predict_local_mask(parent, tmp_path, capsys):
    import tifffile

    from napari_dgseg.cli import main

    tdir = tmp_path / "targets"
    tdir.mkdir()
    for i in range(2):
        tifffile.imwrite(tdir / f"t{i}.tif", shifted(disks_image(96, seed=20 + i, n=8)[0]))
    parent_path = tmp_path / "parent.dgseg"
    parent.save(parent_path)
    out = tmp_path / "la.dgseg"
    rc = main(["adapt", "--model", str(parent_path), "--target", str(tdir), "--out", str(out),
               "--iters", "2", "--size", "64", "--batch", "2", "--local-alignment",
               "--no-output-discriminator", "--d1-weight", "0.05", "--quiet"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["local_alignment"]["d1"] and not info["local_alignment"]["d2"]
    assert info["local_alignment"]["d1_weight"] == 0.05
    rc = main(["predict", str(tdir / "t0.tif"), "--model", str(out), "--out",
               str(tmp_path / "pred"), "--local-mask", "--quiet", "--device", "cpu"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["outputs"][0]
    mask = tifffile.imread(row["local_mask"])
    assert mask.dtype == np.float32 and mask.shape == (96, 96)
    assert 0.0 <= float(mask.min()) and float(mask.max()) < 1.0
    rc = main(["predict", str(tdir / "t0.tif"), "--model", str(parent_path), "--out",
               str(tmp_path / "pred2"), "--local-mask", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--local-alignment" in err and len(err.strip().splitlines()) == 1


def test_a_fitted_d1_stored_without_reweighting_keeps_the_labels(parent, tmp_path):
    from napari_dgseg.core.local_align import attach_d1

    torch.manual_seed(3)
    b = load_bundle(parent.path)
    attach_d1(b, PixelDiscriminator(D1Config(8)), reweight=False)
    saved = load_bundle(b.save(tmp_path / "with-d1.dgseg"))
    assert supports_local_mask(saved) and saved.manifest["local_alignment"]["reweight"] is False
    img = disks_image(80, seed=9, n=6)[0]
    pred, ref = saved.predict(img, device="cpu"), parent.predict(img, device="cpu")
    np.testing.assert_array_equal(pred.labels, ref.labels)
    np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=1e-6)
    assert pred.local_mask.shape == (80, 80) and float(pred.local_mask.max()) < 1.0
