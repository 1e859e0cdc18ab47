"""A result layer put into napari over several event-loop turns (napari_dgseg._napari.staged_add).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_staged_add.py -q

The threaded path of the Segment widget's whole-slide run and of the Adapt widget's preview: the
layer is in the viewer before the job's worker does any work, it grows per block, a cancel before
it is in keeps it out, the paint tools' overlays come back, a layer of an earlier run is replaced
in place. No timings here (``benchmarks/gui_stall.py`` measures them).
"""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "fg-unet"  # says 'nucleus' everywhere: every painted block shows


# ----------------------------------------------------------------- no viewer
def test_after_ready_waits_and_a_cancel_meanwhile_ends_the_job():
    from napari_dgseg._napari.staged_add import after_ready
    from napari_dgseg.core.errors import CancelledError

    ran = []

    def job(progress, cancel):
        ran.append(1)
        return "done"

    ready, cancel = threading.Event(), threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        after_ready(job, ready)(lambda d, t: None, cancel)
    assert ran == []  # never started
    ready.set()
    assert after_ready(job, ready)(lambda d, t: None, threading.Event()) == "done"


def test_after_ready_keeps_a_generator_job_a_generator():
    from napari_dgseg._napari.staged_add import after_ready

    class Job:
        def __call__(self, progress, cancel):
            yield "a"
            yield "b"
            return 3

    ready = threading.Event()
    ready.set()
    gated = after_ready(Job(), ready)
    assert inspect.isgeneratorfunction(gated.__call__)
    gen = gated(lambda d, t: None, threading.Event())
    assert [next(gen), next(gen)] == ["a", "b"]
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == 3
    plain = after_ready(lambda progress, cancel: 1, ready)
    assert not inspect.isgeneratorfunction(plain.__call__)


# ----------------------------------------------------------------- a viewer, no widget
def test_staged_add_replaces_in_place_and_brings_the_paint_overlays_back(make_napari_viewer,
                                                                          qtbot):
    from napari.layers import Labels

    from napari_dgseg._napari.runner import TaskRunner
    from napari_dgseg._napari.staged_add import PAINT_OVERLAYS, StagedAdd

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="image")
    old = viewer.add_labels(np.zeros((32, 32), np.int32), name="result", opacity=0.3)
    old.visible = False
    viewer.add_image(np.zeros((32, 32), np.uint8), name="on top")
    new = Labels(np.ones((32, 32), np.int32), name="result")
    seen = {}

    def job(progress, cancel):  # in the worker: what the viewer holds when the work starts
        seen["in"] = new in viewer.layers and old not in viewer.layers
        seen["overlays"] = all(new._overlays[k].visible for k in PAINT_OVERLAYS)
        return 1

    staging = StagedAdd(viewer, new)
    assert not any(new._overlays[k].visible for k in PAINT_OVERLAYS)  # hidden until put in
    runner = TaskRunner("test")
    assert staging.start_job(runner.start, job, sync=False) is None
    assert new not in viewer.layers and old in viewer.layers  # nothing done in Run's own turn
    qtbot.waitUntil(lambda: not runner.running, timeout=20000)
    assert runner.last_outcome.ok and seen == {"in": True, "overlays": True}
    assert [lyr.name for lyr in viewer.layers] == ["image", "result", "on top"]
    assert viewer.layers["result"] is new and viewer.layers.selection.active is new
    assert new.visible is False and new.opacity == pytest.approx(0.3)  # the user's settings
    new.visible = True
    new.mode = "paint"  # the brush overlay draws again: enabled, and the canvas built its visual
    brush = new._overlays["brush_stroke"]
    assert brush.enabled and brush.visible
    assert brush in viewer.window._qt_viewer.canvas._layer_overlay_to_visual[new]


def test_staged_add_sync_does_everything_before_the_job(make_napari_viewer):
    from napari.layers import Labels

    from napari_dgseg._napari.runner import TaskRunner
    from napari_dgseg._napari.staged_add import StagedAdd

    viewer = make_napari_viewer()
    layer = Labels(np.zeros((16, 16), np.int32), name="x")
    seen = []
    outcome = StagedAdd(viewer, layer).start_job(
        TaskRunner("test").start, lambda p, c: seen.append(layer in viewer.layers), sync=True)
    assert outcome.ok and seen == [True]
    assert layer._overlays["polygon"].visible and layer._overlays["brush_stroke"].visible


