"""The Codebook dock widget in a real napari viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_codebook_widget.py -q

A tiny untrained ``sqvae`` bundle with a stored training code usage is put in a temporary user
model folder; the tests check the layer (data, colours per class group, metadata), the plot, the
shift score line, the cursor read-out, and that a 2048 x 2048 image runs in a worker while the
GUI thread keeps processing events.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-sqvae"
N_CODES = 12


@pytest.fixture(scope="module")
def sqvae_dir(tmp_path_factory):
    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.codebook import store_training_usage
    from napari_dgseg.core.data.sample import Sample
    from napari_dgseg.core.registry import get_family

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = {"num_classes": 2, "widths": [8, 16, 32], "latent_channels": 8, "codebook_size": N_CODES}
    model = get_family("sqvae").build_model(cfg)
    bundle = Bundle.create(
        model, "sqvae", cfg, name=MODEL, class_names=["background", "nucleus"], task="nuclei"
    )
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            image=(rng.random((48, 48, 3)) * 80 + 100).astype(np.uint8),
            labels=np.zeros((48, 48), np.int32),
            name=f"s{i}",
        )
        for i in range(4)
    ]
    store_training_usage(bundle, [("train", samples)], device="cpu")
    bundle.save(folder / f"{MODEL}.dgseg")
    return folder


@pytest.fixture
def widget(make_napari_viewer, qtbot, sqvae_dir, monkeypatch):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(sqvae_dir))
    from napari_dgseg._napari.widgets.codebook import CodebookWidget

    viewer = make_napari_viewer()
    w = CodebookWidget(viewer)
    viewer.window.add_dock_widget(w, name="Codebook")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    if w.model_picker.bundle is None or w.model_picker.bundle.name != MODEL:
        w.model_picker.load(MODEL, sync=True)  # shipped sqvae bundles may be listed first
    assert w.model_picker.bundle.name == MODEL
    return w


@pytest.mark.slow
def test_run_adds_coloured_index_map_plot_and_score(widget, qtbot):
    from napari_dgseg.core.codebook import code_groups_np, group_colors

    viewer = widget.viewer
    rng = np.random.default_rng(1)
    image = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    viewer.add_image(image, name="tile", rgb=True, scale=(0.5, 0.5), translate=(10, 20))
    assert widget.run_button.isEnabled()
    widget.run(sync=True)
    name = f"tile codebook ({MODEL})"
    assert name in viewer.layers
    layer = viewer.layers[name]
    assert layer.data.shape == (64, 80) and layer.data.dtype == np.int32
    assert int(layer.data.max()) < N_CODES
    assert list(layer.scale) == [0.5, 0.5] and list(layer.translate) == [10, 20]
    assert layer.metadata["source_layer"] == "tile"
    # colours: every code present gets its group's colour
    expected = group_colors(N_CODES, 2, widget.model_picker.bundle.class_colors)
    for code in np.unique(layer.data):
        np.testing.assert_allclose(
            layer.colormap.map(np.array([code]))[0], expected[int(code)], atol=1e-6
        )
    groups = code_groups_np(N_CODES, 2)
    assert layer.metadata["code_groups"] == groups.tolist()
    # plot and score
    report = widget.last_report
    assert widget.plot.usage is not None
    np.testing.assert_allclose(widget.plot.usage, report.usage)
    assert widget.plot.reference is not None and widget.plot.reference.sum() == pytest.approx(1.0)
    assert report.usage.sum() == pytest.approx(1.0)
    text = widget.score_label.text()
    assert f"{report.score:.3f}" in text and ("In domain" in text or "Out of domain" in text)
    # cursor read-out
    code = int(layer.data[3, 4])
    assert widget.describe_code(code).startswith(f"code {code}")
    assert ("background" if groups[code] == 0 else "nucleus") in widget.describe_code(code)
    # running again replaces the layer instead of adding a copy
    widget.run(sync=True)
    assert sum(1 for lyr in viewer.layers if lyr.name == name) == 1


@pytest.mark.slow
def test_out_of_domain_image_is_flagged(widget):
    """An image whose codes the training data never used gets the warning (display test: the
    score's behaviour on real domains is tested with a trained model in test_sqvae.py)."""
    import torch

    viewer = widget.viewer
    viewer.add_image(
        np.zeros((48, 48, 3), np.uint8) + np.array([255, 0, 255], np.uint8),
        name="magenta",
        rgb=True,
    )
    widget.run(sync=True)
    used = widget.last_report.usage > 0
    bundle = widget.model_picker.bundle
    stored = dict(bundle.extra("codebook"))
    try:
        ref = torch.zeros(N_CODES, dtype=torch.float64)
        ref[int(np.flatnonzero(~used)[0])] = 1.0
        bundle.set_extra("codebook", {**stored, "usage_alpha": ref})
        widget.run(sync=True)
    finally:
        bundle.set_extra("codebook", stored)
    report = widget.last_report
    assert report.score > report.threshold
    assert report.out_of_domain
    assert "Out of domain" in widget.score_label.text()


@pytest.mark.slow
def test_large_image_runs_in_a_worker_without_freezing(widget, qtbot):
    """The GUI event loop keeps running while the worker segments a 2048 px image.

    No wall-clock limit: a 20 ms ``QTimer`` in the GUI thread records, at every tick, whether the
    run is still going and the progress bar's value. If the GUI thread were blocked for the whole
    run, no tick would see the run in progress; ticks that see two or more different progress
    values show that events (timer and progress signals) were processed *between* tiles.
    """
    from qtpy.QtCore import QTimer

    viewer = widget.viewer
    image = np.random.default_rng(2).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    viewer.add_image(image, name="big", rgb=True)
    seen: list[tuple[bool, int]] = []
    timer = QTimer()
    timer.timeout.connect(lambda: seen.append((widget.running, widget.progress_bar.value())))
    timer.start(20)
    widget.run()
    assert widget.running  # returned at once; the work is in a thread
    assert widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=240000)
    timer.stop()
    assert "big codebook (tiny-sqvae)" in viewer.layers
    assert viewer.layers["big codebook (tiny-sqvae)"].data.shape == (2048, 2048)
    during = [value for running, value in seen if running]
    assert len(during) > 10, f"only {len(during)} timer ticks while the worker ran"
    assert len(set(during)) >= 2, f"ticks saw one progress value only: {sorted(set(during))}"


