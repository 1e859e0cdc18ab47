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


def save_foreground_unet(folder, name: str):
    """A tiny U-Net whose head says 'nucleus' everywhere: every written block is visibly 1."""
    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    cfg = {"num_classes": 2, "widths": [8, 16, 32]}
    model = get_family("unet").build_model(cfg)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-20.0, 20.0]))
    Bundle.create(model, "unet", cfg, name=name, class_names=["background", "nucleus"],
                  task="nuclei").save(folder / f"{name}.dgseg")
    return folder


def test_slide_result_layer_is_shown_from_run_and_grows_block_by_block(
        make_napari_viewer, qtbot, tmp_path, tmp_path_factory, monkeypatch):
    import numpy as np
    import zarr

    import napari_dgseg._napari.slide_job as slide_job
    import napari_dgseg._napari.slide_preview as slide_preview
    import napari_dgseg.core.wsi as wsi
    from conftest import docked_segment_widget
    from napari_dgseg._napari.reader import read_one
    from test_wsi_stream import nuclei_slide, write_pyramid

    monkeypatch.setattr(slide_job, "SLIDE_JOB_MIN_PIXELS", 500 * 500)
    monkeypatch.setattr(wsi, "DEFAULT_BLOCK", 256)  # 3 x 4 blocks
    monkeypatch.setattr(slide_preview, "PREVIEW_SIDE", 256)  # a coarse preview: every 4th px
    name = "fg-unet"
    widget = docked_segment_widget(make_napari_viewer, qtbot, monkeypatch,
                                   save_foreground_unet(tmp_path_factory.mktemp("m"), name), name)
    widget.device_combo.setCurrentText("cpu")
    slide = write_pyramid(tmp_path / "case.svs", nuclei_slide(704, 896))
    data, kwargs, _ = read_one(slide)
    image = widget.viewer.add_image(data, **kwargs)
    out = tmp_path / f"case_{name}.zarr"
    seen = []

    def snapshot(done: int, total: int) -> None:  # in sync mode: right after the block's paint
        layer = widget.viewer.layers[f"case {name}"]  # there before the run has ended
        markers = {int(p.stem) for p in (out / ".dgseg-blocks").glob("*.done")}
        seen.append((done, total, layer, np.asarray(layer.data[0][::4, ::4]), markers))

    widget.runner.progressed.connect(snapshot)
    added = widget.segment_layer(image, sync=True)
    widget.runner.progressed.disconnect(snapshot)

    assert [s[0] for s in seen] == list(range(13)) and {s[1] for s in seen} == {12}
    layer = added[0]
    assert all(s[2] is layer for s in seen)  # one layer, added at Run, kept at the end
    assert layer.multiscale and tuple(layer.scale) == pytest.approx(tuple(image.scale))
    for done, _, _, view, markers in seen:
        assert len(markers) == done
        for block in range(12):  # a written block shows its labels (1), the others nothing yet
            by, bx = divmod(block, 4)
            tile = view[by * 64:(by + 1) * 64, bx * 64:(bx + 1) * 64]
            assert tile.size and np.all(tile == (1 if block in markers else 0)), (done, block)
    # after the run the same layer reads the finished OME-Zarr, every level
    for k, level in enumerate(layer.data):
        stored = np.asarray(zarr.open_array(str(out / str(k)), mode="r", zarr_format=2)[:])
        assert np.array_equal(np.asarray(level[:, :]), stored)
    assert layer.metadata["provenance"]["blocks"] == 12
    assert "streamed" in widget.status_label.text()


def test_cancelled_slide_run_removes_its_live_layer(widget, tmp_path, monkeypatch):
    import napari_dgseg._napari.slide_job as slide_job
    import napari_dgseg.core.wsi as wsi
    from napari_dgseg._napari.reader import read_one
    from test_wsi_stream import nuclei_slide, write_pyramid

    monkeypatch.setattr(slide_job, "SLIDE_JOB_MIN_PIXELS", 500 * 500)
    monkeypatch.setattr(wsi, "DEFAULT_BLOCK", 256)
    slide = write_pyramid(tmp_path / "case.svs", nuclei_slide(704, 896))
    data, kwargs, _ = read_one(slide)
    image = widget.viewer.add_image(data, **kwargs)
    name = f"case {MODEL}"

    def cancel_after_two(done: int, total: int) -> None:
        if done == 2:
            assert name in widget.viewer.layers
            widget.runner.cancel()

    widget.runner.progressed.connect(cancel_after_two)
    widget.segment_layer(image, sync=True)
    widget.runner.progressed.disconnect(cancel_after_two)
    assert name not in widget.viewer.layers  # the preview of a cancelled run is not a result
    assert "cancelled" in widget.status_label.text()
    assert len(list((tmp_path / f"case_{MODEL}.zarr" / ".dgseg-blocks").glob("*.done"))) >= 2


def write_single_level_svs(path, data, mpp: float = 0.5):
    """An Aperio-like slide without a pyramid: tiled JPEG level 0 and a strip thumbnail only.

    Small-region exports of scanner software look like this (CMU-1-Small-Region.svs: one tiled
    level of 2220 x 2967 px and a thumbnail); the reader opens it as one lazy dask array, not a
    multiscale layer.
    """
    import tifffile

    h, w = data.shape[:2]
    head = "Aperio Image Library v11.2.1 \r\n"
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(240, 240), compression="jpeg", photometric="rgb", metadata=None,
                 description=f"{head}{w}x{h} [0,0 {w}x{h}] (240x240) JPEG/RGB Q=90|MPP = {mpp}")
        tw.write(data[::4, ::4], compression="jpeg", photometric="rgb", metadata=None,
                 description=f"{head}{w}x{h} -> {w // 4}x{h // 4} - |MPP = {mpp}")
    return path


def test_single_level_slide_is_streamed_and_a_numpy_image_is_not(widget, tmp_path, monkeypatch):
    import numpy as np

    import napari_dgseg._napari.slide_job as slide_job
    import napari_dgseg.core.wsi as wsi
    from napari_dgseg._napari.reader import read_one
    from test_wsi_stream import nuclei_slide

    monkeypatch.setattr(slide_job, "SLIDE_JOB_MIN_PIXELS", 500 * 500)
    monkeypatch.setattr(wsi, "DEFAULT_BLOCK", 256)
    pixels = nuclei_slide(600, 720)
    slide = write_single_level_svs(tmp_path / "region.svs", pixels)
    data, kwargs, _ = read_one(slide)
    layer = widget.viewer.add_image(data, **kwargs)
    assert not layer.multiscale  # one level: a lazy array, not a pyramid
    added = widget.segment_layer(layer, sync=True)
    out = tmp_path / f"region_{MODEL}.zarr"
    assert (out / ".dgseg-blocks" / "finalized").is_file()
    assert "streamed" in widget.status_label.text()
    labels = added[0]
    assert labels.multiscale and labels.data[0].shape == (600, 720)
    assert tuple(labels.scale) == pytest.approx(tuple(layer.scale))
    # the same pixels in memory (a numpy layer, no file to stream from) keep the in-memory path
    plain = widget.viewer.add_image(np.asarray(data), name="in memory", rgb=True)
    added = widget.segment_layer(plain, sync=True)
    assert not added[0].multiscale and added[0].data.shape == (600, 720)
    assert "streamed" not in widget.status_label.text()
    assert sorted(p.name for p in tmp_path.glob("*.zarr")) == [out.name]
