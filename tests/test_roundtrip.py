"""The annotator's round trip: open a slide, segment a region, save the mask, reopen it in place.

Runs in a real napari viewer (under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_roundtrip.py -q

The mask is saved through napari's own save path (``layers.save``, which hands the layer's
attributes to the npe2 writer this plugin contributes) and reopened with the plugin's reader; it
must come back with the same scale, translate, units and shape, every pixel over the same place of
the slide, at every pyramid level of the slide.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from test_slide import write_ome_pyramid

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_dgseg._napari.layers import add_or_replace  # noqa: E402
from napari_dgseg.core.labels_io import read_labels  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-dgseg"
PIXEL_UM = 0.5
REGION = (96, 160, 96 + 301, 160 + 173)  # y0, x0, y1, x1: an odd-sized region of the slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A 1024 px OME-TIFF pyramid (3 levels) of 0.5 um pixels."""
    return write_ome_pyramid(
        tmp_path_factory.mktemp("slide") / "slide.ome.tif", side=1024, n_levels=3, pixel_um=PIXEL_UM
    )


def _region_mask() -> np.ndarray:
    h, w = REGION[2] - REGION[0], REGION[3] - REGION[1]
    mask = np.zeros((h, w), np.int32)
    mask[10:40, 20:70] = 1
    mask[200:290, 100:170] = 2
    mask[0, 0] = 3  # corner pixels: an off-by-one shift would move them
    mask[-1, -1] = 4
    return mask


def _open_slide(viewer, slide: Path, translate=(0.0, 0.0)):
    [image] = viewer.open(str(slide), plugin=PLUGIN)
    image.translate = translate
    return image


