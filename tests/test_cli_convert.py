"""`dgseg convert` through the real entry point (``python -m napari_dgseg.cli`` in a subprocess).

Each call starts a fresh interpreter (torch import: a few seconds), hence ``slow``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.bundle import Bundle, load_bundle
from napari_dgseg.core.registry import get_family

pytestmark = pytest.mark.slow

CONFIG = {"num_classes": 2, "widths": [8, 16]}


def dgseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "napari_dgseg.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def source_model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = get_family("unet").build_model(CONFIG)
    with torch.no_grad():  # non-default BN statistics, so buffers must survive the conversion too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_convert_plain_tensor_checkpoint_predicts_like_the_source(tmp_path):
    model = source_model()
    ckpt = tmp_path / "plain.pth"
    # plain tensors under "state_dict" next to plain Python values: loads with weights_only=True
    torch.save({"state_dict": model.state_dict(), "epoch": 7, "lr": 1e-3}, ckpt)
    res = dgseg("convert", str(ckpt), "--family", "unet", "--config", json.dumps(CONFIG),
                "--out", str(tmp_path / "converted"), "--classes", "background", "nucleus",
                "--task", "nuclei", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    path = Path(out["bundle"])
    assert path == tmp_path / "converted.dgseg" and path.is_file()
    assert out["family"] == "unet"
    assert out["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    bundle = load_bundle(path)
    assert bundle.class_names == ("background", "nucleus") and bundle.manifest["task"] == "nuclei"
    assert bundle.name == "plain"
    assert bundle.provenance["converted_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert bundle.config["widths"] == [8, 16]
    state = model.state_dict()
    assert set(bundle.state_dict()) == set(state)
    assert all(torch.equal(bundle.state_dict()[k], state[k]) for k in state)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), model(x))
    # the whole prediction path (normalisation, tiling, post-processing) agrees too
    img, _ = disks_image(80, seed=4)
    # same task as the converted bundle, so both are brought to the same (default) scale
    reference = Bundle.create(model, "unet", CONFIG, name="ref", task="nuclei",
                              class_names=["background", "nucleus"]).predict(img, tile=64, overlap=16)
    got = bundle.predict(img, tile=64, overlap=16)
    np.testing.assert_array_equal(got.labels, reference.labels)
    np.testing.assert_array_equal(got.probabilities, reference.probabilities)


class _Custom:
    """A custom class: unpickling it would run ``open(marker, "w")``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_convert_refuses_pickle_with_custom_class(tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": source_model().state_dict(), "extra": _Custom(str(marker))}, ckpt)
    out = tmp_path / "evil.dgseg"
    res = dgseg("convert", str(ckpt), "--family", "unet", "--config", json.dumps(CONFIG),
                "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2
    err = res.stderr.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert err.startswith("dgseg convert: error:") and "weights_only" in err and str(ckpt) in err
    assert res.stdout == ""
    assert not out.exists() and not marker.exists()


def test_convert_bad_inputs_one_line_each(tmp_path):
    model = source_model()
    ckpt = tmp_path / "plain.pt"
    torch.save(model.state_dict(), ckpt)
    cases = [
        (["convert", str(tmp_path / "missing.pt"), "--family", "unet", "--out", "x"], "does not exist"),
        # weights of widths [8, 16] do not fit the default architecture
        (["convert", str(ckpt), "--family", "unet", "--out", "x"], "--config"),
        (["convert", str(ckpt), "--family", "resnet-9000", "--out", "x"], "valid families"),
    ]
    for args, expected in cases:
        res = dgseg(*args, cwd=tmp_path)
        err = res.stderr.strip()
        assert res.returncode == 2 and err.count("\n") == 0 and expected in err, (args, err)
    assert not (tmp_path / "x.dgseg").exists()
