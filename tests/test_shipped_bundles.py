"""The six shipped bundles still predict what they predicted when their outputs were stored.

``tests/data/make_bundle_outputs.py`` wrote the reference outputs; any change of the model
code, the registry or the inference pipeline that changes a shipped model's prediction fails
here (labels must be equal, floats within 1e-5).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"


def _maker():
    spec = importlib.util.spec_from_file_location("make_bundle_outputs", DATA / "make_bundle_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
SHIPPED = ["classical-fundus", "classical-he", "nuclei-hovernet", "nuclei-sqvae", "nuclei-unet",
           "nuclei-unet-cqg",
           "vessels-ram-sgcg", "vessels-sqvae"]


def test_every_shipped_bundle_has_stored_outputs():
    assert sorted(p.stem for p in MAKER.shipped_bundle_paths()) == SHIPPED
    assert sorted(p.stem for p in MAKER.OUT_DIR.glob("*.npz")) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_reproduces_stored_outputs(name):
    from napari_dgseg.core.bundle import load_bundle

    stored = dict(np.load(MAKER.OUT_DIR / f"{name}.npz"))
    got = MAKER.bundle_outputs(load_bundle(name))
    assert sorted(got) == sorted(stored)
    for key, want in stored.items():
        if "labels" in key or "indices" in key:
            np.testing.assert_array_equal(got[key], want, err_msg=f"{name}: {key}")
        else:
            np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-5, err_msg=f"{name}: {key}")


def test_synthetic_input_is_fixed():
    image = MAKER.synthetic_input()
    assert image.shape == (MAKER.SIZE, MAKER.SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, MAKER.synthetic_input())
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # textured, not a flat colour


def test_shipped_descriptions_say_what_each_model_is():
    """A bundle describes its own family (and CQG training when it had it); no stray paths."""
    import json

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.bundle_index import shipped_dir
    from napari_dgseg.core.train.source import CQG_DESCRIPTION

    for path in sorted(shipped_dir().glob("*.dgseg")):
        bundle = load_bundle(path)
        cqg = bundle.provenance.get("cqg")
        want = f"{bundle.family.name}{CQG_DESCRIPTION}" if cqg else bundle.family.description
        if cqg:  # its own description, not the plain U-Net's "trained on source data only"
            assert "source data only" not in bundle.manifest["description"], path.name
        assert bundle.manifest["description"] == want, path.name
        assert "papers/" not in json.dumps(bundle.manifest), path.name
