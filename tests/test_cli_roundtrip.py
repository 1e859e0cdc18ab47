"""The CLI's side of the round trip: outputs on the image's scale, smallest label types, nothing
left behind by a failed run, a quiet end on a closed pipe, and a start without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_dgseg
from conftest import disks_image
from napari_dgseg.cli import EXIT_BROKEN_PIPE, main
from napari_dgseg.core.labels_io import read_labels, read_placement
from napari_dgseg.core.slide import open_image

SRC = str(Path(napari_dgseg.__file__).resolve().parents[1])


def _env() -> dict[str, str]:
    """The environment of a child ``python -m napari_dgseg.cli``: this checkout's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_predict_outputs_carry_the_image_pixel_size(tiny_bundle, tmp_path, capsys):
    img, _ = disks_image(96, seed=3)
    # an image of 0.25 um pixels (resolution tags in centimetres, as scanners' TIFF exports)
    tifffile.imwrite(
        tmp_path / "tile.tif", img, photometric="rgb", resolution=(40000.0, 40000.0),
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    assert open_image(tmp_path / "tile.tif").pixel_size_um == pytest.approx((0.25, 0.25))
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o"),
               "--tile", "64", "--overlap", "16", "--probabilities", "--quiet",
               str(tmp_path / "tile.tif")])  # fmt: skip
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["outputs"][0]
    labels, record = read_labels(row["labels"])
    assert labels.dtype == np.uint8  # two classes: the smallest type
    placement = read_placement(record)
    assert placement is not None and placement.unit == "micrometer"
    assert placement.scale == pytest.approx((0.25, 0.25)) and placement.translate == (0.0, 0.0)
    assert open_image(row["labels"]).pixel_size_um == pytest.approx((0.25, 0.25))
    for key in ("labels", "probabilities"):  # every output, for any TIFF reader: 40000 px/cm
        with tifffile.TiffFile(row[key]) as tf:
            tags = tf.pages.first.tags
            assert tags["ResolutionUnit"].value == 3
            x_num, x_den = tags["XResolution"].value
            assert x_num / x_den == pytest.approx(40000.0)
        assert read_placement(read_labels(row[key])[1]) == placement


def test_failed_predict_leaves_no_empty_folder(tiny_bundle, tmp_path, capsys):
    model = str(tmp_path / "tiny.dgseg")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "runs" / "today"  # neither folder exists yet
    # the batch goes on past a bad file and reports it (status 1); here nothing was written
    assert main(["predict", "--model", model, "--out", str(out), str(tmp_path / "broken.png")]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "runs").exists()
    # a folder that existed before the run is kept, even when it is empty
    (tmp_path / "kept").mkdir()
    assert main(["predict", "--model", model, "--out", str(tmp_path / "kept"),
                 str(tmp_path / "broken.png")]) == 1  # fmt: skip
    assert (tmp_path / "kept").is_dir()
    # and a folder that holds something (a parent with other files) is never removed
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["predict", "--model", model, "--out", str(tmp_path / "busy" / "new"),
                 str(tmp_path / "broken.png")]) == 1  # fmt: skip
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "busy" / "new").exists()


@pytest.mark.parametrize("reader", ["head -c 10", "true"])
def test_closed_pipe_ends_quietly(reader):
    """``dgseg models | head -c 10``: no traceback, status 0 or 141 (128 + SIGPIPE)."""
    cmd = f'"{sys.executable}" -m napari_dgseg.cli models | {reader}; exit "${{PIPESTATUS[0]}}"'
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=_env(), timeout=300)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.stderr == ""
    assert res.returncode in (0, EXIT_BROKEN_PIPE)
    if reader == "true":  # the reader never read: the write failed, and was handled
        assert res.returncode == EXIT_BROKEN_PIPE
    else:
        assert len(res.stdout) == 10


def test_help_imports_neither_torch_nor_napari():
    code = (
        "import sys, contextlib, io\n"
        "from napari_dgseg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('usage: dgseg' in out.getvalue(), 'torch' in sys.modules, 'napari' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    assert res.stdout.split() == ["True", "False", "False"]


def test_models_lists_bundles_without_importing_torch(tiny_bundle):
    """`dgseg models` reads manifests only (core/bundle_index.py): no torch, no model code."""
    from napari_dgseg.core.bundle import user_dir

    tiny_bundle.save(user_dir() / "mine.dgseg")
    code = (
        "import sys, contextlib, io, json\n"
        "from napari_dgseg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    rc = main(['models'])\n"
        "names = [m['name'] for m in json.loads(out.getvalue())['models'] if not m.get('broken')]\n"
        "print(rc, 'mine' in names, 'nuclei-unet' in names, 'torch' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    assert res.stdout.split() == ["0", "True", "True", "False"]
