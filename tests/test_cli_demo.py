"""`dgseg demo --headless` through the real entry point: a napari window under Xvfb.

Run with a display (``scripts/test.sh`` runs pytest under ``xvfb-run``); without one, the command
itself is started under ``xvfb-run`` when that is installed. The small ``nuclei`` sample
(512 x 512) keeps it to about 15 s; the default 2048 px slide is what ``scripts/main.sh`` shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def dgseg(*args: str, cwd: Path, display: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", QT_QPA_PLATFORM="xcb")
    cmd = [sys.executable, "-m", "napari_dgseg.cli", *args]
    if display and not env.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            pytest.skip("needs a display or xvfb-run")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.gui
def test_demo_headless_writes_masks_summary_and_screenshot(tmp_path):
    from skimage.io import imread

    from napari_dgseg._napari.sample_data import nuclei_sample
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.labels_io import read_labels

    out = tmp_path / "demo"
    res = dgseg("demo", "--headless", "--sample", "nuclei", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    printed = json.loads(res.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary
    from napari_dgseg.core.bundle_index import default_models

    model = default_models()["nuclei"]  # the demo runs the task's shipped default
    assert summary["sample"] == "nuclei" and summary["model"] == model
    assert summary["image"] == "synthetic H&E"
    assert summary["layers"][0] == "synthetic H&E" and len(summary["masks"]) == 1
    assert "512 x 512" in summary["status"]

    # the mask: a TIFF with the provenance of the run, equal to the bundle's own prediction
    (layer, mask_path), = summary["masks"].items()
    assert layer in summary["layers"] and Path(mask_path).parent == out
    labels, prov = read_labels(mask_path)
    shipped = load_bundle(model)
    assert prov["model"] == model and prov["family"] == shipped.family_name
    assert prov["model_sha256"] == hashlib.sha256(shipped.path.read_bytes()).hexdigest()
    assert prov["image_shape"] == [512, 512] and prov["source_layer"] == "synthetic H&E"
    layers = {kind: data for data, _, kind in nuclei_sample()}
    assert labels.shape == (512, 512)
    expected = shipped.predict(layers["image"], tile=prov["tile"], overlap=prov["overlap"])
    np.testing.assert_array_equal(labels, expected.labels)
    truth = layers["labels"] > 0
    dice = 2 * np.sum(truth & (labels > 0)) / (truth.sum() + (labels > 0).sum())
    assert dice > 0.9, dice

    # the screenshot: the whole window (not only the canvas), not blank
    shot = imread(summary["screenshot"])
    assert Path(summary["screenshot"]) == out / "screenshot.png"
    assert shot.ndim == 3 and shot.shape[0] >= 600 and shot.shape[1] >= 1000
    assert shot[..., :3].std() > 20


def test_demo_unknown_sample_is_one_line(tmp_path):
    res = dgseg("demo", "--headless", "--sample", "no-such-sample", "--out", str(tmp_path / "d"),
                cwd=tmp_path, display=False)
    assert res.returncode == 2 and "invalid choice" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "d").exists()
