"""The Segment widget's Scale field (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_scale_widget.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import docked_segment_widget, save_tiny_unet

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-unet"


@pytest.fixture(scope="module")
def tiny_bundle_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("models"), MODEL)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_bundle_dir, monkeypatch):
    return docked_segment_widget(make_napari_viewer, qtbot, monkeypatch, tiny_bundle_dir, MODEL)


def _labels(layers):
    return [lyr for lyr in layers if lyr._type_string == "labels"][0]


def test_scale_field_shows_the_model_and_the_estimate(widget):
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.resample import zoom_image

    controls = widget.scale_controls
    assert controls.model_label.text() == "model: 0.25 µm/px, nuclei 17.1 px"
    assert not controls.value_spin.isEnabled()  # auto: nothing to type
    image = np.clip(np.round(zoom_image(make_nuclei(160, "clean", seed=3)[0], 2.0)), 0, 255)
    widget.viewer.add_image(image.astype(np.uint8), name="he2x", rgb=True)
    layers = widget.run(sync=True)
    scale = _labels(layers).metadata["provenance"]["scale"]
    assert scale["source"] == "estimated" and scale["applied"]
    assert 0.4 <= scale["factor"] <= 0.6
    assert _labels(layers).data.shape == (320, 320)
    text = controls.result_label.text()
    assert text.startswith("last run: factor 0.") and "(estimated: objects" in text
    # the estimate is in the value field, ready to adjust
    assert controls.value_spin.value() == pytest.approx(scale["proposed"], abs=1e-3)


def test_a_declined_estimate_says_why_in_the_line_and_the_tooltip(widget):
    """Small nuclei under strong blur: the learned ruler vetoes the blob peak; the Scale field
    says so in one line and the full reason is in its tooltip."""
    from scipy import ndimage as ndi

    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.resample import zoom_image

    img = ndi.gaussian_filter(zoom_image(make_nuclei(570, "clean", seed=11)[0], 0.45), (2.2, 2.2, 0))
    widget.viewer.add_image(np.clip(np.round(img), 0, 255).astype(np.uint8)[:256, :256],
                            name="small-blurred", rgb=True)
    scale = _labels(widget.run(sync=True)).metadata["provenance"]["scale"]
    assert (scale["source"], scale["applied"]) == ("none", False)
    controls = widget.scale_controls
    assert controls.result_label.text() == (
        "last run: not resampled: size estimate not confirmed by the learned ruler")
    assert "learned ruler" in controls.result_label.toolTip()
    assert controls.result_label.toolTip() == scale["reason"]


def test_user_factor_and_pixel_size_reach_the_model(widget):
    rng = np.random.default_rng(0)
    widget.viewer.add_image(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), name="img",
                            rgb=True, metadata={"pixel_size_um": [0.5, 0.5]})
    controls = widget.scale_controls
    controls.set_mode("factor", 1.5)
    assert controls.value_spin.isEnabled()
    scale = _labels(widget.run(sync=True)).metadata["provenance"]["scale"]
    assert (scale["source"], scale["factor"], scale["model_grid_shape"]) == ("user", 1.5, [135, 180])
    assert controls.result_label.text() == "last run: factor 1.5 (user)"
    controls.set_mode("from file")  # the reader's pixel size in the layer metadata
    scale = _labels(widget.run(sync=True)).metadata["provenance"]["scale"]
    assert (scale["source"], scale["factor"]) == ("metadata", 2.0)
    controls.set_mode("off")
    scale = _labels(widget.run(sync=True)).metadata["provenance"]["scale"]
    assert (scale["source"], scale["applied"]) == ("none", False)
    assert controls.result_label.text() == "last run: not resampled"
    with pytest.raises(ValueError, match="unknown scale mode"):
        controls.set_mode("huge")


def test_folder_run_uses_the_scale_field_and_each_file_s_pixel_size(widget, tmp_path):
    import tifffile

    from napari_dgseg.core.labels_io import read_labels

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    tifffile.imwrite(src / "a.tif", image, photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    widget.scale_controls.set_mode("from file")
    widget.run_folder(src, out / "1", sync=True)
    labels, record = read_labels(out / "1" / "a_labels.tif")
    assert labels.shape == (64, 80)
    assert (record["scale"]["source"], record["scale"]["factor"]) == ("metadata", 2.0)
    widget.scale_controls.set_mode("factor", 1.5)
    widget.run_folder(src, out / "2", sync=True)
    record = read_labels(out / "2" / "a_labels.tif")[1]
    assert (record["scale"]["source"], record["scale"]["factor"]) == ("user", 1.5)
