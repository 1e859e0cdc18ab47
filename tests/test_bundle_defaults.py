"""Each task's default model: the shipped defaults.json, listing order, the demo's choice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from napari_dgseg.core import bundle_index


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A private shipped folder with two real bundles and no user models."""
    folder = tmp_path / "bundles"
    folder.mkdir()
    for name in ("nuclei-unet", "nuclei-hovernet"):
        shutil.copy(bundle_index.shipped_dir() / f"{name}.dgseg", folder)
    monkeypatch.setattr(bundle_index, "shipped_dir", lambda: folder)
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tmp_path / "user"))
    return folder


def _write_defaults(folder, text):
    (folder / bundle_index.DEFAULTS_FILE).write_text(text, encoding="utf-8")


def test_the_shipped_defaults_name_shipped_models():
    defaults = bundle_index.default_models()
    assert {"nuclei", "vessels"} <= set(defaults)
    shipped = {p.stem for p in bundle_index.shipped_dir().glob("*.dgseg")}
    assert set(defaults.values()) <= shipped


def test_default_comes_first_and_is_marked(shipped):
    _write_defaults(shipped, json.dumps({"tasks": {"nuclei": {"model": "nuclei-unet"}}}))
    rows = bundle_index.list_bundles()
    assert [r["name"] for r in rows] == ["nuclei-unet", "nuclei-hovernet"]
    assert [r["default"] for r in rows] == [True, False]
    _write_defaults(shipped, json.dumps({"tasks": {"nuclei": {"model": "nuclei-hovernet"}}}))
    rows = bundle_index.list_bundles()
    assert [r["name"] for r in rows] == ["nuclei-hovernet", "nuclei-unet"]


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", '{"tasks": {"nuclei": 3}}'])
def test_a_broken_defaults_file_means_no_default(shipped, text):
    _write_defaults(shipped, text)
    assert bundle_index.default_models() == {}
    assert not any(r["default"] for r in bundle_index.list_bundles())


def test_demo_refuses_an_unknown_model_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_dgseg.cli", "demo", "--headless", "--model", "nope",
         "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "no model named 'nope'" in proc.stderr and "Traceback" not in proc.stderr