# ----------------------------------------------------------------- the Segment widget, threaded
@pytest.fixture
def slide_widget(make_napari_viewer, qtbot, tmp_path, tmp_path_factory, monkeypatch):
    import napari_dgseg._napari.slide_job as slide_job
    import napari_dgseg.core.wsi as wsi
    from conftest import docked_segment_widget
    from napari_dgseg._napari.reader import read_one
    from test_widget_slide import save_foreground_unet
    from test_wsi_stream import nuclei_slide, write_pyramid

    monkeypatch.delenv("DGSEG_SYNC_WORKERS", raising=False)
    monkeypatch.setattr(slide_job, "SLIDE_JOB_MIN_PIXELS", 500 * 500)
    monkeypatch.setattr(wsi, "DEFAULT_BLOCK", 256)  # 3 x 4 blocks
    widget = docked_segment_widget(make_napari_viewer, qtbot, monkeypatch,
                                   save_foreground_unet(tmp_path_factory.mktemp("m"), MODEL), MODEL)
    widget.device_combo.setCurrentText("cpu")
    data, kwargs, _ = read_one(write_pyramid(tmp_path / "case.svs", nuclei_slide(704, 896)))
    return widget, widget.viewer.add_image(data, **kwargs), tmp_path / f"case_{MODEL}.zarr"


def test_threaded_slide_run_puts_its_layer_in_before_the_first_block(slide_widget, qtbot):
    widget, image, out = slide_widget
    name = f"case {MODEL}"
    seen = []

    def snapshot(done: int, total: int) -> None:  # what the layer shows at each block's signal
        layer = widget.viewer.layers[name] if name in widget.viewer.layers else None
        seen.append((done, layer, -1 if layer is None else int(np.count_nonzero(
            np.asarray(layer.data[0][::8, ::8])))))

    widget.runner.progressed.connect(snapshot)
    assert widget.segment_layer(image) is None  # threaded
    assert widget.running and name not in widget.viewer.layers  # put in from the next turn on
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    widget.runner.progressed.disconnect(snapshot)
    layer = widget.last_result[0]
    assert widget.viewer.layers[name] is layer
    blocks = [s for s in seen if s[0] > 0]
    assert len(blocks) == 12 and all(s[1] is layer for s in blocks)  # there from block 1 on
    shown = [s[2] for s in blocks]  # it grows block by block, to the whole slide
    assert shown[0] > 0 and shown == sorted(shown) and shown[-1] == 88 * 112
    assert layer.metadata["provenance"]["blocks"] == 12  # then the finished OME-Zarr's
    assert layer._overlays["polygon"].visible and layer._overlays["brush_stroke"].visible
    assert "streamed" in widget.status_label.text()


def test_threaded_slide_run_cancelled_at_run_leaves_no_layer_and_no_block(slide_widget, qtbot):
    widget, image, out = slide_widget
    name = f"case {MODEL}"
    inserted = []
    widget.viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    widget.segment_layer(image)
    widget.cancel()  # in Run's own turn: the layer is not in yet, the worker waits for it
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    qtbot.wait(50)  # any step still queued would run now
    assert name not in inserted and name not in widget.viewer.layers  # never shown
    assert "cancelled" in widget.status_label.text()
    assert not list((out / ".dgseg-blocks").glob("*.done"))  # no block was computed


def test_threaded_slide_run_cancelled_mid_run_removes_its_layer(slide_widget, qtbot):
    widget, image, out = slide_widget
    name = f"case {MODEL}"
    present = []

    def cancel_after_two(done: int, total: int) -> None:
        if done == 2:
            present.append(name in widget.viewer.layers)
            widget.cancel()

    widget.runner.progressed.connect(cancel_after_two)
    widget.segment_layer(image)
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    widget.runner.progressed.disconnect(cancel_after_two)
    assert present == [True] and name not in widget.viewer.layers
    assert len(list((out / ".dgseg-blocks").glob("*.done"))) >= 2
