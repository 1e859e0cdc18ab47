"""The Family contract and the registry: declared fields, plugins, and a toy family end to end.

The toy family (``tests/toy_family/``) lives outside the package; the CLI trains, saves, loads
and predicts with it when ``DGSEG_FAMILIES`` names it, which is the whole registration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imsave

from conftest import disks_image
from napari_dgseg.core import registry
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.family import CAPABILITIES, Family

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TOY = "toy=toy_family:FAMILY"


@pytest.fixture
def clean_registry(monkeypatch):
    """A private copy of the registry, so registrations never leak into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


# ------------------------------------------------------------------------------ the contract
NETWORK_FAMILIES = [n for n in registry.BUILTIN_FAMILIES if not n.startswith("classical-")]


@pytest.mark.parametrize("name", NETWORK_FAMILIES)
def test_declared_infer_outputs_match_the_model(name):
    fam = registry.get_family(name)
    assert fam.name == name and fam.capabilities <= CAPABILITIES
    model = fam.build_model({"num_classes": 2, "widths": [8, 16]}).eval()
    with torch.no_grad():
        out = model.infer(torch.zeros(1, 3, 32, 32))
    assert set(out) <= set(fam.infer_outputs)
    assert fam.discrete_outputs == tuple(model.discrete_outputs)
    for key, value in out.items():
        assert value.dtype.is_floating_point == (fam.infer_outputs[key] == "dense"), key


def test_capabilities_are_declared_fields():
    assert registry.families_supporting("codebook") == ["sqvae"]
    assert set(registry.families_supporting("mani")) == set(NETWORK_FAMILIES)
    assert registry.families_supporting("local_mask") == []
    with pytest.raises(ValueError, match="unknown capability"):
        registry.get_family("unet").supports("codebok")


@pytest.mark.parametrize("name", ["classical-he", "classical-fundus"])
def test_classical_families_have_no_network(name):
    fam = registry.get_family(name)
    assert fam.segment_image is not None and not fam.capabilities
    model = fam.build_model({})
    assert not list(model.parameters()) and not model.state_dict()
    with pytest.raises(RuntimeError, match="no network"):
        model(torch.zeros(1, 3, 8, 8))


def test_family_refuses_a_bad_declaration():
    from toy_family import ToyConfig, ToyNet

    with pytest.raises(InputError, match="unknown capabilities"):
        Family("x", ToyConfig, ToyNet, capabilities=frozenset({"telepathy"}))
    with pytest.raises(InputError, match="output"):
        Family("x", ToyConfig, ToyNet, output="boxes")
    with pytest.raises(InputError, match="infer_outputs"):
        Family("x", ToyConfig, ToyNet, infer_outputs={"logits": "discrete"})


# ------------------------------------------------------------------------------ the registry
def test_unknown_family_lists_the_valid_ones(clean_registry):
    with pytest.raises(InputError, match=r"valid families: \['classical-fundus', 'classical-he', 'hovernet', 'ram'"):
        registry.get_family("toy")
    assert "toy" not in registry.available_family_names()


def test_env_var_registers_a_family_lazily(clean_registry, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, TOY)
    assert "toy" in registry.available_family_names()
    fam = registry.get_family("toy")
    assert fam.name == "toy" and fam.supports("mani") and not fam.supports("codebook")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("toy_family:FAMILY", "not name=module:attribute"),
        ("other=toy_family:FAMILY", "is named 'toy'"),
        ("toy=toy_family:NOPE", "cannot load"),
        ("toy=toy_family:ToyConfig", "is not a Family"),
    ],
)
def test_bad_env_entries_say_what_to_do(clean_registry, monkeypatch, value, message):
    monkeypatch.setenv(registry.ENV_VAR, value)
    with pytest.raises(InputError, match=message):
        registry.family_names()


def test_entry_point_registers_a_family(clean_registry, monkeypatch):
    eps = [EntryPoint("toy", "toy_family:FAMILY", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else []
    )
    assert "toy" in registry.family_names()
    assert registry.get_family("toy").description.startswith("toy family")


def test_register_family_in_process(clean_registry):
    from toy_family import FAMILY

    assert registry.register_family(FAMILY) is FAMILY
    assert registry.get_family("toy") is FAMILY
    with pytest.raises(InputError, match="needs a Family"):
        registry.register_family("toy")


# ------------------------------------------------------------------------------ end to end
def _cli(*args: str, env_families: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
           "OMP_NUM_THREADS": "1"}
    env.pop(registry.ENV_VAR, None)
    if env_families:
        env[registry.ENV_VAR] = env_families
    return subprocess.run([sys.executable, "-m", "napari_dgseg.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_toy_family_train_save_load_predict_through_the_cli(tmp_path, clean_registry, monkeypatch):
    import tifffile

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.labels_io import read_labels

    data = tmp_path / "src"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(2):
        img, lab = disks_image(64, seed=i)
        imsave(data / "images" / f"t{i}.png", img, check_contrast=False)
        tifffile.imwrite(data / "labels" / f"t{i}.tif", lab)
    model = tmp_path / "toy.dgseg"
    train = ["train", "toy", "--source", str(data), "--out", str(model), "--iters", "3",
             "--size", "48", "--batch", "2", "--quiet"]

    refused = _cli(*train, env_families=None)
    assert refused.returncode == 2 and "unknown model family 'toy'" in refused.stderr
    assert "toy" in _cli("train", "--help", env_families=TOY).stdout

    trained = _cli(*train, env_families=TOY)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["iterations"] == 3

    img, _ = disks_image(80, seed=7)
    imsave(tmp_path / "new.png", img, check_contrast=False)
    predicted = _cli("predict", "--model", str(model), "--out", str(tmp_path / "out"), "--quiet",
                     "--dcin", "none", str(tmp_path / "new.png"), env_families=TOY)
    assert predicted.returncode == 0, predicted.stderr
    labels, prov = read_labels(json.loads(predicted.stdout)["outputs"][0]["labels"])
    assert prov["family"] == "toy"

    monkeypatch.setenv(registry.ENV_VAR, TOY)
    bundle = load_bundle(model)
    assert bundle.family_name == "toy" and type(bundle.model).__name__ == "ToyNet"
    np.testing.assert_array_equal(labels, bundle.predict(img, dcin="none").labels)


def test_adapt_refuses_a_family_without_mani(clean_registry):
    import dataclasses

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.train.adapt import adapt
    from toy_family import FAMILY

    plain = registry.register_family(
        dataclasses.replace(FAMILY, name="toy-plain", capabilities=frozenset())
    )
    model = plain.build_model({"num_classes": 2, "width": 4})
    bundle = Bundle.create(model, "toy-plain", model.config, name="plain",
                           class_names=["background", "nucleus"], task="nuclei")
    img, _ = disks_image(64, seed=3)
    with pytest.raises(InputError, match=r"no decoder feature map.*\['hovernet', 'ram'"):
        adapt(bundle, [img], iters=1)


def test_codebook_analysis_asks_the_capability(tiny_bundle):
    from napari_dgseg.core.codebook import require_codebook

    with pytest.raises(InputError, match=r"'unet' model, which has no codebook.*\['sqvae'\]"):
        require_codebook(tiny_bundle)
    sq = registry.get_family("sqvae").build_model({"num_classes": 2, "widths": [8, 16]})
    from napari_dgseg.core.bundle import Bundle

    require_codebook(Bundle.create(sq, "sqvae", sq.config, name="sq",
                                   class_names=["background", "nucleus"], task="nuclei"))
