"""The Segment widget streams a whole large multiscale slide (napari_dgseg._napari.slide_job).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_slide.py -q
"""

from __future__ import annotations

import pytest

from conftest import save_tiny_unet

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-unet"


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(save_tiny_unet(tmp_path_factory.mktemp("m"), MODEL)))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    if w.model_picker.bundle is None or w.model_picker.bundle.name != MODEL:
        w.model_picker.load(MODEL, sync=True)
    w.device_combo.setCurrentText("cpu")
    return w


def test_whole_multiscale_slide_is_streamed_to_zarr(widget, tmp_path, monkeypatch):
    import napari_dgseg._napari.slide_job as slide_job
    from napari_dgseg._napari.reader import read_one
    from test_wsi_stream import nuclei_slide, write_pyramid

    monkeypatch.setattr(slide_job, "SLIDE_JOB_MIN_PIXELS", 500 * 500)  # this one counts as large
    slide = write_pyramid(tmp_path / "case.svs", nuclei_slide(704, 896))
    data, kwargs, _ = read_one(slide)
    layer = widget.viewer.add_image(data, **kwargs)
    assert layer.multiscale
    added = widget.segment_layer(layer, sync=True)
    out = tmp_path / f"case_{MODEL}.zarr"
    assert out.is_dir() and (out / ".dgseg-blocks" / "finalized").is_file()
    assert len(added) == 1 and added[0]._type_string == "labels"
    labels = added[0]
    assert labels.multiscale and labels.data[0].shape == (704, 896)
    assert tuple(labels.scale) == pytest.approx(tuple(layer.scale))  # on the slide, in um
    assert widget.progress_bar.format() == "%v / %m blocks"
    assert "streamed" in widget.status_label.text()
