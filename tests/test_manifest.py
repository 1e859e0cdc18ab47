"""The plugin manifest is valid and the core stays free of napari and Qt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NPE2 = Path(sys.executable).parent / "npe2"
GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

_IMPORT_CORE = r"""
import importlib, json, pkgutil, sys
import napari_dgseg
import napari_dgseg.core as core
failed = {}
names = ["napari_dgseg", "napari_dgseg.core"]
for info in pkgutil.walk_packages(core.__path__, prefix="napari_dgseg.core."):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = f"{type(exc).__name__}: {exc}"
gui = sorted(m for m in sys.modules if m.split(".")[0] in GUI)
print(json.dumps({"modules": names, "failed": failed, "gui": gui}))
"""


def _run_python(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", f"GUI = {GUI_MODULES!r}\n" + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_npe2_validate_passes():
    if not NPE2.exists():
        pytest.skip("npe2 console script not installed next to this Python")
    proc = subprocess.run(
        [str(NPE2), "validate", "napari-dgseg"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


@pytest.mark.slow
def test_core_imports_pull_in_no_napari_or_qt():
    result = _run_python(_IMPORT_CORE)
    assert "napari_dgseg.core.slide" in result["modules"]
    assert "napari_dgseg.core.labels_io" in result["modules"]
    assert result["failed"] == {}, result["failed"]
    assert result["gui"] == [], f"core imported GUI modules: {result['gui']}"


@pytest.mark.slow
def test_opening_a_slide_pulls_in_no_napari_or_qt(tmp_path):
    code = (
        "import json, sys, numpy as np, tifffile\n"
        "from napari_dgseg.core.slide import open_image, to_rgb_uint8\n"
        "from napari_dgseg.core.labels_io import write_labels, read_labels\n"
        f"p = {str(tmp_path / 'x.tif')!r}\n"
        "tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8), tile=(32, 32))\n"
        "to_rgb_uint8(open_image(p).full[:8, :8])\n"
        f"read_labels(write_labels({str(tmp_path / 'l.tif')!r}, np.eye(16, dtype='uint8')))\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in GUI)\n"
        "print(json.dumps({'gui': gui}))\n"
    )
    assert _run_python(code)["gui"] == []


def test_manifest_python_names_of_io_contributions_resolve():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-dgseg")
    mine = {
        "napari-dgseg.get_reader",
        "napari-dgseg.write_labels_tif",
        "napari-dgseg.write_labels_zarr",
        "napari-dgseg.sample_nuclei",
        "napari-dgseg.sample_nuclei_slide",
        "napari-dgseg.sample_vessels",
        "napari-dgseg.sample_retina",
        "napari-dgseg.sample_ihc",
    }
    commands = {c.id: c for c in manifest.contributions.commands}
    assert mine <= set(commands)
    for command_id in sorted(mine):
        module_name, _, attr = commands[command_id].python_name.partition(":")
        module = __import__(module_name, fromlist=[attr])
        assert callable(getattr(module, attr)), command_id
    patterns = manifest.contributions.readers[0].filename_patterns
    for suffix in ("*.tif", "*.tiff", "*.svs", "*.png", "*.jpg", "*.jpeg", "*.zarr"):
        assert suffix in patterns
