"""DCIN colour normalisation in the Segment dock widget (real napari viewer, run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_dcin.py -q

Two tiny untrained U-Net bundles live in a temporary user model folder: ``tiny-plain`` without a
reference bank and ``tiny-bank`` with one (five tinted disk images). The tests check what a user
sees: which modes can be chosen, the layers a run adds (normalised images, uncertainty map), the
references line, notices, and that odd images (white, RGBA, 16-bit) still give labels.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import disks_image  # noqa: E402

pytestmark = pytest.mark.gui

PLAIN = "tiny-plain"
BANKED = "tiny-bank"
BANK_NAMES = [f"clean_{i:04d}" for i in range(5)]


def _tinted(i: int, size: int = 96) -> np.ndarray:
    img, _ = disks_image(size, seed=i)
    tint = np.array([1.0 - 0.08 * i, 1.0, 0.8 + 0.05 * i])
    return np.clip(img * tint, 0, 255).astype(np.uint8)


def _shifted(size: int = 160, seed: int = 7) -> np.ndarray:
    """Disks in a stain far from the bank's (pinkish, washed out)."""
    img, _ = disks_image(size, seed=seed, n=10)
    return np.clip(img * np.array([1.1, 0.75, 0.95]) + 20, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder with ``tiny-plain.dgseg`` (no bank) and ``tiny-bank.dgseg`` (5-image bank)."""
    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.color.bank import add_bank_to_bundle
    from napari_dgseg.core.registry import get_family

    folder = tmp_path_factory.mktemp("models")
    cfg = {"num_classes": 2, "widths": [8, 16, 32]}
    for name in (PLAIN, BANKED):
        torch.manual_seed(0)
        model = get_family("unet").build_model(cfg)
        bundle = Bundle.create(
            model, "unet", cfg, name=name, class_names=["background", "nucleus"], task="nuclei"
        )
        if name == BANKED:
            add_bank_to_bundle(bundle, [_tinted(i) for i in range(5)], BANK_NAMES)
        bundle.save(folder / f"{name}.dgseg")
    return folder


def _make_widget(make_napari_viewer, qtbot, model_dir, monkeypatch, model):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(model_dir))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    qtbot.waitUntil(lambda: not w.model_picker.loading, timeout=20000)
    w.model_picker.load(model, sync=True)
    assert w.model_picker.bundle.name == model
    w.tile_spin.setValue(128)
    w.overlap_spin.setValue(32)
    w.device_combo.setCurrentText("cpu")
    return w


@pytest.fixture
def banked(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """A docked SegmentWidget with ``tiny-bank`` loaded."""
    return _make_widget(make_napari_viewer, qtbot, model_dir, monkeypatch, BANKED)


def _mode_item(widget, mode):
    from napari_dgseg.core.color.dcin import DCIN_MODES

    return widget.dcin.mode_combo.model().item(DCIN_MODES.index(mode))


@pytest.mark.slow
def test_bankless_model_disables_bank_modes(make_napari_viewer, qtbot, model_dir, monkeypatch):
    w = _make_widget(make_napari_viewer, qtbot, model_dir, monkeypatch, PLAIN)
    viewer = w.viewer
    for mode in ("gris", "lris", "full"):
        item = _mode_item(w, mode)
        assert not item.isEnabled()
        assert "dgseg bank" in item.toolTip() and mode in item.toolTip()
    for mode in ("auto", "none", "reference"):
        assert _mode_item(w, mode).isEnabled()
    assert "(this model: none)" in _mode_item(w, "auto").toolTip()
    assert w.dcin.mode() == "auto" and w.dcin.effective_mode() == "none"
    assert not w.dcin.uncertainty_check.isEnabled() and not w.dcin.normalized_check.isEnabled()
    assert w.dcin._reference_row.isHidden()

    viewer.add_image(_shifted(), name="img", rgb=True)
    w.dcin.normalized_check.setChecked(True)
    w.dcin.uncertainty_check.setChecked(True)
    w.run(sync=True)
    labels = viewer.layers[f"img labels ({PLAIN})"]
    dcin = labels.metadata["provenance"]["dcin"]
    assert dcin["mode"] == "none" and dcin["references"] == []
    assert [lyr.name for lyr in viewer.layers] == ["img", f"img labels ({PLAIN})"]
    assert w.dcin.references_line.text().startswith("none")

    # a model with a bank enables them; auto now means full
    w.model_picker.load(BANKED, sync=True)
    assert all(_mode_item(w, m).isEnabled() for m in ("gris", "lris", "full"))
    assert "(this model: full)" in _mode_item(w, "auto").toolTip()
    assert w.dcin.effective_mode() == "full" and w.dcin.uncertainty_check.isEnabled()
    # choosing full, then going back to the bank-less model falls back to auto
    w.dcin.mode_combo.setCurrentText("full")
    w.model_picker.load(PLAIN, sync=True)
    assert w.dcin.mode() == "auto" and not _mode_item(w, "full").isEnabled()


@pytest.mark.slow
def test_full_mode_adds_normalized_and_uncertainty(banked, qtbot):
    w, viewer = banked, banked.viewer
    image = _shifted()
    viewer.add_image(image, name="img", rgb=True, scale=(2.0, 2.0), translate=(10.0, 20.0))
    w.dcin.mode_combo.setCurrentText("full")
    w.dcin.normalized_check.setChecked(True)
    w.dcin.uncertainty_check.setChecked(True)
    w.run()  # threaded, like a click
    assert not w.dcin.isEnabled()  # settings are locked while running
    qtbot.waitUntil(lambda: not w.running, timeout=30000)
    assert w.dcin.isEnabled()

    names = [lyr.name for lyr in viewer.layers]
    label_name = f"img labels ({BANKED})"
    unc_name = f"img uncertainty ({BANKED})"
    for branch in ("gris", "lris"):
        layer = viewer.layers[f"img normalized ({branch})"]
        assert layer.rgb and layer.data.shape == image.shape and layer.data.dtype == np.uint8
        np.testing.assert_allclose(layer.scale, (2.0, 2.0))
        np.testing.assert_allclose(layer.translate, (10.0, 20.0))
        assert layer.metadata["source_layer"] == "img"
        # normalisation changed the colours, towards the bank's (blue-ish disks)
        assert not np.array_equal(layer.data, image)
        assert names.index(layer.name) < names.index(label_name)  # labels stay on top
    unc = viewer.layers[unc_name]
    assert unc.visible and unc.colormap.name == "magma"
    assert unc.data.shape == image.shape[:2]
    assert 0.0 <= unc.data.min() and unc.data.max() <= 1.0
    labels = viewer.layers[label_name]
    assert viewer.layers.selection.active is labels
    dcin = labels.metadata["provenance"]["dcin"]
    assert dcin["mode"] == "full" and dcin["notice"] is None
    refs = {r["branch"]: r["reference"] for r in dcin["references"]}
    assert set(refs) == {"gris", "lris"} and set(refs.values()) <= set(BANK_NAMES)
    line = w.dcin.references_line.text()
    assert line == f"GRIS: {refs['gris']}\nLRIS: {refs['lris']}"
    tip = w.dcin.references_line.toolTip()
    assert "target tissue" in tip and "GRIS" in tip and "lab-reinhard" in tip
    assert w.dcin.swatch.pixmap() is not None and not w.dcin.swatch.pixmap().isNull()
    assert w.status_label.text().endswith("· DCIN full") and "skipped" not in w.status_label.text()

    # unchecked: neither layer is added for a new image
    viewer.add_image(_shifted(seed=3), name="other", rgb=True)
    w.image_picker.set_layer(viewer.layers["other"])
    w.dcin.normalized_check.setChecked(False)
    w.dcin.uncertainty_check.setChecked(False)
    w.run(sync=True)
    names = [lyr.name for lyr in viewer.layers]
    assert f"other labels ({BANKED})" in names
    assert not [n for n in names if n.startswith("other") and ("normalized" in n or "uncert" in n)]


@pytest.mark.slow
def test_reference_mode_with_a_layer(banked, notes, tmp_path):
    from napari_dgseg.core.color.tissue import image_color_stats

    w, viewer = banked, banked.viewer
    target = viewer.add_image(_shifted(), name="img", rgb=True)
    w.image_picker.set_layer(target)
    w.dcin.mode_combo.setCurrentText("reference")
    assert not w.dcin._reference_row.isHidden()
    assert w.dcin.reference_picker.layer() is None  # the target is never its own reference
    w.run(sync=True)
    assert any("needs a reference" in m for m in notes)
    assert f"img labels ({BANKED})" not in viewer.layers

    # a multiscale reference: its smallest level is the one read
    big = _tinted(1, size=192)
    small = _tinted(4, size=96)
    ref = viewer.add_image([big, small], name="well stained", rgb=True, multiscale=True)
    w.image_picker.set_layer(target)
    picked = [w.dcin.reference_picker.itemText(i) for i in range(w.dcin.reference_picker.count())]
    assert picked == ["well stained"]
    assert w.dcin.reference_picker.layer() is ref
    w.dcin.normalized_check.setChecked(True)
    w.run(sync=True)
    labels = viewer.layers[f"img labels ({BANKED})"]
    dcin = labels.metadata["provenance"]["dcin"]
    assert dcin["mode"] == "reference" and dcin["reference_source"] == "well stained"
    (entry,) = dcin["references"]
    mean, std = image_color_stats(small)
    np.testing.assert_allclose(entry["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(entry["std"], std, atol=1e-6)
    assert w.dcin.references_line.text() == "Reference: well stained"
    assert viewer.layers["img normalized (reference)"].data.shape == (160, 160, 3)
    assert viewer.layers.selection.active is labels

    # a file as reference
    from skimage.io import imsave

    path = tmp_path / "expert.png"
    imsave(path, _tinted(2), check_contrast=False)
    w.dcin.set_reference_file(str(path))
    assert not w.dcin.reference_picker.isEnabled() and not w.dcin.clear_file_button.isHidden()
    w.run(sync=True)
    dcin = viewer.layers[f"img labels ({BANKED})"].metadata["provenance"]["dcin"]
    assert dcin["reference_source"] == "expert.png"
    np.testing.assert_allclose(dcin["references"][0]["mean"], image_color_stats(_tinted(2))[0])
    assert w.dcin.references_line.text() == "Reference: expert.png"

    # a file that is not an image: one-line message, the widget stays usable
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    w.dcin.set_reference_file(str(bad))
    w.run(sync=True)
    assert w.status_label.text().startswith("Failed:") and "notes.png" in w.status_label.text()
    assert "Traceback" not in w.status_label.text()
    assert w.run_button.isEnabled()
    w.dcin.set_reference_file(None)
    assert w.dcin.reference_picker.isEnabled() and w.dcin.clear_file_button.isHidden()


@pytest.mark.slow
def test_white_image_gives_notice_and_labels(banked, notes):
    w, viewer = banked, banked.viewer
    viewer.add_image(np.full((128, 128, 3), 255, np.uint8), name="glass", rgb=True)
    w.dcin.mode_combo.setCurrentText("full")
    w.dcin.normalized_check.setChecked(True)
    w.dcin.uncertainty_check.setChecked(True)
    w.run(sync=True)
    labels = viewer.layers[f"glass labels ({BANKED})"]
    assert labels.data.shape == (128, 128)
    dcin = labels.metadata["provenance"]["dcin"]
    assert dcin["mode"] == "none" and "no tissue" in dcin["notice"]
    assert "no tissue" in w.status_label.text() and not w.status_label.text().startswith("Failed")
    assert any("no tissue" in m for m in notes)
    assert w.dcin.references_line.text().startswith("skipped: DCIN full skipped: no tissue")
    assert not [lyr.name for lyr in viewer.layers if "normalized" in lyr.name]
    assert f"glass uncertainty ({BANKED})" not in viewer.layers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rgba", "uint16", "grey16"])
def test_rgba_and_16bit_images(banked, kind):
    w, viewer = banked, banked.viewer
    rgb = _shifted(128)
    if kind == "rgba":
        data = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        viewer.add_image(data, name="img", rgb=True)
    elif kind == "uint16":
        viewer.add_image(rgb.astype(np.uint16) * 257, name="img", rgb=True)
    else:
        viewer.add_image(rgb.mean(-1).astype(np.uint16) * 200, name="img")
    w.dcin.mode_combo.setCurrentText("full")
    w.dcin.normalized_check.setChecked(True)
    w.dcin.uncertainty_check.setChecked(True)
    w.run(sync=True)
    assert not w.status_label.text().startswith("Failed"), w.status_label.text()
    labels = viewer.layers[f"img labels ({BANKED})"]
    assert labels.data.shape == (128, 128)
    assert labels.metadata["provenance"]["dcin"]["mode"] == "full"
    for branch in ("gris", "lris"):
        norm = viewer.layers[f"img normalized ({branch})"]
        assert norm.data.shape == (128, 128, 3) and norm.data.dtype == np.uint8
    assert viewer.layers[f"img uncertainty ({BANKED})"].data.shape == (128, 128)


@pytest.mark.slow
def test_region_takes_colour_statistics_from_the_whole_image(banked):
    """A drawn region is normalised by the statistics of the whole image, not of the region:
    a region of plain stroma must not be stretched as if it were the whole tissue."""
    from napari_dgseg.core.color.tissue import image_color_stats

    w, viewer = banked, banked.viewer
    image = _shifted(size=192, seed=3)
    image[:, 96:] = np.clip(image[:, 96:].astype(int) + 25, 0, 255).astype(np.uint8)  # 2 halves
    viewer.add_image(image, name="img", rgb=True)
    rect = np.array([[0.0, 96.0], [0.0, 191.0], [95.0, 191.0], [95.0, 96.0]])
    viewer.add_shapes([rect], shape_type="rectangle", name="roi")
    w.image_picker.set_layer(viewer.layers["img"])
    w.region_combo.setCurrentText("drawn rectangle")
    w.dcin.mode_combo.setCurrentText("auto")
    w.run(sync=True)
    labels = viewer.layers[f"img labels ({BANKED})"]
    dcin = labels.metadata["provenance"]["dcin"]
    assert labels.data.shape[0] < 100 and labels.data.shape[1] < 100  # the region only
    assert dcin["stats_from"] == "whole image 192 x 192"
    whole, _ = image_color_stats(image)
    region, _ = image_color_stats(image[:96, 96:])
    np.testing.assert_allclose(dcin["target_mean"], whole, atol=1e-9)
    assert np.abs(np.asarray(dcin["target_mean"]) - region).max() > 0.01
    # auto ran the guard; the panel and the status line say what it decided
    assert dcin["requested"] == "auto" and dcin["guard"]["action"] in ("keep", "fallback")
    assert "Guard:" in w.dcin.references_line.toolTip()
    if dcin["guard"]["action"] == "fallback":
        assert "not applied" in w.dcin.references_line.text()
        assert "guard" in w.status_label.text()
    else:
        assert "guard: kept" in w.dcin.references_line.text()


def test_panel_words_for_a_guard_fall_back():
    from napari_dgseg._napari.dcin_info import describe_references

    dcin = {"mode": "none", "requested": "auto", "references": [], "notice": None,
            "guard": {"action": "fallback", "reason": "normalization would grow the foreground "
                      "5.0 % -> 40.0 %", "signals": {"fraction_none": 0.05,
                      "fraction_normalized": 0.4, "agreement": 0.2, "colour_shift": 0.3,
                      "pilot_pixels": 65536}}}
    line, tip = describe_references(dcin)
    assert line == "not applied (guard): image as it is"
    assert "NOT applied" in tip and "5.0 % -> 40.0 %" in tip and "colour shift 0.30" in tip


def test_panel_words_for_training_colours():
    from napari_dgseg._napari.dcin_info import describe_references

    dcin = {"mode": "none", "requested": "auto", "references": [], "notice": None,
            "guard": {"action": "fallback", "reason": "the colours are those of training image "
                      "vessels_camera-c_0003 (distance 0.12 < 0.50): not applied",
                      "nearest_training_shift": 0.1234,
                      "nearest_training_image": "vessels_camera-c_0003"}}
    line, tip = describe_references(dcin)
    assert line == "not applied (guard): image as it is"
    assert "nearest training colours: vessels_camera-c_0003, distance 0.12" in tip
