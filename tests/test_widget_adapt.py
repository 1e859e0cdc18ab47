"""The Adapt dock widget in a real napari viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_adapt.py -q

A tiny HoVer-Net bundle (a few training iterations, with its replay set) is put in a temporary
user model folder; the tests run a few iterations in the thread worker, cancel, save, reload the
saved bundle and predict, and check the bad-input messages.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-hovernet"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import disks_image
    from napari_dgseg.core.data.sample import Sample
    from napari_dgseg.core.train.source import train

    folder = tmp_path_factory.mktemp("models")
    samples = [Sample(*disks_image(96, seed=i, n=8), f"s{i}", domain="a") for i in range(3)]
    train(
        "hovernet",
        [samples],
        out=folder / f"{MODEL}.dgseg",
        iters=3,
        size=64,
        batch=2,
        config={"widths": [8, 16, 32]},
        seed=0,
    )
    return folder


@pytest.fixture
def widget(make_napari_viewer, qtbot, model_dir, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(model_dir))
    from conftest import disks_image
    from napari_dgseg._napari.widgets.adapt import AdaptWidget

    viewer = make_napari_viewer()
    for i in range(2):
        img, _ = disks_image(128, seed=50 + i, n=10)
        img[..., 0] = np.clip(img[..., 0].astype(int) + 40, 0, 255)  # another stain: a new domain
        viewer.add_image(img, name=f"target{i}", rgb=True)
    w = AdaptWidget(viewer)
    viewer.window.add_dock_widget(w, name="Adapt")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    if w.model_picker.bundle is None or w.model_picker.bundle.name != MODEL:
        w.model_picker.load(MODEL, sync=True)
    w.size_spin.setValue(64)
    w.lr_spin.setValue(1e-3)
    return w


@pytest.mark.slow
def test_run_cancel_save_reload_predict(widget, qtbot, model_dir, tmp_path):
    from napari_dgseg.core.bundle import load_bundle, sha256_file

    parent_path = model_dir / f"{MODEL}.dgseg"
    parent_bytes = parent_path.read_bytes()
    w0 = {k: v.clone() for k, v in widget.model_picker.bundle.model.state_dict().items()}
    widget.select_targets(["target0", "target1"])
    widget.iters_spin.setValue(400)
    widget.preview_spin.setValue(2)
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.running))
    timer.start(20)
    assert widget.run()
    assert (
        widget.running and widget.runner.worker is not None
    )  # a thread worker, not the GUI thread
    qtbot.waitUntil(lambda: len(widget.plot.data["seg"]) >= 4, timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    timer.stop()
    # the event loop kept running during training (the timer fired while the job ran); how
    # often depends on the machine's speed, so no count is asked for beyond "several"
    assert sum(ticks) >= 2
    assert widget.result is not None and widget.result.provenance["stopped_early"]
    done = widget.result.provenance["iterations"]
    assert 4 <= done < 400
    assert "adapt preview" in widget.viewer.layers  # previews arrived during the run
    # the loaded model is unchanged
    for k, v in widget.model_picker.bundle.model.state_dict().items():
        assert np.array_equal(v.numpy(), w0[k].numpy())
    sel = widget.result.provenance["selection"]  # the run judged itself without labels
    assert widget.signal_label.text().startswith("Label-free check")
    assert widget.looks_worse == (sel["verdict"] != "better")
    if widget.looks_worse:  # Save asks for a second click first
        assert widget.save(sync=True) is None and widget.save_button.text() == "Save anyway"
    saved = widget.save(sync=True)
    assert saved is not None and saved.name == f"{MODEL}-adapted-1.dgseg"
    assert parent_path.read_bytes() == parent_bytes
    loaded = load_bundle(saved)
    assert loaded.provenance["parent"]["sha256"] == sha256_file(parent_path)
    pred = loaded.predict(np.asarray(widget.viewer.layers["target0"].data), device="cpu")
    assert pred.labels.shape == (128, 128) and pred.labels.dtype == np.int32
    # the target moves to a micrometre slide position: "after" must follow it exactly
    src = widget.viewer.layers[widget._preview_source]
    src.scale = (0.25, 0.5)
    src.translate = (1000.0, -20.0)
    assert widget.compare(sync=True)
    assert (
        f"{src.name} before (parent)" in widget.viewer.layers
        and f"{src.name} after (adapted)" in widget.viewer.layers
    )
    for what in ("before (parent)", "after (adapted)"):
        layer = widget.viewer.layers[f"{src.name} {what}"]
        np.testing.assert_allclose(layer.translate, (1000.0, -20.0))  # the region's origin
        np.testing.assert_allclose(layer.scale, (0.25, 0.5))
        assert layer.data.shape == src.data.shape[:2]  # the region's exact size
        np.testing.assert_allclose(layer.extent.world, src.extent.world[:, :2])
        # drawn like the Segment widget's masks: instances outlined, all in the task colour
        assert layer.contour == 2
        one, other = layer.colormap.map(np.array([1, 7]))
        np.testing.assert_allclose(one, other)
        assert one[3] == 1.0
    # second save: next version number
    assert widget.save(sync=True).name == f"{MODEL}-adapted-2.dgseg"
    # a result that looks worse than its parent: warned, saved only on the second click
    widget.result.provenance["selection"] |= {
        "verdict": "not better", "warning": "worse", "returned_parent_weights": False
    }
    widget._save_confirmed = False
    from napari_dgseg._napari.widgets.adapt import signal_text

    assert "Looks worse" in signal_text(widget.result.provenance["selection"])
    # what the run returned is said (by default the checkpoint the selection chose)
    sel = widget.result.provenance["selection"]
    assert sel["returned"].startswith(("checkpoint", "the parent's weights"))
    assert f"Returned: {sel['returned']}." in signal_text(sel)
    note = "the drift guard passed over checkpoint(s) [40] with a higher prior_match (drift ...)"
    assert "The drift guard passed over checkpoint(s) [40]" in signal_text(sel | {"guard_note": note})
    assert widget.save(sync=True) is None and widget.save_button.text() == "Save anyway"
    assert "does not look better" in widget.status.text()
    assert widget.save(sync=True).name == f"{MODEL}-adapted-3.dgseg"
    # and one that looks better saves at once
    widget.result.provenance["selection"] |= {"verdict": "better", "warning": None}
    widget._save_confirmed = False
    assert widget.save(sync=True).name == f"{MODEL}-adapted-4.dgseg"


def test_statistics_only_button(widget):
    """The fast method: target statistics in the worker, judged like MaNi, nothing trained."""
    widget.select_targets(["target0", "target1"])
    assert widget.stats_button.isEnabled()
    assert widget.run(method="stats", sync=True)
    prov = widget.result.provenance
    assert prov["statistics"]["layers"] > 0 and prov["statistics"]["crops"] >= 1
    assert prov["method"].startswith("target statistics")
    assert widget.signal_label.text().startswith("Label-free check on the targets")
    assert "re-estimated" in widget.status.text()


@pytest.mark.slow
def test_cancel_during_save_leaves_files(widget, model_dir):
    widget.select_targets(["target0"])
    widget.iters_spin.setValue(2)
    assert widget.run(sync=True)
    assert widget.result is not None
    parent_path = model_dir / f"{MODEL}.dgseg"
    before = parent_path.read_bytes()
    ev = threading.Event()
    ev.set()
    out = model_dir / "cancelled.dgseg"
    assert widget.save(out, sync=True, cancel=ev, force=True) is None
    assert not out.exists() and parent_path.read_bytes() == before
    assert "cancelled" in widget.status.text()
    # saving onto the parent is refused
    assert widget.save(parent_path, sync=True, force=True) is None
    assert parent_path.read_bytes() == before


@pytest.mark.slow
def test_labelled_target_checkbox(widget):
    from conftest import disks_image

    _, lab = disks_image(128, seed=50, n=10)
    widget.viewer.add_labels(lab, name="target0 corrected")
    widget.select_targets(["target0"])
    assert widget.use_labels.isEnabled() and "target0 corrected" in widget.labels_info.text()
    widget.use_labels.setChecked(True)
    widget.iters_spin.setValue(2)
    assert widget.run(sync=True)
    assert widget.result.provenance["labelled_targets"] == ["target0"]


@pytest.mark.slow
def test_bad_input(widget, notes, model_dir, monkeypatch):
    widget.select_targets([])
    assert not widget.run(sync=True)
    assert any("no target layers" in n for n in notes)
    lab = widget.viewer.add_labels(np.zeros((128, 128), np.int32), name="mask")
    assert not widget.run([lab], sync=True)
    assert any("is a Labels layer" in n for n in notes)
    widget.viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="small", rgb=True)
    widget.select_targets(["small"])
    widget.iters_spin.setValue(2)
    widget.run(sync=True)
    assert any("smaller than the crop size 64" in n for n in notes)
    assert widget.result is None and not widget.running
    # a bundle without a replay set and no source folder
    bare = widget.model_picker.bundle
    del bare._tensors["replay.safetensors"]
    widget.select_targets(["target0"])
    widget.run(sync=True)
    assert any("--source" in n or "Source folder" in n for n in notes)
    assert widget.save(sync=True) is None  # nothing to save


def test_threaded_run_puts_the_preview_layer_in_before_the_first_iteration(widget, qtbot,
                                                                            monkeypatch):
    """The preview layer is built at Run and put in over the next event-loop turns
    (``staged_add``); the worker starts after it, so every item it yields finds the layer."""
    monkeypatch.delenv("DGSEG_SYNC_WORKERS", raising=False)
    widget.select_targets(["target0"])
    widget.iters_spin.setValue(2)
    widget.preview_spin.setValue(1)
    present = []
    widget.runner.yielded.connect(
        lambda item: present.append(widget.viewer.layers["adapt preview"]
                                    if "adapt preview" in widget.viewer.layers else None))
    assert widget.run()
    assert widget.running and "adapt preview" not in widget.viewer.layers  # not in Run's turn
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    layer = widget.viewer.layers["adapt preview"]
    assert len(present) >= 3 and all(p is layer for p in present)  # "before", then 2 steps
    assert widget.result is not None and widget.result.provenance["iterations"] == 2
    assert layer._overlays["polygon"].visible and layer._overlays["brush_stroke"].visible
    assert layer.data.shape == (128, 128) and layer.contour == 2  # styled as before


def test_event_loop_never_stalls_during_compare_and_adapt(widget, qtbot):
    """A 15 ms QTimer probe: while a real compare and a short real adapt run through the widget,
    the largest gap between ticks stays under 100 ms (nothing heavy runs in the GUI thread).

    This measures non-blocking behaviour, not speed: previews are off (the core still segments
    one at the end, in the worker) so that the jobs, their per-iteration plot updates and the last
    preview layer update are what runs while the probe records; imports and first kernels are
    warmed up before, and only ticks while a job runs count.
    """
    import gc
    import time

    from qtpy.QtCore import QTimer

    from conftest import disks_image

    tiles = [disks_image(128, seed=70 + i, n=10)[0] for i in range(16)]
    big = np.concatenate([np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in range(4)])
    widget.viewer.add_image(big, name="big target", rgb=True)  # 512 x 512: compare takes a while
    widget.select_targets(["big target"])
    widget.preview_spin.setValue(10000)
    widget.iters_spin.setValue(2)
    assert widget.run(sync=True) and widget.result is not None  # warm-up: imports, kernels
    assert widget.compare(sync=True)
    # A full collection of the viewer's and torch's objects is an interpreter pause, not GUI
    # work: collect now and keep the warm objects out of later collections during the probe.
    gc.collect()
    gc.freeze()

    ticks: list[float] = []

    def tick():
        if widget.running:
            ticks.append(time.perf_counter())

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(15)
    # Work done in the GUI thread stalls every run; a machine busy with other processes stalls
    # one run now and then. So each job gets up to two runs and its best run must stay < 100 ms.
    widest: dict[str, float] = {}
    try:
        for job, start in (("compare", widget.compare), ("adapt", widget.run)):
            for _attempt in range(2):
                ticks.clear()
                widget.iters_spin.setValue(12)
                assert start()
                assert widget.running and widget.runner.worker is not None  # returned at once
                qtbot.waitUntil(lambda: not widget.running, timeout=120000)
                assert len(ticks) >= 5, f"{job} ended before the probe could measure it"
                gap = float(np.diff(ticks).max())
                widest[job] = min(gap, widest.get(job, gap))
                if widest[job] < 0.1:
                    break
    finally:
        timer.stop()
        gc.unfreeze()
    assert widget.result is not None and widget.result.provenance["iterations"] == 12
    assert "big target after (adapted)" in widget.viewer.layers
    print(
        f"largest event-loop gap: compare {widest['compare'] * 1000:.0f} ms, "
        f"adapt {widest['adapt'] * 1000:.0f} ms"
    )
    for job, gap in widest.items():
        assert gap < 0.1, f"the GUI thread stalled {gap * 1000:.0f} ms during {job}"
