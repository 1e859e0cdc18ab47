"""The Segment widget's folder batch ("Run folder…") under Xvfb: masks on disk, result table."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import docked_segment_widget, save_tiny_unet

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

MODEL = "tiny-unet-folder"


@pytest.fixture(scope="module")
def tiny_bundle_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("models"), MODEL)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_bundle_dir, monkeypatch):
    w = docked_segment_widget(make_napari_viewer, qtbot, monkeypatch, tiny_bundle_dir, MODEL)
    w.tile_spin.setValue(128)
    w.device_combo.setCurrentText("cpu")
    w.dcin.mode_combo.setCurrentText("none")
    return w


def test_run_folder_writes_masks_and_fills_the_table(widget, tmp_path):
    import tifffile
    from skimage.io import imsave

    from napari_dgseg.core.labels_io import read_labels, read_placement

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    imsave(src / "a.png", rng.integers(0, 256, (64, 80, 3), np.uint8), check_contrast=False)
    imsave(src / "b.png", rng.integers(0, 256, (48, 48, 3), np.uint8), check_contrast=False)
    (src / "broken.png").write_bytes(b"not a png")
    tifffile.imwrite(src / "c.tif", rng.integers(0, 256, (64, 64, 3), np.uint8),
                     photometric="rgb", resolution=(20000.0, 20000.0), resolutionunit="CENTIMETER")
    widget.threshold_spin.setValue(0.6)

    rows = widget.run_folder(src, out, sync=True)
    assert [r.ok for r in rows] == [True, True, False, True]
    assert rows[2].error and "\n" not in rows[2].error
    labels, record = read_labels(out / "a_labels.tif")
    assert labels.shape == (64, 80)
    assert record["mask_controls"] == {"threshold": 0.6, "min_size": 0}
    assert read_labels(out / "b_labels.tif")[0].shape == (48, 48)
    assert read_placement(record) is None  # a PNG without a pixel size: none claimed
    # a file with a pixel size (0.5 um): its mask carries it, for the reader to put it back
    placement = read_placement(read_labels(out / "c_labels.tif")[1])
    assert placement is not None and placement.unit == "micrometer"
    assert placement.scale == pytest.approx((0.5, 0.5))
    assert widget.folder_table.rowCount() == 4
    assert widget.folder_table.item(0, 0).text() == "a.png"
    assert widget.folder_table.item(2, 1).text().startswith("failed:")
    assert "3 mask(s) written" in widget.status and "1 file(s) failed" in widget.status
    assert not widget.running and widget.run_button.isEnabled() is False  # no image layer open


def test_run_folder_refuses_a_file(widget, tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    assert widget.run_folder(f, tmp_path / "out", sync=True) == []
    assert "not a folder" in widget.status


def test_run_folder_with_one_scale_for_all_images(widget, tmp_path):
    """"one scale for all images": every image without a pixel size gets the folder's factor
    (the median of their size estimates), recorded in each mask's provenance."""
    from skimage.io import imsave

    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.labels_io import read_labels
    from napari_dgseg.core.resample import zoom_image

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    big, _ = make_nuclei(720, "clean", seed=21)
    small = np.clip(np.rint(zoom_image(big, 0.55)), 0, 255).astype(np.uint8)  # nuclei 0.55x
    for i in range(3):
        imsave(src / f"t{i}.png", small[:128, i * 128:(i + 1) * 128], check_contrast=False)
    assert widget.scale_controls.mode() == "auto"
    widget.shared_scale_check.setChecked(True)
    rows = widget.run_folder(src, out, sync=True)
    assert [r.ok for r in rows] == [True, True, True]
    records = [read_labels(out / f"t{i}_labels.tif")[1]["scale"] for i in range(3)]
    assert all("shared" in r for r in records)
    assert len({r["factor"] for r in records}) == 1 and records[0]["factor"] > 1.2  # enlarged
    assert records[0]["shared"]["estimated"] == 3
