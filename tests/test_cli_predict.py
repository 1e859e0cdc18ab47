"""`dgseg predict`, `info`, `models`, `train`, `bank`, `convert` through the real entry point."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

from conftest import disks_image
from napari_dgseg.cli import main
from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.labels_io import read_labels


def _dataset(root: Path, n: int = 3) -> Path:
    import tifffile

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img, lab = disks_image(96, seed=i)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        tifffile.imwrite(root / "labels" / f"t{i}.tif", lab)
    return root


def test_predict_equals_bundle_predict(tiny_bundle, tmp_path, capsys):
    img, _ = disks_image(120, seed=9)
    imsave(tmp_path / "tile.png", img, check_contrast=False)
    model = tmp_path / "tiny.dgseg"
    rc = main(["predict", "--model", str(model), "--out", str(tmp_path / "out"), "--tile", "64",
               "--overlap", "16", "--probabilities", "--quiet", str(tmp_path / "tile.png")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    labels, prov = read_labels(out["outputs"][0]["labels"])
    expected = load_bundle(model).predict(img, tile=64, overlap=16)
    np.testing.assert_array_equal(labels, expected.labels)
    assert prov["model"] == "tiny" and prov["tile"] == 64
    assert prov["source_image"].endswith("tile.png")
    assert Path(out["outputs"][0]["probabilities"]).is_file()


def test_predict_bad_inputs(tiny_bundle, tmp_path, capsys):
    model = str(tmp_path / "tiny.dgseg")
    assert main(["predict", "--model", model, "--out", str(tmp_path), str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", model, "--out", str(tmp_path), str(tmp_path / "empty")]) == 2
    assert "no supported images" in capsys.readouterr().err
    assert main(["predict", "--model", "no-such-model", "--out", str(tmp_path), model]) == 2
    assert "no model bundle" in capsys.readouterr().err


def test_train_info_bank_convert_cli(tmp_path, capsys):
    data = _dataset(tmp_path / "src")
    out = tmp_path / "m.dgseg"
    rc = main(["train", "unet", "--source", str(data), "--out", str(out), "--iters", "3",
               "--size", "64", "--batch", "2", "--config", '{"widths": [8, 16, 32]}', "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 3 and Path(summary["bundle"]).is_file()
    bundle = load_bundle(out)
    assert bundle.extra("bank") is not None and bundle.extra("replay") is not None
    assert "dgseg train unet" in bundle.provenance["command"]
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "unet" and info["dcin"]["images"] == 3
    assert main(["bank", str(out), "--source", str(data), "--out", str(tmp_path / "b.dgseg")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["train", "unet", "--source", str(data), "--out", str(out), "--config", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_models():
    exe = Path(sys.executable).with_name("dgseg")
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    res = subprocess.run([str(exe), "models"], capture_output=True, text=True, check=True)
    names = {m["name"] for m in json.loads(res.stdout)["models"]}
    assert "nuclei-unet" in names
