"""Shared fixtures: tiny bundles, isolated model folders, simple labelled images."""

from __future__ import annotations

import sys

import numpy as np
import pytest


def pytest_sessionfinish(session, exitstatus):
    """Let background jobs that GUI tests started end before the interpreter does.

    A napari/superqt worker still running at exit emits ``finished`` on signal objects Python has
    already deleted, and PyQt aborts the process (exit 134) although every test passed.
    """
    if "qtpy" not in sys.modules:
        return
    from qtpy.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(120_000)


@pytest.fixture(autouse=True)
def _isolated_model_dir(tmp_path_factory, monkeypatch):
    """Every test gets an empty per-user model folder (never the real one)."""
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tmp_path_factory.mktemp("user-models")))


def disks_image(size: int = 96, seed: int = 0, n: int = 6):
    """Dark disks on a light background: an RGB uint8 image and its instance labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 230, np.uint8)
    lab = np.zeros((size, size), np.int32)
    for i in range(1, n + 1):
        r = int(rng.integers(5, 10))
        c = rng.integers(r, size - r, 2)
        rr, cc = disk(tuple(c), r, shape=lab.shape)
        lab[rr, cc] = i
        img[rr, cc] = (90, 40, 140)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), lab


@pytest.fixture
def tiny_bundle(tmp_path):
    """An untrained 3-stage U-Net bundle saved to disk (fast to build and run)."""
    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    torch.manual_seed(0)
    fam = get_family("unet")
    model = fam.build_model({"num_classes": 2, "widths": [8, 16, 32]})
    bundle = Bundle.create(model, "unet", model.config, name="tiny",
                           class_names=["background", "nucleus"], task="nuclei")
    bundle.save(tmp_path / "tiny.dgseg")
    return bundle


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test (widget tests)."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def save_tiny_unet(folder, name: str):
    """Save an untrained 2-class U-Net bundle of task ``nuclei`` (widths 8-16-32) as
    ``folder/<name>.dgseg`` and return the folder (a model folder for ``DGSEG_MODEL_DIR``)."""
    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    cfg = {"num_classes": 2, "widths": [8, 16, 32]}
    model = get_family("unet").build_model(cfg)
    Bundle.create(
        model, "unet", cfg, name=name, class_names=["background", "nucleus"], task="nuclei"
    ).save(folder / f"{name}.dgseg")
    return folder


def docked_segment_widget(make_napari_viewer, qtbot, monkeypatch, model_dir, name: str):
    """A Segment widget docked in a new viewer with model ``name`` from ``model_dir`` loaded."""
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(model_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    w.set_model(name)
    return w
