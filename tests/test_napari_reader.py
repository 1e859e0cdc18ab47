"""napari reader, writer and sample data in a real viewer (run under xvfb-run).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_napari_reader.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from test_slide import (
    ChunkCounter,
    write_bad_files,
    write_ome_pyramid,
    write_ome_zarr,
    write_svs,
)

napari = pytest.importorskip("napari")

from napari_dgseg._napari.reader import NO_LAYERS, get_reader, read_paths  # noqa: E402
from napari_dgseg.core.imageprep import PERCENTILES  # noqa: E402
from napari_dgseg.core.labels_io import read_labels, write_labels  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-dgseg"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = {
        "pyramid": write_ome_pyramid(folder / "slide.ome.tif", side=8192, n_levels=4),
        "svs": write_svs(folder / "case.svs"),
    }
    Image.fromarray(rgb).save(folder / "tile.png")
    Image.fromarray(rgb).save(folder / "tile.jpg", quality=92)
    Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((64, 80), 128, np.uint8)])).save(folder / "rgba.png")
    grey16 = (rng.integers(1000, 4000, (64, 80))).astype(np.uint16)
    tifffile.imwrite(folder / "grey16.tif", grey16)
    tifffile.imwrite(folder / "rgb16.tif", np.dstack([grey16] * 3), photometric="rgb")
    write_ome_zarr(folder / "image.ome.zarr", zarr_format=3, pixel_um=0.5)
    out.update(
        {
            "png": folder / "tile.png",
            "jpg": folder / "tile.jpg",
            "grey": folder / "grey.png",
            "rgba": folder / "rgba.png",
            "grey16": folder / "grey16.tif",
            "rgb16": folder / "rgb16.tif",
            "omezarr": folder / "image.ome.zarr",
        }
    )
    return out


# ------------------------------------------------------------------------------------------
# get_reader without a viewer
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_get_reader_refuses_what_it_cannot_read_and_never_raises(tmp_path, files):
    (tmp_path / "plain_folder").mkdir()
    (tmp_path / "scan.bmp").write_bytes(b"BM")
    refused = [
        str(tmp_path / "scan.bmp"),
        str(tmp_path / "plain_folder"),
        [str(files["png"]), str(tmp_path / "scan.bmp")],  # mixed list
        [],
        None,
        42,
        [None],
        str(tmp_path / "missing.zarr"),
    ]
    for path in refused:
        assert get_reader(path) is None, path
    assert get_reader(str(files["pyramid"])) is read_paths
    assert get_reader(files["omezarr"]) is read_paths  # Path objects too
    assert get_reader([str(files["png"]), str(files["svs"])]) is read_paths


def test_read_paths_layer_data_for_pyramid(files):
    [(data, kwargs, layer_type)] = read_paths(str(files["pyramid"]))
    assert layer_type == "image"
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert [d.shape for d in data] == [(8192 >> k, 8192 >> k, 3) for k in range(4)]
    assert kwargs["scale"] == (0.5, 0.5)
    meta = kwargs["metadata"]
    assert meta["source_path"] == str(files["pyramid"])
    assert meta["pixel_size_um"] == [0.5, 0.5]
    assert meta["format"] == "ome-tiff"
    assert kwargs["name"] == "slide"


# ------------------------------------------------------------------------------------------
# In a viewer
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pyramid_opens_as_multiscale_without_reading_level0_whole(
    make_napari_viewer, files, monkeypatch
):
    counter = ChunkCounter(monkeypatch)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(files["pyramid"]), plugin=PLUGIN)
    assert layer.multiscale and len(layer.data) == 4 and layer.rgb
    assert tuple(layer.scale) == (0.5, 0.5)
    viewer.screenshot(canvas_only=True)  # draw the whole slide
    assert counter.counts["0"] == 0, "the overview must come from a low level"
    viewer.camera.center = (2500.0, 3000.0)
    viewer.camera.zoom = 4.0
    viewer.screenshot(canvas_only=True)  # draw a full-resolution region
    assert layer.data_level == 0
    level0_tiles = (8192 // 256) ** 2
    assert 0 < counter.counts["0"] <= level0_tiles // 8


@pytest.mark.slow
def test_svs_opens_with_mpp_scale(make_napari_viewer, files):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(files["svs"]), plugin=PLUGIN)
    assert layer.multiscale and len(layer.data) == 2 and layer.rgb
    assert tuple(layer.scale) == (0.25, 0.25)
    assert layer.metadata["format"] == "svs"
    assert layer.metadata["objective_power"] == 20.0


@pytest.mark.parametrize(
    ("key", "rgb", "shape", "fmt"),
    [
        ("png", True, (64, 80, 3), "png"),
        ("jpg", True, (64, 80, 3), "jpeg"),
        ("grey", False, (64, 80), "png"),
        ("rgba", True, (64, 80, 4), "png"),
        ("grey16", False, (64, 80), "tiff"),
        ("rgb16", True, (64, 80, 3), "tiff"),
        ("omezarr", True, (256, 320, 3), "ome-zarr"),
    ],
)
@pytest.mark.slow
def test_formats_open_with_rgb_flag_and_metadata(make_napari_viewer, files, key, rgb, shape, fmt):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(files[key]), plugin=PLUGIN)
    level0 = layer.data[0] if layer.multiscale else layer.data
    assert layer.rgb is rgb
    assert tuple(level0.shape) == shape
    assert layer.metadata["format"] == fmt
    assert layer.metadata["source_path"] == str(files[key])
    assert "pixel_size_um" in layer.metadata
    if key in ("grey16", "rgb16"):
        values = np.asarray(level0)
        lo, hi = np.percentile(values, PERCENTILES)  # the network's scaling (imageprep)
        assert layer.contrast_limits == pytest.approx([lo, hi])
    if key == "omezarr":
        assert layer.multiscale and tuple(layer.scale) == (0.5, 0.5)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "case", ["empty", "text", "truncated", "one_pixel", "five_channels", "truncated_png"]
)
@pytest.mark.slow
def test_bad_file_notifies_and_adds_nothing(make_napari_viewer, files, bad_files, notes, case):
    path, phrase = bad_files[case]
    viewer = make_napari_viewer()
    [good] = viewer.open(str(files["png"]), plugin=PLUGIN)
    before = np.asarray(good.data).copy()
    assert get_reader(str(path)) is read_paths
    added = viewer.open(str(path), plugin=PLUGIN)
    assert added == []
    assert [layer.name for layer in viewer.layers] == ["tile"]
    np.testing.assert_array_equal(np.asarray(good.data), before)
    [message] = notes
    assert message.startswith(f"{path.name}: ") and phrase in message
    assert "\n" not in message


@pytest.mark.slow
def test_list_of_paths_opens_the_good_ones(make_napari_viewer, files, bad_files, notes):
    viewer = make_napari_viewer()
    paths = [str(files["png"]), str(bad_files["text"][0]), str(files["svs"])]
    assert get_reader(paths) is read_paths
    layers = read_paths(paths)
    assert [kw["name"] for _, kw, _ in layers] == ["tile", "case"]
    assert len(notes) == 1 and notes[0].startswith("notes.tif: ")
    for data, kwargs, layer_type in layers:
        viewer._add_layer_from_data(data, kwargs, layer_type)
    assert len(viewer.layers) == 2
    assert read_paths([str(bad_files["empty"][0])]) == NO_LAYERS


# ------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_writer_round_trip_with_provenance(make_napari_viewer, tmp_path, suffix):
    from napari_dgseg import __version__

    viewer = make_napari_viewer()
    labels = np.zeros((300, 400), np.int32)
    labels[20:80, 30:120] = 5
    labels[150:200, 300:390] = 9
    meta = {
        "model": "nuclei-unet",
        "parameters": {"tile": 256, "dcin": "gris"},
        "source_image": "/slides/case-07.svs",
        "probabilities": np.zeros((300, 400, 2), np.float32),  # not JSON: summarised
    }
    layer = viewer.add_labels(labels, name="nuclei", metadata=meta)
    target = tmp_path / f"mask{suffix}"
    written = layer.save(str(target), plugin=PLUGIN)
    assert written == [str(target)]
    back, record = read_labels(target)
    np.testing.assert_array_equal(back, labels)
    assert record["model"] == "nuclei-unet"
    assert record["parameters"] == {"tile": 256, "dcin": "gris"}
    assert record["source_image"] == "/slides/case-07.svs"
    assert record["probabilities"] == "<array shape=[300, 400, 2] dtype=float32>"
    assert record["written_by"] == f"napari-dgseg {__version__}"
    assert record["layer_name"] == "nuclei" and "written_at" in record
    # and the reader gives it back as a labels layer carrying the provenance
    [reopened] = viewer.open(str(target), plugin=PLUGIN)
    assert reopened._type_string == "labels"
    np.testing.assert_array_equal(np.asarray(reopened.data), labels)
    assert reopened.metadata["model"] == "nuclei-unet"
    assert reopened.metadata["provenance"]["written_by"] == f"napari-dgseg {__version__}"


def test_writer_appends_suffix(tmp_path):
    from napari_dgseg._napari.writer import write_labels_tif, write_labels_zarr

    labels = np.eye(32, dtype=np.uint8)
    [tif] = write_labels_tif(str(tmp_path / "mask"), labels, {"name": "m", "metadata": {}})
    [zr] = write_labels_zarr(str(tmp_path / "mask"), labels, {"name": "m", "metadata": {}})
    assert tif.endswith("mask.tif") and zr.endswith("mask.zarr")
    assert read_labels(tif)[1]["layer_name"] == "m"


def test_foreign_labels_tiff_opens_as_image(tmp_path):
    write_labels(tmp_path / "ours.tif", np.eye(32, dtype=np.uint8), {"model": "m"})
    tifffile.imwrite(tmp_path / "theirs.tif", np.eye(32, dtype=np.uint8))
    [(_, _, ours)] = read_paths(str(tmp_path / "ours.tif"))
    [(_, _, theirs)] = read_paths(str(tmp_path / "theirs.tif"))
    assert (ours, theirs) == ("labels", "image")


# ------------------------------------------------------------------------------------------
# Sample data
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("key", "shape"), [("retina", (1411, 1411, 3)), ("ihc", (512, 512, 3))])
def test_skimage_samples(make_napari_viewer, key, shape):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample(PLUGIN, key)
    assert layer.rgb and layer.data.shape == shape and layer.data.dtype == np.uint8


@pytest.mark.slow
def test_synthetic_samples(make_napari_viewer):
    pytest.importorskip("napari_dgseg.core.data.synthetic")
    viewer = make_napari_viewer()
    image, labels = viewer.open_sample(PLUGIN, "nuclei")
    assert image.rgb and image.data.shape == (512, 512, 3) and image.data.dtype == np.uint8
    assert labels._type_string == "labels" and labels.data.shape == (512, 512)
    assert labels.data.max() > 5  # many nuclei
    fundus, vessels = viewer.open_sample(PLUGIN, "vessels")
    assert fundus.data.shape == (512, 512, 3) and vessels.data.shape == (512, 512)
    assert set(np.unique(vessels.data)) <= {0, 1} and vessels.data.any()
    assert fundus.metadata["fov"].shape == (512, 512)
    [slide] = viewer.open_sample(PLUGIN, "nuclei-slide")
    assert slide.name == "synthetic slide" and slide.data.shape == (2048, 2048, 3)


def test_sample_functions_follow_the_generator_contract(monkeypatch):
    """Layer tuples built from make_nuclei/make_vessels with the documented signatures."""
    import sys
    import types

    from napari_dgseg._napari import sample_data

    calls = []

    def make_nuclei(size=256, domain="clean", seed=0):
        calls.append(("nuclei", size, domain, seed))
        labels = np.zeros((size, size), np.int32)
        labels[4:12, 4:12] = 1
        return np.full((size, size, 3), 200, np.uint8), labels

    def make_vessels(size=256, domain="camera-a", seed=0):
        calls.append(("vessels", size, domain, seed))
        fov = np.ones((size, size), bool)
        return np.full((size, size, 3), 90, np.uint8), np.eye(size, dtype=np.uint8), fov

    fake = types.ModuleType("napari_dgseg.core.data.synthetic")
    fake.make_nuclei, fake.make_vessels = make_nuclei, make_vessels
    monkeypatch.setitem(sys.modules, "napari_dgseg.core.data.synthetic", fake)

    image, labels = sample_data.nuclei_sample()
    assert (image[2], labels[2]) == ("image", "labels")
    assert image[1]["rgb"] and image[0].shape == (512, 512, 3)
    assert labels[0].dtype == np.int32 and labels[0].max() == 1
    [slide] = sample_data.nuclei_slide_sample()
    assert slide[1]["name"] == "synthetic slide" and slide[0].shape == (2048, 2048, 3)
    fundus, vessels = sample_data.vessels_sample()
    assert vessels[2] == "labels" and fundus[1]["metadata"]["fov"].dtype == bool
    assert calls == [
        ("nuclei", 512, "clean", 0),
        ("nuclei", 2048, "clean", 1),
        ("vessels", 512, "camera-a", 0),
    ]
