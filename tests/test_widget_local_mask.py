"""Local feature masks in napari (run under Xvfb): the Segment widget's "Domain-gap map" action,
the local-mask layer of a model adapted with local alignment, the Adapt widget's checkbox.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_local_mask.py -q

A tiny U-Net trained for a few iterations on dark disks (so it carries a replay set) sits in a
temporary user model folder.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import disks_image

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-disks"


def shifted(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    out = img[..., [2, 0, 1]].astype(float) * np.array([0.75, 0.95, 0.6])
    return np.clip(gaussian_filter(out, sigma=(1.5, 1.5, 0)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from napari_dgseg.core.data.sample import Sample
    from napari_dgseg.core.train.adapt import adapt
    from napari_dgseg.core.train.source import train

    folder = tmp_path_factory.mktemp("models")
    samples = [Sample(*disks_image(96, seed=i, n=8), f"s{i}", domain="a") for i in range(3)]
    parent = train("unet", [samples], out=folder / f"{MODEL}.dgseg", iters=20, size=64, batch=2,
                   config={"widths": [8, 16, 32]}, seed=0)
    targets = [shifted(disks_image(96, seed=50 + i, n=8)[0]) for i in range(2)]
    adapt(parent, targets, iters=2, size=64, batch=2, local_alignment=True, device="cpu",
          out=folder / f"{MODEL}-la.dgseg", name=f"{MODEL}-la")
    return folder


@pytest.fixture
def segment(make_napari_viewer, qtbot, model_dir, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(model_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    w.set_model(MODEL)
    w.device_combo.setCurrentText("cpu")
    return w


def _patched_image() -> np.ndarray:
    img, _ = disks_image(128, seed=7, n=14)
    img = img.copy()
    img[32:96, 40:104] = shifted(disks_image(128, seed=8, n=14)[0])[32:96, 40:104]
    return img


def test_domain_gap_map_action_adds_the_mask_layer_over_the_image(segment):
    viewer = segment.viewer
    image = viewer.add_image(_patched_image(), name="tile", rgb=True, scale=(0.5, 0.5),
                             translate=(10.0, 20.0))
    segment.set_image_layer(image)
    layer = segment.gap_map.run(sync=True, steps=120)
    assert layer is not None and layer.name == f"tile domain-gap map ({MODEL})"
    assert layer in viewer.layers and layer.data.shape == (128, 128)
    assert layer.colormap.name == "inferno" and tuple(layer.contrast_limits) == (0.0, 1.0)
    assert layer.blending == "translucent" and layer.visible and layer.opacity == 0.85
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (10.0, 20.0))
    data = np.asarray(layer.data)
    assert 0.0 <= float(data.min()) and float(data.max()) < 1.0
    assert float(data[40:88, 48:96].mean()) > float(data[:24].mean())  # the injected patch
    assert layer.metadata["provenance"]["steps"] == 120
    assert "Domain-gap map" in segment.gap_map.status_label.text()
    assert segment.gap_map.button.isEnabled() and not segment.gap_map.running


def test_domain_gap_map_cancel_adds_nothing(segment):
    viewer = segment.viewer
    image = viewer.add_image(_patched_image(), name="tile", rgb=True)
    segment.set_image_layer(image)
    action = segment.gap_map
    action.runner.progressed.connect(lambda *_: action.cancel())
    n = len(viewer.layers)
    assert action.run(sync=True, steps=50) is None
    assert len(viewer.layers) == n and "cancelled" in action.status_label.text()
    assert action.button.isEnabled()


def test_without_a_model_or_image_the_action_says_what_to_do(segment, notes):
    assert segment.gap_map.run(sync=True) is None
    assert any("no image" in m for m in notes)


def test_segment_run_with_an_adapted_model_shows_its_local_mask(segment):
    viewer = segment.viewer
    image = viewer.add_image(shifted(disks_image(96, seed=3, n=8)[0]), name="t", rgb=True)
    segment.set_model(f"{MODEL}-la")
    segment.set_image_layer(image)
    layers = segment.run(sync=True)
    masks = [lyr for lyr in layers if lyr.name == f"t local mask ({MODEL}-la)"]
    assert len(masks) == 1
    mask = masks[0]
    assert mask.colormap.name == "inferno" and tuple(mask.contrast_limits) == (0.0, 1.0)
    assert mask.data.shape == (96, 96) and mask.blending == "translucent"


def test_adapt_widget_local_alignment_checkbox(make_napari_viewer, qtbot, model_dir, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(model_dir))
    from napari_dgseg._napari.widgets.adapt import AdaptWidget

    viewer = make_napari_viewer()
    for i in range(2):
        viewer.add_image(shifted(disks_image(96, seed=60 + i, n=8)[0]), name=f"target{i}",
                         rgb=True)
    w = AdaptWidget(viewer)
    viewer.window.add_dock_widget(w, name="Adapt")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    w.model_picker.load(MODEL, sync=True)
    w.size_spin.setValue(64)
    w.iters_spin.setValue(2)
    assert not w.local_check.isChecked()
    w.local_check.setChecked(True)
    assert w.run([viewer.layers["target0"], viewer.layers["target1"]], sync=True)
    result = w.result
    assert result is not None and result.manifest["capabilities"] == ["local_mask"]
    assert result.provenance["local_alignment"]["d1"]
