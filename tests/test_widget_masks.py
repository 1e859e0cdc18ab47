"""The Segment widget's mask controls (threshold, minimum size) and display controls (Xvfb).

Changing them re-derives the last result from its kept probabilities: the labels change and the
network is not run again (``run_tiled`` is spied on).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import docked_segment_widget, save_tiny_unet

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-unet-masks"


@pytest.fixture(scope="module")
def tiny_bundle_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("models"), MODEL)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_bundle_dir, monkeypatch):
    w = docked_segment_widget(make_napari_viewer, qtbot, monkeypatch, tiny_bundle_dir, MODEL)
    w.tile_spin.setValue(128)
    w.overlap_spin.setValue(16)
    w.device_combo.setCurrentText("cpu")
    w.dcin.mode_combo.setCurrentText("none")
    return w


@pytest.fixture
def forward_calls(monkeypatch):
    """Count the tiled forward passes the widget makes."""
    import napari_dgseg.core.inference as inference

    calls = []
    real = inference.run_tiled

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "run_tiled", spy)
    return calls


def _segment(widget):
    rng = np.random.default_rng(1)
    image = widget.viewer.add_image(rng.integers(0, 256, (96, 120, 3), np.uint8), name="img")
    widget.set_image_layer(image)
    (labels, *_) = widget.run(sync=True)
    return labels


def test_threshold_changes_mask_without_forward_pass(widget, forward_calls):
    labels = _segment(widget)
    assert len(forward_calls) == 1
    assert widget._kept.probabilities is not None
    assert widget._kept.probabilities.shape == (2, 96, 120)
    model_mask = labels.data.copy()
    # an untrained model is unsure everywhere; give the kept result a known probability map:
    # a sure 20 x 20 object, an unsure one (p = 0.6) and a sure 3 x 3 speck
    fg = np.full((96, 120), 0.1, np.float32)
    fg[10:30, 10:30] = 0.95
    fg[50:70, 50:70] = 0.6
    fg[80:83, 100:103] = 0.95
    probs = np.stack([1.0 - fg, fg])
    widget._kept.probabilities = probs

    widget.threshold_spin.setValue(0.7)
    t = widget.threshold_spin.value()
    expected = (probs[1] >= t).astype(np.int32)
    assert np.array_equal(labels.data, expected)
    assert int(labels.data.sum()) == 400 + 9
    assert labels.metadata["provenance"]["mask_controls"] == {"threshold": t, "min_size": 0}

    foreground = 100.0 * 409 / (96 * 120)
    assert widget.status.endswith(f"masks: threshold 0.70, min 0 px -> {foreground:.1f} % foreground")
    widget.min_size_spin.setValue(50)
    from napari_dgseg.core.relabel import relabel

    assert np.array_equal(labels.data, relabel(probs, t, 50))
    assert int(labels.data.sum()) == 400

    widget.threshold_spin.setValue(0.5)
    widget.min_size_spin.setValue(0)
    assert np.array_equal(labels.data, model_mask)
    assert "mask_controls" not in labels.metadata["provenance"]
    assert "masks:" not in widget.status
    assert len(forward_calls) == 1  # never re-ran the network


def test_controls_apply_to_the_next_run(widget, forward_calls):
    widget.threshold_spin.setValue(0.9)
    labels = _segment(widget)
    probs = widget._kept.probabilities
    assert np.array_equal(labels.data, (probs[1] >= 0.9).astype(np.int32))


def test_masks_get_task_colours_opacity_and_outline(widget, forward_calls):
    labels = _segment(widget)
    # the bundle's red is replaced by the nuclei colour (chartreuse) for a task "nuclei" model
    rgba = labels.colormap.map(np.array([1]))[0]
    assert np.allclose(rgba[:3], [170 / 255, 1.0, 0.0])
    assert labels.opacity == pytest.approx(widget.opacity_spin.value())
    widget.opacity_spin.setValue(0.3)
    widget.contour_spin.setValue(3)
    assert labels.opacity == pytest.approx(0.3) and labels.contour == 3
    assert len(forward_calls) == 1
