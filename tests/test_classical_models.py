"""The classical baselines as shipped models: same masks as the reference methods, everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.bundle_index import list_bundles
from napari_dgseg.core.classical import classical_nuclei, classical_vessels
from napari_dgseg.core.data.synthetic import make_sample
from napari_dgseg.core.errors import InputError


@pytest.fixture(scope="module")
def he_tile():
    return make_sample("nuclei", 192, domain="dark-stain", seed=11)


def test_classical_he_bundle_is_the_reference_method(he_tile):
    pred = load_bundle("classical-he").predict(he_tile.image)
    _, want = classical_nuclei(he_tile.image)
    assert np.array_equal(pred.labels, want)
    assert pred.probabilities.shape == (2, *he_tile.labels.shape)
    assert pred.provenance["family"] == "classical-he"
    assert pred.provenance["dcin"]["mode"] == "none"


def test_classical_fundus_bundle_is_the_reference_method():
    s = make_sample("vessels", 256, domain="camera-b", seed=2)
    pred = load_bundle("classical-fundus").predict(s.image)
    assert np.array_equal(pred.labels > 0, classical_vessels(s.image))


def test_classical_models_are_listed_with_their_task():
    rows = {r["name"]: r for r in list_bundles()}
    assert rows["classical-he"]["task"] == "nuclei"
    assert rows["classical-fundus"]["task"] == "vessels"
    assert not rows["classical-he"].get("broken")


def test_a_too_large_image_is_refused_before_reading(monkeypatch, he_tile):
    from napari_dgseg.core import inference

    monkeypatch.setattr(inference, "MAX_WHOLE_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="select a region"):
        load_bundle("classical-he").predict(he_tile.image)


def test_predict_cli_runs_the_classical_model(tmp_path, he_tile):
    img = tmp_path / "tile.tif"
    tifffile.imwrite(img, he_tile.image)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_dgseg.cli", "predict", str(img), "--model", "classical-he",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert "classical-he" in json.dumps(summary)
    masks = list((tmp_path / "out").glob("*.tif"))
    assert masks
    _, want = classical_nuclei(he_tile.image)
    got = tifffile.imread(masks[0])
    assert got.max() == want.max()  # the same number of nuclei