@pytest.mark.slow
def test_cancel_leaves_no_layer(widget, qtbot):
    viewer = widget.viewer
    viewer.add_image(np.zeros((1024, 1024, 3), np.uint8), name="c", rgb=True)
    widget.run()
    widget.runner.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert "c codebook (tiny-sqvae)" not in viewer.layers
    assert "Cancelled" in widget.score_label.text()


def test_models_are_chosen_by_capability_not_by_name(
    make_napari_viewer, qtbot, sqvae_dir, monkeypatch, notes, tmp_path
):
    """Only models whose family declares the ``codebook`` capability are listed or accepted."""
    import shutil

    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    assert get_family("sqvae").supports("codebook")
    assert not get_family("unet").supports("codebook")
    folder = tmp_path / "models"
    shutil.copytree(sqvae_dir, folder)
    torch.manual_seed(0)
    unet = get_family("unet").build_model({"num_classes": 2, "widths": [8, 16, 32]})
    # a name that a label-text search for "(sqvae" would have picked up
    plain = Bundle.create(
        unet,
        "unet",
        unet.config,
        name="aaa-not-(sqvae",
        task="nuclei",
        class_names=["background", "nucleus"],
    )
    plain.save(folder / "aaa-not-(sqvae.dgseg")
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(folder))
    from napari_dgseg._napari.widgets.codebook import CodebookWidget

    viewer = make_napari_viewer()
    w = CodebookWidget(viewer)
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    combo = w.model_picker.combo
    listed = [combo.itemText(i) for i in range(combo.count())]
    assert not any("aaa-not" in text for text in listed)
    assert any(text.startswith(f"{MODEL} (sqvae") for text in listed)
    assert w.model_picker.bundle is not None and w.model_picker.bundle.family.supports("codebook")
    # a browsed file of another family is refused; the codebook model stays loaded
    before = w.model_picker.bundle
    assert w.model_picker.load(str(folder / "aaa-not-(sqvae.dgseg"), sync=True) is None
    assert w.model_picker.bundle is before
    assert any("without codebook support" in n for n in notes)


def test_legend_show_tissue_and_the_input_the_score_is_computed_on(widget, monkeypatch):
    """The map has a legend of class-group hues, an opacity control, and the score says what
    the model was fed (by default the image as is, as the threshold was calibrated)."""
    viewer = widget.viewer
    viewer.add_image(np.full((40, 40, 3), 150, np.uint8), name="flat", rgb=True)
    bundle = widget.model_picker.bundle
    seen = []
    real = type(bundle).predict

    def spy(self, image, **kwargs):
        seen.append(kwargs.get("dcin"))
        return real(self, image, **kwargs)

    monkeypatch.setattr(type(bundle), "predict", spy)
    assert widget.input_combo.currentText() == "none"
    # no reference bank in this model: the modes that need one are greyed out
    model = widget.input_combo.model()
    for i, mode in enumerate(widget.input_combo.itemText(j) for j in range(model.rowCount())):
        assert model.item(i).isEnabled() == (mode in ("none", "auto"))
    widget.run(sync=True)
    assert seen == ["none"]
    assert "image as is" in widget.score_label.text()
    assert "calibrated" in widget.score_label.toolTip()

    from qtpy.QtWidgets import QLabel

    texts = [lbl.text() for lbl in widget.legend.findChildren(QLabel)]
    assert widget.legend.isVisibleTo(widget)
    assert "background" in texts and "nucleus" in texts
    assert any(t.startswith("codes ") for t in texts)

    layer = viewer.layers[f"flat codebook ({MODEL})"]
    assert layer.opacity == pytest.approx(widget.opacity_slider.value() / 100)
    widget.opacity_slider.setValue(20)
    assert layer.opacity == pytest.approx(0.2)


def test_legend_entries_name_each_group_and_its_codes():
    from napari_dgseg._napari.codebook_job import legend_entries

    groups = np.array([0, 0, 0, 1, 1, 1])
    colors = {i: (i / 10, 0.0, 0.0, 1.0) for i in range(6)}
    rows = legend_entries(groups, colors, ("background", "vessel"))
    assert rows == [
        ("background", [colors[0], colors[1], colors[2]], "codes 0-2"),
        ("vessel", [colors[3], colors[4], colors[5]], "codes 3-5"),
    ]
    rows = legend_entries(np.array([0, 1, 0, 1]), colors, ("bg", "fg"))
    assert rows[0][2] == "codes 0, 2"
