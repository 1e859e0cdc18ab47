"""Style transfer (Mind the Gap stage 1): AdaIN maths, what training achieves, bundles, CLI, adapt hook.

The trained-model tests share one tiny model (8 channels, one down-sampling, 64 px crops, 100
iterations) trained on synthetic H&E tiles (source) and tiles of the same renderer with the colour
channels rotated (target): the style differs strongly, the structure not at all, so a working
model must move the colours and keep the edges.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_dgseg.cli import main
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.data.synthetic import make_sample
from napari_dgseg.core.errors import BundleError, InputError, OutputExistsError
from napari_dgseg.core.style import StyleConfig, colour_stats, load_style, save_style
from napari_dgseg.core.style.model import (
    PRESETS,
    AdaIN,
    PatchDiscriminator,
    StyleGenerator,
    adain,
)
from napari_dgseg.core.style.train import train_style_steps

TINY = StyleConfig(channels=8, n_down=1, n_res=1, mlp_dim=16, disc_channels=8)


def _source(n: int, seed0: int, size: int = 96) -> list[np.ndarray]:
    return [make_sample("nuclei", size, "clean", seed0 + i).image for i in range(n)]


def _target(n: int, seed0: int, size: int = 96) -> list[np.ndarray]:
    return [im[..., [2, 0, 1]].copy() for im in _source(n, seed0, size)]


def _colour_distance(a: dict, b: dict) -> float:
    """Sum over RGB of |mean difference| + |std difference| (0-255 units)."""
    return float(np.abs(np.subtract(a["mean"], b["mean"])).sum()
                 + np.abs(np.subtract(a["std"], b["std"])).sum())


def _edges(image: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float64).mean(axis=2)
    return np.hypot(ndi.sobel(grey, 0), ndi.sobel(grey, 1))


@pytest.fixture(scope="module")
def trained():
    """The tiny model and the per-iteration logs of its training."""
    torch.set_num_threads(1)
    gen = train_style_steps(_source(4, 0), _target(4, 100), config=TINY, iters=100, size=64,
                            batch=2, lr=1e-3, seed=0, device="cpu",
                            source_name="clean", target_name="rotated")
    logs = []
    while True:
        try:
            logs.append(next(gen).logs)
        except StopIteration as stop:
            return stop.value, logs


# ---------------------------------------------------------------------------- maths
def test_adain_sets_channel_mean_and_std_and_module_agrees():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16) * 5 + 2
    scale = torch.tensor([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]])
    shift = torch.tensor([[0.0, -1.0, 4.0], [1.0, 2.0, 3.0]])
    y = adain(x, scale, shift)
    torch.testing.assert_close(y.mean(dim=(2, 3)), shift, atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), scale, atol=1e-3, rtol=0)
    params = torch.cat([scale - 1.0, shift], dim=1)  # the module predicts 1 + scale
    torch.testing.assert_close(AdaIN(3)(x, params), y)


def test_generator_keeps_shape_and_domain_changes_the_output():
    torch.manual_seed(0)
    gen = StyleGenerator(TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    src = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        same = gen(x, src, src)
        other = gen(x, src, torch.ones(2, dtype=torch.long))
    assert same.shape == x.shape and float(same.abs().max()) <= 1.0
    # a fresh MLP already gives the two labels different AdaIN parameters
    assert not torch.allclose(same, other)
    with torch.no_grad():
        logits = PatchDiscriminator(TINY)(x, torch.tensor([0, 1]))
    assert logits.shape[:2] == (2, 1)


def test_presets_and_config_checks():
    assert PRESETS["full"].channels == 64 and PRESETS["full"].n_res == 4  # the paper's tables
    assert StyleConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(InputError, match="unknown style config keys"):
        StyleConfig.from_dict({"widths": 3})
    with pytest.raises(InputError, match="outside"):
        StyleConfig.from_dict({"channels": 100000})


# ---------------------------------------------------------------------------- training
def test_transfer_moves_colour_to_target_and_keeps_structure(trained):
    model, _ = trained
    test = _source(3, 50)
    out = [model.transfer(im) for im in test]
    target = colour_stats(_target(4, 100))
    before = _colour_distance(colour_stats(test), target)
    after = _colour_distance(colour_stats(out), target)
    assert after < 0.5 * before, (before, after)
    for im, styled in zip(test, out, strict=True):
        assert styled.shape == im.shape and styled.dtype == np.uint8
        r = np.corrcoef(_edges(im).ravel(), _edges(styled).ravel())[0, 1]
        assert r > 0.8, r


def test_cycle_and_reconstruction_losses_decrease(trained):
    _, logs = trained
    first = {k: np.mean([h[k] for h in logs[:10]]) for k in ("cyc", "rec_im")}
    last = {k: np.mean([h[k] for h in logs[-10:]]) for k in ("cyc", "rec_im")}
    assert last["cyc"] < 0.7 * first["cyc"], (first, last)
    assert last["rec_im"] < 0.7 * first["rec_im"], (first, last)


def test_transfer_pads_odd_sizes_and_batch_transform_matches(trained):
    model, _ = trained
    img = _source(1, 7, size=75)[0]
    out = model.transfer(img)
    assert out.shape == img.shape
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    y = model.batch_transform()(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    np.testing.assert_allclose(y[0].permute(1, 2, 0).numpy() * 255.0, out, atol=1.0)
    with pytest.raises(InputError, match="direction"):
        model.batch_transform("sideways")


def test_training_rejects_bad_input():
    with pytest.raises(InputError, match="no target images"):
        next(train_style_steps(_source(1, 0), [], config=TINY, iters=1, size=64))
    with pytest.raises(InputError, match="multiple of"):
        next(train_style_steps(_source(1, 0), _target(1, 1), config=TINY, iters=1, size=63))
    with pytest.raises(InputError, match="uint8"):
        next(train_style_steps([np.zeros((64, 64), np.float32)], _target(1, 1), config=TINY,
                               iters=1, size=64))


# ---------------------------------------------------------------------------- bundle
def test_style_bundle_round_trips(trained, tmp_path):
    model, _ = trained
    path = save_style(model, tmp_path / "s")
    assert path.name == "s.dgstyle"
    loaded = load_style(path)
    assert loaded.config == model.config and loaded.domains == ("clean", "rotated")
    assert loaded.provenance["weights"] == {"rec_im": 20.0, "rec_c": 1.0, "cyc": 20.0, "adv": 1.0}
    for k, v in model.generator.state_dict().items():
        torch.testing.assert_close(loaded.generator.state_dict()[k], v, rtol=0, atol=0)
    img = _source(1, 9)[0]
    np.testing.assert_array_equal(loaded.transfer(img), model.transfer(img))
    with pytest.raises(OutputExistsError):
        save_style(model, path)
    save_style(model, path, overwrite=True)


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def test_style_bundle_refuses_tampering_and_model_bundles(trained, tmp_path):
    model, _ = trained
    path = save_style(model, tmp_path / "s.dgstyle")

    def flip_weight(name, data):
        if name != "weights.safetensors":
            return data
        return data[:-1] + bytes([data[-1] ^ 1])

    _rewrite(path, tmp_path / "bad.dgstyle", flip_weight)
    with pytest.raises(BundleError, match="sha256"):
        load_style(tmp_path / "bad.dgstyle")

    def widen(name, data):
        if name != "bundle.json":
            return data
        manifest = json.loads(data)
        manifest["config"]["channels"] = 9
        return json.dumps(manifest).encode()

    _rewrite(path, tmp_path / "wide.dgstyle", widen)
    with pytest.raises(BundleError, match="do not fit"):
        load_style(tmp_path / "wide.dgstyle")

    _rewrite(path, tmp_path / "extra.dgstyle",
             lambda n, d: d if n != "weights.safetensors" else d)
    with zipfile.ZipFile(tmp_path / "extra.dgstyle", "a") as zf:
        zf.writestr("payload.pkl", b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="pickle"):
        load_style(tmp_path / "extra.dgstyle")
    (tmp_path / "model.dgstyle").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="pickle"):
        load_style(tmp_path / "model.dgstyle")
    (tmp_path / "text.dgstyle").write_text("hello")
    with pytest.raises(BundleError, match="not a style bundle"):
        load_style(tmp_path / "text.dgstyle")
    with pytest.raises(BundleError, match="not a file"):
        load_style(tmp_path / "missing.dgstyle")


def test_model_bundle_is_refused_as_style(tiny_bundle):
    with pytest.raises(BundleError, match="model bundle, not a style model"):
        load_style(tiny_bundle.path)


# ---------------------------------------------------------------------------- adapt hook
def test_adapt_applies_source_transform_to_every_source_batch(tiny_bundle):
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.train.adapt import adapt

    seen = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return 1.0 - x

    transform.description = "inverted source"  # type: ignore[attr-defined]
    source = [Sample(im, np.zeros(im.shape[:2], np.int32) + (im[..., 0] < 120), f"s{i}",
                     domain="clean") for i, im in enumerate(_source(2, 0, size=64))]
    result = adapt(load_bundle(tiny_bundle), _target(2, 5, size=64), source=source, iters=3,
                   size=64, batch=2, holdout=0, select=False, source_transform=transform)
    assert seen == [(2, 3, 64, 64)] * 3
    assert result.provenance["source_transform"] == "inverted source"


# ---------------------------------------------------------------------------- CLI
def _synth(tmp_path, domain, name, n=2, size=64):
    assert main(["synth", "nuclei", "--domain", domain, "--n", str(n), "--size", str(size),
                 "--out", str(tmp_path / name)]) == 0


def test_cli_style_train_apply_and_adapt(tmp_path, capsys, tiny_bundle):
    _synth(tmp_path, "clean", "src")
    _synth(tmp_path, "ho-dark-blue", "tgt")
    capsys.readouterr()
    out = tmp_path / "s.dgstyle"
    args = ["style", "train", "--source", str(tmp_path / "src"), "--target",
            str(tmp_path / "tgt" / "images"), "--out", str(out), "--iters", "2", "--size", "64",
            "--batch", "1", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["style"] == str(out) and info["iterations"] == 2 and info["source"]["images"] == 2
    assert load_style(out).domains == ("src", "tgt")
    assert main(args) == 2  # exists: kept without --overwrite
    assert "already exists" in capsys.readouterr().err

    styled = tmp_path / "styled"
    assert main(["style", "apply", "--style", str(out), "--images", str(tmp_path / "src"),
                 "--out", str(styled)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["outputs"]) == 2 and summary["failed"] == []
    assert sorted(p.name for p in (styled / "images").iterdir()) == [
        "nuclei_clean_0000.png", "nuclei_clean_0001.png"]
    # labels travel with the styled images: the folder is a labelled training folder
    assert sorted(p.name for p in (styled / "labels").iterdir()) == [
        "nuclei_clean_0000.tif", "nuclei_clean_0001.tif"]
    assert main(["style", "apply", "--style", str(out), "--images", str(tmp_path / "src"),
                 "--out", str(styled)]) == 2
    assert "already exists" in capsys.readouterr().err

    new = tmp_path / "adapted.dgseg"
    assert main(["adapt", "--model", str(tiny_bundle.path), "--target", str(tmp_path / "tgt"),
                 "--source", str(tmp_path / "src"), "--style", str(out), "--out", str(new),
                 "--iters", "2", "--size", "64", "--batch", "1", "--quiet", "--device", "cpu",
                 "--holdout", "0"]) == 0
    capsys.readouterr()
    from napari_dgseg.core.bundle import load_bundle

    assert "style transfer src -> tgt" in load_bundle(new).provenance["source_transform"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["style", "apply", "--style", "{bundle}", "--images", "{src}", "--out", "{tmp}/o"],
         "model bundle, not a style model"),
        (["style", "apply", "--style", "{tmp}/none.dgstyle", "--images", "{src}", "--out",
          "{tmp}/o"], "not a file"),
        (["style", "train", "--source", "{tmp}/nowhere", "--target", "{src}", "--out",
          "{tmp}/x.dgstyle"], "neither an image file nor a folder"),
        (["style", "train", "--source", "{src}", "--target", "{src}", "--out", "{tmp}/x.dgstyle",
          "--size", "128"], "smaller than the crop size"),
        (["adapt", "--model", "{bundle}", "--target", "{src}", "--style", "{tmp}/none.dgstyle",
          "--out", "{tmp}/a.dgseg"], "not a file"),
        (["adapt", "--model", "{bundle}", "--target", "{src}", "--style", "{bundle}",
          "--method", "stats", "--out", "{tmp}/a.dgseg"], "no effect with --method stats"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, tiny_bundle, argv, message):
    _synth(tmp_path, "clean", "src")
    capsys.readouterr()
    fill = {"bundle": str(tiny_bundle.path), "src": str(tmp_path / "src"), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_large_images_go_through_blended_tiles(trained, monkeypatch):
    from napari_dgseg.core.style import transfer as transfer_module

    model, _ = trained
    img = _source(1, 11, size=160)[0]
    whole = model.transfer(img).astype(np.float64)
    monkeypatch.setattr(transfer_module, "WHOLE_PIXELS", 64 * 64)
    monkeypatch.setattr(transfer_module, "TILE", 96)
    monkeypatch.setattr(transfer_module, "OVERLAP", 32)
    tiled = model.transfer(img).astype(np.float64)
    assert tiled.shape == img.shape
    # 96 px tiles: each tile's AdaIN statistics differ from the whole image's, so the colours
    # shift a little, but every pixel is covered and the picture stays the same
    assert np.abs(tiled - whole).mean() < 25.0
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.9
