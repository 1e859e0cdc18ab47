"""The Segment dock widget in a real napari viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_segment.py -q

A tiny untrained U-Net bundle is put in a temporary user model folder (``$DGSEG_MODEL_DIR``); the
tests check what a user sees: layers, their shape/placement/provenance, notifications, and that
the widget returns to idle after cancel and errors.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import save_tiny_unet

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-unet"


@pytest.fixture(scope="module")
def tiny_bundle_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("models"), MODEL)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_bundle_dir, monkeypatch):
    """A docked SegmentWidget with the tiny model loaded."""
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tiny_bundle_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    if w.model_picker.bundle is None or w.model_picker.bundle.name != MODEL:
        w.model_picker.load(MODEL, sync=True)
    assert w.model_picker.bundle.name == MODEL
    w.tile_spin.setValue(256)
    w.overlap_spin.setValue(32)
    w.device_combo.setCurrentText("cpu")
    return w


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _wait(qtbot, w, timeout: int = 30000) -> None:
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


@pytest.mark.slow
def test_run_rgb_adds_labels_with_provenance(widget, qtbot):
    viewer = widget.viewer
    image = viewer.add_image(
        _rgb(200, 260), name="tile", rgb=True, metadata={"source_path": "/data/tile.png"}
    )
    widget.probabilities_check.setChecked(True)
    assert widget.run_button.isEnabled()
    widget.run()  # threaded, like a click
    assert widget.running and not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    _wait(qtbot, widget)

    name = f"tile labels ({MODEL})"
    assert name in viewer.layers
    labels = viewer.layers[name]
    assert labels._type_string == "labels"
    assert labels.data.shape == (200, 260) and labels.data.dtype == np.int32
    prov = labels.metadata["provenance"]
    assert labels.metadata["source_layer"] == "tile"
    assert prov["model"] == MODEL and len(prov["model_sha256"]) == 64
    assert (prov["tile"], prov["overlap"], prov["device"]) == (256, 32, "cpu")
    assert prov["region"] == {
        "mode": "whole image (full resolution)",
        "y0": 0,
        "x0": 0,
        "height": 200,
        "width": 260,
    }
    assert prov["source_path"] == "/data/tile.png"
    probs = viewer.layers[f"tile probability nucleus ({MODEL})"]
    assert probs.data.shape == (200, 260) and 0.0 <= probs.data.min() <= probs.data.max() <= 1.0
    # two classes: the label is the argmax, i.e. nucleus exactly where p(nucleus) > 0.5 (pixels
    # within 1e-6 of the tie are left out: float rounding may decide them either way)
    assert set(np.unique(labels.data)) <= {0, 1}
    decided = np.abs(probs.data - 0.5) > 1e-6
    assert decided.mean() > 0.99
    assert np.array_equal(labels.data[decided], (probs.data[decided] > 0.5).astype(np.int32))
    assert "200 x 260 px" in widget.status_label.text() and "nucleus" in widget.status_label.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert image in viewer.layers

    # a second run replaces the result instead of piling up copies
    n_layers = len(viewer.layers)
    widget.run(sync=True)
    assert len(viewer.layers) == n_layers
    assert [lyr.name for lyr in viewer.layers].count(name) == 1


@pytest.mark.slow
def test_cancel_midway_adds_nothing_and_stays_usable(widget, qtbot, notes):
    viewer = widget.viewer
    viewer.add_image(_rgb(1536, 1536, seed=1), name="big", rgb=True)
    widget.tile_spin.setValue(128)
    widget.overlap_spin.setValue(16)
    seen: list[tuple[int, int]] = []

    def on_progress(done, total):
        seen.append((done, total))
        if done > 0:
            widget.cancel()

    widget.runner.progressed.connect(on_progress)
    before = [lyr.name for lyr in viewer.layers]
    widget.run()
    _wait(qtbot, widget)
    widget.runner.progressed.disconnect(on_progress)

    total = seen[0][1]
    assert total > 20
    assert max(d for d, _ in seen) < total  # stopped before the end
    assert [lyr.name for lyr in viewer.layers] == before
    assert any("Segmentation cancelled" in m for m in notes)
    assert "cancelled" in widget.status_label.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()

    # the viewer and widget are still usable: a second run works
    viewer.add_image(_rgb(64, 80), name="small", rgb=True)
    widget.image_picker.set_layer(viewer.layers["small"])
    widget.run()
    _wait(qtbot, widget)
    assert viewer.layers[f"small labels ({MODEL})"].data.shape == (64, 80)


@pytest.mark.slow
def test_wrong_layer_type_is_a_notification(widget, notes):
    viewer = widget.viewer
    labels = viewer.add_labels(np.zeros((50, 50), np.int32), name="masks")
    viewer.add_shapes([np.array([[0, 0], [10, 10]])], shape_type="rectangle", name="roi")
    assert widget.image_picker.layers() == []  # Labels/Shapes are not offered
    assert not widget.run_button.isEnabled()
    n_layers = len(viewer.layers)
    widget.segment_layer(labels, sync=True)
    assert len(viewer.layers) == n_layers
    assert any("'masks' is a Labels layer" in m and "Image layer" in m for m in notes)
    assert not widget.running


@pytest.mark.slow
def test_one_pixel_image_is_refused_clearly(widget, notes):
    viewer = widget.viewer
    viewer.add_image(np.full((1, 1), 7, np.uint8), name="dot")
    n_layers = len(viewer.layers)
    widget.run(sync=True)
    assert len(viewer.layers) == n_layers
    assert any("1 x 1 pixels" in m and "at least 8 x 8" in m for m in notes)
    assert not any("Traceback" in m for m in notes)
    assert widget.status_label.text().startswith("Failed:")
    assert widget.run_button.isEnabled()


@pytest.mark.slow
def test_grey_uint16_image(widget):
    viewer = widget.viewer
    rng = np.random.default_rng(3)
    viewer.add_image(
        rng.integers(0, 4096, (150, 170), dtype=np.uint16), name="grey", scale=(0.5, 0.25)
    )
    widget.run(sync=True)
    labels = viewer.layers[f"grey labels ({MODEL})"]
    assert labels.data.shape == (150, 170)
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (0.0, 0.0))
    assert labels.metadata["provenance"]["intensity_range"][1] > 255  # scaled from 16-bit


def _counting_pyramid(counter: dict, size: int = 20000, chunk: int = 1000):
    """A lazy multiscale RGB pyramid; ``counter['level0']`` counts level-0 chunks computed."""
    import dask.array as da

    lock = threading.Lock()

    def block(block_info=None):
        with lock:
            counter["level0"] += 1
        shape = block_info[None]["chunk-shape"]
        return np.full(shape, 180, np.uint8)

    level0 = da.map_blocks(
        block, chunks=((chunk,) * (size // chunk),) * 2 + ((3,),), dtype=np.uint8
    )
    levels = [level0]
    for factor in (4, 16):
        n = size // factor
        levels.append(
            da.full((n, n, 3), 180, dtype=np.uint8, chunks=(min(n, 1024), min(n, 1024), 3))
        )
    return levels


@pytest.mark.slow
def test_huge_image_with_drawn_rectangle(widget):
    viewer = widget.viewer
    counter = {"level0": 0}
    layer = viewer.add_image(
        _counting_pyramid(counter), name="slide", rgb=True, multiscale=True, scale=(0.5, 0.5)
    )
    # rectangle drawn in world units: rows 500-650, cols 1000-1200 -> pixels 1000-1300, 2000-2400
    rect = np.array([[500.0, 1000.0], [500.0, 1200.0], [650.0, 1200.0], [650.0, 1000.0]])
    viewer.add_shapes([rect], shape_type="rectangle", name="roi")
    widget.image_picker.set_layer(layer)
    widget.region_combo.setCurrentText("drawn rectangle")
    assert widget.shapes_picker.layer().name == "roi"
    widget.run(sync=True)
    labels = viewer.layers[f"slide labels ({MODEL})"]
    assert labels.data.shape == (300, 400)
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    np.testing.assert_allclose(labels.translate, (500.0, 1000.0))  # region offset x scale
    region = labels.metadata["provenance"]["region"]
    assert (region["y0"], region["x0"], region["height"], region["width"]) == (1000, 2000, 300, 400)
    assert counter["level0"] < 40, f"{counter['level0']} of 400 level-0 chunks were read"


@pytest.mark.slow
def test_current_view_region(widget):
    viewer = widget.viewer
    layer = viewer.add_image(_rgb(600, 600, seed=5), name="view", rgb=True)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (300, 300)
    camera.zoom = 8.0
    widget.image_picker.set_layer(layer)
    widget.region_combo.setCurrentText("current view")
    region = widget.current_region(layer)
    h, w = region.shape
    assert 0 < h < 600 and 0 < w < 600
    assert region.y0 <= 300 <= region.y1 and region.x0 <= 300 <= region.x1
    widget.run(sync=True)
    labels = viewer.layers[f"view labels ({MODEL})"]
    assert labels.data.shape == (h, w)
    np.testing.assert_allclose(labels.translate, (region.y0, region.x0))


@pytest.mark.parametrize(
    "edges", [False, True], ids=["corners at pixel centres", "corners at pixel edges"]
)
def test_odd_rectangle_keeps_its_exact_size_and_place(widget, edges):
    """A 301 x 173 px rectangle on a micrometre image with an origin is a 301 x 173 px run, and
    its labels sit on the pixels it covers (scale, translate and units of the image)."""
    viewer = widget.viewer
    layer = viewer.add_image(
        _rgb(600, 500, seed=9), name="slide", rgb=True, scale=(0.5, 0.25),
        translate=(1000.0, -40.0), units=("um", "um"),
    )
    y0, x0, h, w = 101, 37, 301, 173
    half = 0.5 if edges else 0.0
    corners_px = np.array([[y0 - half, x0 - half], [y0 + h - half, x0 + w - half]])
    if not edges:  # centre to centre spans h x w pixel steps: the last centre is y0 + h
        corners_px = np.array([[y0, x0], [y0 + h, x0 + w]], dtype=float)
    world = np.array([layer.data_to_world(c) for c in corners_px])
    rect = np.array([world[0], [world[0][0], world[1][1]], world[1], [world[1][0], world[0][1]]])
    # in the viewer's units, as napari's "new shapes layer" button makes it
    viewer.add_shapes(
        [rect], shape_type="rectangle", name="roi", units=viewer.layers.extent.units
    )
    widget.image_picker.set_layer(layer)
    widget.region_combo.setCurrentText("drawn rectangle")
    region = widget.current_region(layer)
    assert (region.y0, region.x0, region.shape) == (y0, x0, (h, w))
    widget.run(sync=True)
    labels = viewer.layers[f"slide labels ({MODEL})"]
    assert labels.data.shape == (h, w)
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (1000.0 + y0 * 0.5, -40.0 + x0 * 0.25))
    assert [str(u) for u in labels.units] == [str(u) for u in layer.units]
    # pixel (0, 0) of the labels is pixel (y0, x0) of the image
    np.testing.assert_allclose(layer.world_to_data(labels.data_to_world((0, 0))), (y0, x0))
    assert viewer.layers.extent.units is not None  # no "Inconsistent units"


@pytest.mark.slow
def test_bad_bundle_keeps_previous_model(widget, tmp_path, notes):
    bad = tmp_path / "broken.dgseg"
    bad.write_bytes(b"not a zip at all")
    widget.model_picker.load(str(bad), sync=True)
    assert widget.model_picker.bundle.name == MODEL
    assert any("could not load the model" in m and "broken.dgseg" in m for m in notes)
    assert MODEL in widget.model_picker.combo.currentText()
    assert "unet" in widget.model_picker.info.text()


def test_layer_data_for_many_classes_and_instances():
    from napari_dgseg._napari.layers import prediction_layer_data, summarize
    from napari_dgseg.core.predict import Prediction

    rng = np.random.default_rng(0)
    probs = rng.random((3, 20, 30)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    pred = Prediction(
        labels=probs.argmax(0).astype(np.int32),
        probabilities=probs,
        uncertainty=rng.random((20, 30)).astype(np.float32),
        class_names=("background", "a", "b"),
        provenance={"model": "m", "seconds": 1.26},
    )
    tuples = prediction_layer_data(
        pred,
        image_name="img",
        model_name="m",
        class_colors={0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255)},
        scale=(2.0, 2.0),
        translate=(10.0, 0.0),
        offset=(5, 7),
    )
    names = [kw["name"] for _, kw, _ in tuples]
    assert names == ["img labels (m)", "img probabilities (m)", "img uncertainty (m)"]
    _, kw, _ = tuples[0]
    assert kw["translate"] == [20.0, 14.0] and kw["scale"] == [2.0, 2.0]
    cmap = kw["colormap"]
    np.testing.assert_allclose(cmap.color_dict[1], [1, 0, 0, 1])
    assert cmap.color_dict[0][3] == 0  # background transparent
    data, kw, kind = tuples[1]
    assert kind == "image" and data.shape == (3, 20, 30)
    assert kw["scale"] == [1.0, 2.0, 2.0] and kw["translate"] == [0.0, 20.0, 14.0]
    assert kw["metadata"]["source_layer"] == "img"
    assert " in 1.3 s" in summarize(pred)

    inst = Prediction(labels=np.array([[0, 1], [2, 2]], np.int32), provenance={})
    ((data, kw, kind),) = prediction_layer_data(
        inst, image_name="x", model_name="h", output="instances", class_colors={1: (1, 2, 3)}
    )
    assert kind == "labels" and "colormap" not in kw
    assert summarize(inst, "instances").endswith("2 instances")


@pytest.mark.slow
def test_opens_from_the_plugin_menu(make_napari_viewer, qtbot, tiny_bundle_dir, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tiny_bundle_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-dgseg", "Segment")
    assert isinstance(w, SegmentWidget)
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    assert w.model_picker.bundle is not None  # the first listed model is loaded on open
    labels = [w.model_picker.combo.itemText(i) for i in range(w.model_picker.combo.count())]
    assert f"{MODEL} (unet, yours)" in labels


def test_public_api_for_scripts(widget, tiny_bundle_dir):
    """``set_model``/``set_image_layer``/``run(sync=True)``: what ``dgseg demo`` uses."""
    viewer = widget.viewer
    first = viewer.add_image(_rgb(40, 48, seed=5), name="first", rgb=True)
    viewer.add_image(_rgb(32, 32, seed=6), name="second", rgb=True)
    bundle = widget.set_model(MODEL)
    assert bundle is not None and widget.bundle is bundle
    assert widget.set_model(MODEL) is bundle  # already loaded: no reload
    widget.set_image_layer(first)
    added = widget.run(sync=True)
    assert [lyr.name for lyr in added][0] == f"first labels ({MODEL})"
    assert added == widget.last_result and added[0].data.shape == (40, 48)
    assert "40 x 48 px" in widget.status
    labels = viewer.add_labels(np.zeros((5, 5), np.int32), name="not an image")
    with pytest.raises(ValueError, match="not an Image layer"):
        widget.set_image_layer(labels)
    assert widget.set_model(str(tiny_bundle_dir / "missing.dgseg")) is None
    assert widget.bundle is bundle


def test_set_model_waits_for_the_first_load(make_napari_viewer, tiny_bundle_dir, monkeypatch):
    """Right after opening, the picker is still loading its first entry: ``set_model`` waits."""
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tiny_bundle_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    assert w.model_picker.loading  # the first listed model loads in a worker
    bundle = w.set_model(str(tiny_bundle_dir / f"{MODEL}.dgseg"))
    assert bundle is not None and bundle.name == MODEL and not w.model_picker.loading


def test_test_time_flips_follow_the_model_and_reach_the_prediction(widget, qtbot):
    viewer = widget.viewer
    assert not widget.tta_check.isChecked()  # the tiny model records no TTA default
    assert "4x" in widget.tta_check.text() and widget.tta_check.toolTip()
    viewer.add_image(_rgb(96, 128, seed=3), name="small", rgb=True)
    widget.tta_check.setChecked(True)
    widget.run()
    _wait(qtbot, widget)
    prov = viewer.layers[f"small labels ({MODEL})"].metadata["provenance"]
    assert prov["tta"] == {"flips": 4, "source": "requested"}
    # a model whose manifest records TTA ticks the box when it is chosen
    bundle = widget.model_picker.bundle
    bundle.manifest["inference"] = {"tta": False}
    widget._on_model_changed(bundle)
    assert not widget.tta_check.isChecked()
    bundle.manifest["inference"] = {"tta": True}
    widget._on_model_changed(bundle)
    assert widget.tta_check.isChecked()
