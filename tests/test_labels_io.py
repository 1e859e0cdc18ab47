"""Tests of napari_dgseg.core.labels_io: round trips with provenance, dtypes, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_dgseg.core.errors import ImageReadError, InputError
from napari_dgseg.core.labels_io import (
    PROVENANCE_KEY,
    json_safe,
    read_labels,
    read_provenance,
    write_labels,
)

PROVENANCE = {
    "model": "nuclei-unet",
    "parameters": {"tile": 512, "overlap": 64, "threshold": np.float32(0.5), "dcin": "gris"},
    "source_image": Path("/data/slides/case-07.svs"),
    "classes": np.array([0, 1]),
}


def _labels(shape=(600, 700), dtype=np.int32) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[10:60, 20:90] = 3
    labels[100:130, 400:480] = 250
    return labels


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".zarr"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_round_trip_keeps_dtype_values_and_provenance(tmp_path, suffix, dtype):
    labels = _labels(dtype=dtype)
    written = write_labels(tmp_path / f"mask{suffix}", labels, PROVENANCE)
    back, record = read_labels(written)
    assert back.dtype == np.uint8  # ids up to 250: the smallest type that holds them
    np.testing.assert_array_equal(back, labels)
    assert record == {
        "model": "nuclei-unet",
        "parameters": {"tile": 512, "overlap": 64, "threshold": 0.5, "dcin": "gris"},
        "source_image": "/data/slides/case-07.svs",
        "classes": [0, 1],
    }
    assert read_provenance(written) == record


def test_bool_and_wide_integer_dtypes(tmp_path):
    back, _ = read_labels(write_labels(tmp_path / "b.tif", _labels() > 0))
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 1}
    back, _ = read_labels(write_labels(tmp_path / "i64.tif", _labels(dtype=np.int64)))
    assert back.dtype == np.uint8
    with pytest.raises(InputError, match="beyond uint32"):
        write_labels(tmp_path / "huge.tif", np.array([[0, 2**40]] * 2, np.int64))
    with pytest.raises(InputError, match="beyond int32"):
        write_labels(tmp_path / "neg.tif", np.array([[-1, 2**33]] * 2, np.int64))
    with pytest.raises(InputError, match="integer ids"):
        write_labels(tmp_path / "f.tif", np.zeros((4, 4), np.float32))


def test_tiff_is_zlib_tiled_ome_with_the_record_as_image_description(tmp_path):
    path = write_labels(tmp_path / "m.tif", _labels(), {"model": "x"})
    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        assert page.compression.name == "ADOBE_DEFLATE"
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert tf.is_ome and tf.series[0].axes == "YX"
        ome = tf.ome_metadata
    text = ome.split("<Description>")[1].split("</Description>")[0]
    assert json.loads(text.replace("&quot;", '"')) == {PROVENANCE_KEY: {"model": "x"}}
    assert "PhysicalSizeX" not in ome  # no pixel size given: none claimed


def test_zarr_is_ome_zarr_from_dask_chunks(tmp_path):
    labels = _labels(shape=(1500, 1200))
    path = write_labels(tmp_path / "big.zarr", da.from_array(labels, chunks=500), {"model": "y"})
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs[PROVENANCE_KEY] == {"model": "y"}
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    z = group["0"]
    assert z.chunks == (1024, 1024)
    np.testing.assert_array_equal(z[...], labels)


def test_legacy_files_still_read(tmp_path):
    """Masks saved before the OME layouts: JSON ImageDescription, plain Zarr array."""
    labels = _labels(shape=(40, 50)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "old.tif", labels,
                     description=json.dumps({PROVENANCE_KEY: {"model": "old"}}), metadata=None)
    z = zarr.create_array(store=str(tmp_path / "old.zarr"), shape=labels.shape, dtype="uint8")
    z[...] = labels
    z.attrs[PROVENANCE_KEY] = {"model": "old"}
    for name in ("old.tif", "old.zarr"):
        back, record = read_labels(tmp_path / name)
        assert record == {"model": "old"} and read_provenance(tmp_path / name) == record
        np.testing.assert_array_equal(back, labels)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    for suffix in (".tif", ".zarr"):
        target = tmp_path / f"mask{suffix}"
        write_labels(target, _labels(), {"version": 1})
        write_labels(target, _labels() * 0 + 1, {"version": 2}, overwrite=True)
        back, record = read_labels(target)
        assert record == {"version": 2} and set(np.unique(back)) == {1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "mask.zarr"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.tif"
    write_labels(target, _labels(), {"version": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(target, _labels() + 1, {"version": 2}, overwrite=True)
    monkeypatch.undo()
    back, record = read_labels(target)
    assert record == {"version": 1}
    np.testing.assert_array_equal(back, _labels())
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


def test_bad_targets_and_files(tmp_path):
    with pytest.raises(InputError, match=r"\.tif"):
        write_labels(tmp_path / "mask.png", _labels())
    with pytest.raises(InputError, match="does not exist"):
        write_labels(tmp_path / "nowhere" / "mask.tif", _labels())
    with pytest.raises(InputError, match="2-D"):
        write_labels(tmp_path / "m.tif", np.zeros(5, np.uint8))
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_labels(tmp_path / "empty.tif")
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(ImageReadError, match="text.tif"):
        read_labels(tmp_path / "text.tif")
    assert read_provenance(tmp_path / "text.tif") is None


def test_foreign_tiff_has_empty_provenance(tmp_path):
    tifffile.imwrite(tmp_path / "other.tif", _labels())
    back, record = read_labels(tmp_path / "other.tif")
    assert record == {}
    np.testing.assert_array_equal(back, _labels())
    assert read_provenance(tmp_path / "other.tif") is None


def test_json_safe():
    value = {
        1: np.int64(3),
        "big": np.zeros((100, 100)),
        "nan": float("nan"),
        "set": {"b", "a"},
        "nested": [np.bool_(True), (1.5, None)],
        "obj": object,
    }
    safe = json_safe(value)
    json.dumps(safe)
    assert safe["1"] == 3
    assert safe["big"] == "<array shape=[100, 100] dtype=float64>"
    assert safe["nan"] == "nan"
    assert safe["set"] == ["a", "b"]
    assert safe["nested"] == [True, [1.5, None]]
    assert safe["obj"] == repr(object)


def test_writer_keeps_widget_provenance(tmp_path):
    """Labels made by the Segment widget keep model and parameters when saved from napari."""
    import numpy as np

    from napari_dgseg._napari.writer import write_labels_tif
    from napari_dgseg.core.labels_io import read_labels

    meta = {"name": "tile labels (nuclei-unet)", "scale": (1.0, 1.0),
            "metadata": {"provenance": {"model": "nuclei-unet", "tile": 512, "dcin": {"mode": "full"}},
                         "source_layer": "tile"}}
    paths = write_labels_tif(str(tmp_path / "m.tif"), np.ones((8, 8), np.int32), meta)
    _, prov = read_labels(paths[0])
    assert prov["model"] == "nuclei-unet" and prov["tile"] == 512
    assert prov["dcin"]["mode"] == "full" and prov["source_layer"] == "tile"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 1, np.uint8),  # binary
        (0, 255, np.uint8),  # semantic, fewer than 256 classes
        (0, 256, np.uint16),  # instances by their largest id
        (0, 65535, np.uint16),
        (0, 65536, np.uint32),
        (0, 2**32 - 1, np.uint32),
        (-1, 5, np.int32),  # negative ids: signed
    ],
)
def test_label_dtype_is_the_smallest_that_holds_the_ids(tmp_path, low, high, expected):
    from napari_dgseg.core.labels_io import label_dtype

    assert label_dtype(low, high) == np.dtype(expected)
    labels = np.zeros((4, 5), np.int64)
    labels[0, 0], labels[3, 4] = low, high
    for suffix in (".tif", ".zarr"):
        back, _ = read_labels(write_labels(tmp_path / f"m{high}{suffix}", labels))
        assert back.dtype == np.dtype(expected)
        np.testing.assert_array_equal(back, labels)


def test_placement_is_stored_in_the_record_and_the_tiff_resolution(tmp_path):
    from napari_dgseg.core.labels_io import Placement, read_placement
    from napari_dgseg.core.slide import open_image

    placement = Placement(scale=(0.2527, 0.5), translate=(1200.25, -350.0))
    path = write_labels(tmp_path / "m.tif", _labels(), {"model": "x"}, placement=placement)
    _, record = read_labels(path)
    assert read_placement(record) == placement
    with tifffile.TiffFile(path) as tf:
        assert tf.pages.first.tags["ResolutionUnit"].value == 3  # centimetre
    # any TIFF reader sees the micrometre pixel size (rational tags: to 1e-6)
    np.testing.assert_allclose(open_image(path).pixel_size_um, (0.2527, 0.5), rtol=1e-6)
    pixels = Placement(scale=(1.0, 1.0), translate=(3.0, 4.0), unit="pixel")
    path = write_labels(tmp_path / "p.zarr", _labels(), placement=pixels)
    assert read_placement(read_labels(path)[1]) == pixels
    assert open_image(path).pixel_size_um is None  # pixel units: no physical size claimed
    with pytest.raises(InputError, match="positive"):
        Placement(scale=(0.0, 1.0))
    assert read_placement({"placement": {"scale": "bad"}}) is None


def test_ome_metadata_carries_pixel_size_and_origin_for_other_programs(tmp_path):
    """OME-TIFF PhysicalSize + plane position, OME-Zarr scale + translation in micrometres."""
    import xml.etree.ElementTree as ET

    from napari_dgseg.core.labels_io import Placement
    from napari_dgseg.core.slide import open_image

    placement = Placement(scale=(0.25, 0.5), translate=(1248.0, -310.0))
    tif = write_labels(tmp_path / "m.tif", _labels(), {"model": "x"}, placement=placement)
    with tifffile.TiffFile(tif) as tf:
        root = ET.fromstring(tf.ome_metadata)
    ns = {"ome": root.tag.split("}")[0].strip("{")}
    pixels = root.find("ome:Image/ome:Pixels", ns)
    plane = pixels.find("ome:Plane", ns)
    assert (float(pixels.get("PhysicalSizeY")), float(pixels.get("PhysicalSizeX"))) == (0.25, 0.5)
    assert pixels.get("PhysicalSizeXUnit") == "\u00b5m"
    assert (float(plane.get("PositionY")), float(plane.get("PositionX"))) == (1248.0, -310.0)
    assert plane.get("PositionXUnit") == plane.get("PositionYUnit") == "\u00b5m"

    store = write_labels(tmp_path / "m.zarr", _labels(), {"model": "x"}, placement=placement)
    ms = zarr.open_group(str(store), mode="r").attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer", "micrometer"]
    transforms = {t["type"]: t for t in ms["datasets"][0]["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == [0.25, 0.5]
    assert transforms["translation"]["translation"] == [1248.0, -310.0]
    for path in (tif, store):  # the slide reader (any OME reader) sees the physical pixel size
        np.testing.assert_allclose(open_image(path).pixel_size_um, (0.25, 0.5), rtol=1e-6)