def _add_mask(viewer, image) -> object:
    """The mask of REGION as the Segment widget adds it: the source's placement plus offset."""
    y0, x0 = REGION[:2]
    sy, sx = (float(v) for v in image.scale[-2:])
    ty, tx = (float(v) for v in image.translate[-2:])
    kwargs = {
        "name": "slide labels (m)",
        "scale": [sy, sx],
        "translate": [ty + y0 * sy, tx + x0 * sx],
        "metadata": {"provenance": {"model": "m"}, "source_layer": image.name},
    }
    [labels] = add_or_replace(viewer, [(_region_mask(), kwargs, "labels")])
    return labels


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_mask_reopens_exactly_on_its_slide(make_napari_viewer, qtbot, tmp_path, slide, suffix):
    viewer = make_napari_viewer()
    image = _open_slide(viewer, slide, translate=(1200.0, -350.0))
    assert image.multiscale and len(image.data) == 3
    np.testing.assert_allclose(image.scale, (PIXEL_UM, PIXEL_UM))
    labels = _add_mask(viewer, image)
    assert tuple(str(u) for u in labels.units) == tuple(str(u) for u in image.units)
    assert viewer.layers.extent.units is not None  # same units: no "Inconsistent units"

    # napari's own save path picks the plugin's writer for a labels layer
    viewer.layers.selection = {labels}
    target = tmp_path / f"mask{suffix}"
    written = viewer.layers.save(str(target), selected=True)
    assert written == [str(target)]
    _, record = read_labels(target)
    assert record["placement"]["unit"] == "micrometer"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unit or placement warning on the way back
        [back] = viewer.open(str(target), plugin=PLUGIN)
        qtbot.wait(50)  # let the canvas update its world units
    assert back._type_string == "labels"
    np.testing.assert_allclose(back.scale, labels.scale)
    np.testing.assert_allclose(back.translate, labels.translate)
    assert tuple(str(u) for u in back.units) == tuple(str(u) for u in labels.units)
    assert back.data.shape == labels.data.shape
    np.testing.assert_array_equal(np.asarray(back.data), labels.data)
    np.testing.assert_allclose(back.extent.world, labels.extent.world)
    assert viewer.layers.extent.units is not None

    # pixel-exact overlay: the reopened mask's pixels sit on the same slide pixels, at level 0
    # and at every coarser level of the pyramid (world coordinates are level-independent)
    y0, x0 = REGION[:2]
    for row, col in [(0, 0), (-1, -1), (20, 40), (250, 130)]:
        r, c = row % labels.data.shape[0], col % labels.data.shape[1]
        world = back.data_to_world((r, c))
        assert back.get_value(world, world=True) == labels.data[r, c]
        slide_pixel = np.round(image.world_to_data(world)).astype(int)
        assert tuple(slide_pixel) == (y0 + r, x0 + c)
        for level, data in enumerate(image.data):
            factor = image.data[0].shape[0] // data.shape[0]
            level_pixel = (np.asarray(image.world_to_data(world)) / factor).astype(int)
            assert tuple(level_pixel) == ((y0 + r) // factor, (x0 + c) // factor), level


def test_save_dialog_lists_the_plugin_writer_first(make_napari_viewer, slide):
    from napari.plugins import _npe2

    viewer = make_napari_viewer()
    image = _open_slide(viewer, slide)  # the plugin's reader ran: its writers come first
    labels = _add_mask(viewer, image)
    ext_str, writers = _npe2.file_extensions_string_for_layers([labels])
    assert writers[0].command == f"{PLUGIN}.write_labels_tif"
    assert ext_str.split(";;")[0].startswith("DG Segmentation labels TIFF with provenance")


def test_pixel_masks_keep_pixel_units(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.eye(40, dtype=np.uint16) * 700, translate=(5.0, -3.0))
    written = labels.save(str(tmp_path / "px.tif"), plugin=PLUGIN)
    [back] = viewer.open(written[0], plugin=PLUGIN)
    np.testing.assert_allclose(back.scale, (1.0, 1.0))
    np.testing.assert_allclose(back.translate, (5.0, -3.0))
    assert all(str(u) == "pixel" for u in back.units)
    assert back.data.dtype == np.uint16  # ids up to 700: the smallest type that holds them


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_segment_correct_save_reopen_from_the_widget(
    make_napari_viewer, qtbot, monkeypatch, tmp_path_factory, tmp_path, slide, suffix
):
    """The whole round trip as an annotator does it: open the slide, draw a rectangle, segment
    it with the Segment widget, correct the mask (threshold, then a painted fix), save it with
    napari's save path, reopen it: same scale, translate, units and shape, pixel-exact."""
    from conftest import docked_segment_widget, save_tiny_unet

    models = save_tiny_unet(tmp_path_factory.mktemp("models"), "tiny-roundtrip")
    w = docked_segment_widget(make_napari_viewer, qtbot, monkeypatch, models, "tiny-roundtrip")
    viewer = w.viewer
    w.tile_spin.setValue(128)
    w.device_combo.setCurrentText("cpu")
    w.dcin.mode_combo.setCurrentText("none")
    image = _open_slide(viewer, slide, translate=(1200.0, -350.0))
    y0, x0, y1, x1 = REGION
    corners = [image.data_to_world(c) for c in ((y0, x0), (y1, x1))]  # pixel-centre corners
    (wy0, wx0), (wy1, wx1) = corners
    rect = np.array([[wy0, wx0], [wy0, wx1], [wy1, wx1], [wy1, wx0]])
    viewer.add_shapes([rect], shape_type="rectangle", name="roi",
                      units=viewer.layers.extent.units)  # fmt: skip
    w.image_picker.set_layer(image)
    w.region_combo.setCurrentText("drawn rectangle")
    w.run(sync=True)
    labels = viewer.layers["slide labels (tiny-roundtrip)"]
    assert labels.data.shape == (y1 - y0, x1 - x0)
    w.threshold_spin.setValue(0.3)  # correct: the mask re-derived from the kept probabilities
    labels.data[:20, :30] = 1  # and painted over by hand
    labels.data[-5:, -7:] = 0
    labels.refresh()
    expected = np.asarray(labels.data).copy()
    assert (expected > 0).any() and (expected == 0).any()

    viewer.layers.selection = {labels}
    target = tmp_path / f"corrected{suffix}"
    assert viewer.layers.save(str(target), selected=True) == [str(target)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unit warning on the way back
        [back] = viewer.open(str(target), plugin=PLUGIN)
        qtbot.wait(50)
    assert back._type_string == "labels"
    np.testing.assert_allclose(back.scale, (PIXEL_UM, PIXEL_UM))
    np.testing.assert_allclose(back.translate, (1200.0 + y0 * PIXEL_UM, -350.0 + x0 * PIXEL_UM))
    assert tuple(str(u) for u in back.units) == tuple(str(u) for u in image.units)
    np.testing.assert_array_equal(np.asarray(back.data), expected)
    assert back.metadata["provenance"]["model"] == "tiny-roundtrip"
    # and it looks as it was saved: the task colour (chartreuse nuclei) and the opacity
    assert back.opacity == pytest.approx(labels.opacity)
    np.testing.assert_allclose(back.colormap.map(np.array([1]))[0], labels.colormap.map(np.array([1]))[0], atol=1e-3)
    for r, c in [(0, 0), (expected.shape[0] - 1, expected.shape[1] - 1), (150, 80)]:
        world = back.data_to_world((r, c))
        np.testing.assert_allclose(image.world_to_data(world), (y0 + r, x0 + c), atol=1e-6)
