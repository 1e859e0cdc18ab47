"""Tests of napari_dgseg.core.slide: lazy pyramids, formats, pixel sizes, bad input, to_rgb_uint8.

The writers at the top are also used by tests/test_napari_reader.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_dgseg.core.errors import ImageReadError, InputError
from napari_dgseg.core.imageprep import PERCENTILES
from napari_dgseg.core.slide import (
    MIN_SIDE,
    SUPPORTED_SUFFIXES,
    open_image,
    supported_suffix,
    to_rgb_uint8,
)

# ------------------------------------------------------------------------------------------
# File writers (shared with test_napari_reader.py)
# ------------------------------------------------------------------------------------------

BACKGROUND = (235, 230, 240)
BLOB = (150, 60, 170)


def _tile_pattern(i: int, j: int, tile: int) -> np.ndarray:
    t = np.empty((tile, tile, 3), np.uint8)
    t[:] = BACKGROUND
    if (i + j) % 7 == 0:
        t[tile // 8 : tile // 2, tile // 8 : tile // 2] = BLOB
    return t


def _tiles(side: int, tile: int) -> Iterator[np.ndarray]:
    n = side // tile
    for i in range(n):
        for j in range(n):
            yield _tile_pattern(i, j, tile)


def expected_region(y0: int, y1: int, x0: int, x1: int, tile: int = 256) -> np.ndarray:
    """What level 0 of :func:`write_ome_pyramid` holds in a region (built tile by tile)."""
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    for y in range(y0, y1):
        for x in range(x0, x1):
            i, j = y // tile, x // tile
            inside = (i + j) % 7 == 0 and tile // 8 <= y % tile < tile // 2
            inside = inside and tile // 8 <= x % tile < tile // 2
            out[y - y0, x - x0] = BLOB if inside else BACKGROUND
    return out


def write_ome_pyramid(
    path: Path, side: int = 8192, n_levels: int = 4, tile: int = 256, pixel_um: float = 0.5
) -> Path:
    """Tiled RGB OME-TIFF pyramid (levels in SubIFDs), written tile by tile (no big array)."""
    opts = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": "zlib",
        "dtype": np.uint8,
    }
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            _tiles(side, tile),
            shape=(side, side, 3),
            subifds=n_levels - 1,
            metadata={"axes": "YXS", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um},
            **opts,
        )
        for k in range(1, n_levels):
            s = side >> k
            tw.write(_tiles(s, tile), shape=(s, s, 3), subfiletype=1, **opts)
    return path


SVS_HEADER = "Aperio Image Library v12.0.15\n"


def write_svs(path: Path, side: int = 2048, mpp: float = 0.25) -> Path:
    """An SVS-like file: tiled JPEG baseline, thumbnail, one reduced level, label and macro."""
    data = np.empty((side, side, 3), np.uint8)
    data[:] = BACKGROUND
    data[side // 4 : side // 2, side // 4 : side // 2] = BLOB
    desc = f"{SVS_HEADER}{side}x{side} [0,0 {side}x{side}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = {mpp}"
    common = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(256, 256), compression="jpeg", description=desc, **common)
        tw.write(
            data[::16, ::16],
            compression="jpeg",
            description=f"{SVS_HEADER}thumbnail|MPP = {mpp}",
            **common,
        )
        tw.write(
            data[::4, ::4],
            tile=(256, 256),
            compression="jpeg",
            description=f"{SVS_HEADER}{side}x{side} -> {side // 4}x{side // 4}|MPP = {mpp}",
            **common,
        )
        tw.write(
            data[:64, :64],
            compression="lzw",
            subfiletype=1,
            description=f"{SVS_HEADER}label 64x64",
            **common,
        )
        tw.write(
            data[:64, :96],
            compression="jpeg",
            subfiletype=9,
            description=f"{SVS_HEADER}macro 64x96",
            **common,
        )
    return path


def write_ome_zarr(path: Path, zarr_format: int = 2, pixel_um: float = 0.5) -> np.ndarray:
    """A 3-level OME-Zarr (axes c, y, x; RGB uint8); returns level 0 as (H, W, 3)."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, 256, 320), dtype=np.uint8)
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for k in range(3):
        level = data[:, :: 2**k, :: 2**k]
        arr = group.create_array(str(k), shape=level.shape, dtype=level.dtype, chunks=(1, 64, 64))
        arr[...] = level
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, pixel_um * 2**k, pixel_um * 2**k]}
                ],
            }
        )
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    multiscales = [{"version": "0.4", "name": "rgb", "axes": axes, "datasets": datasets}]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return data.transpose(1, 2, 0)


def write_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken inputs -> (path, a phrase the error message must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    empty = folder / "empty.tif"
    empty.write_bytes(b"")
    out["empty"] = (empty, "empty (0 bytes)")
    text = folder / "notes.tif"
    text.write_text("patient 12, slide 3: re-stain requested\n")
    out["text"] = (text, "not a TIFF file")
    good = write_ome_pyramid(folder / "whole.ome.tif", side=1024, n_levels=2)
    raw = good.read_bytes()
    truncated = folder / "truncated.tif"
    truncated.write_bytes(raw[: len(raw) // 2])
    out["truncated"] = (truncated, "truncated")
    one = folder / "one_pixel.tif"
    tifffile.imwrite(one, np.zeros((1, 1), np.uint8))
    out["one_pixel"] = (one, f"at least {MIN_SIDE} x {MIN_SIDE}")
    five = folder / "five_channels.tif"
    tifffile.imwrite(
        five, np.zeros((64, 64, 5), np.uint8), photometric="minisblack", extrasamples=[0] * 4
    )
    out["five_channels"] = (five, "1 (grey), 3 (RGB) or 4 (RGBA)")
    five_ij = folder / "five_channels_imagej.tif"
    tifffile.imwrite(
        five_ij, np.zeros((5, 64, 64), np.uint8), imagej=True, metadata={"axes": "CYX"}
    )
    out["five_channels_imagej"] = (five_ij, "1 (grey), 3 (RGB) or 4 (RGBA)")
    one_png = folder / "one_pixel.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(one_png)
    out["one_pixel_png"] = (one_png, f"at least {MIN_SIDE} x {MIN_SIDE}")
    trunc_png = folder / "truncated.png"
    buf = folder / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf)
    trunc_png.write_bytes(buf.read_bytes()[:300])
    buf.unlink()
    out["truncated_png"] = (trunc_png, "truncated")
    fake_jpg = folder / "fake.jpg"
    fake_jpg.write_text("<html>404 not found</html>")
    out["fake_jpg"] = (fake_jpg, "not a JPG image")
    return out


class ChunkCounter:
    """Counts pixel-chunk reads per level key of tifffile's Zarr store (monkeypatched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import tifffile.zarr as tz

        self.counts: Counter[str] = Counter()
        original = tz.ZarrTiffStore.get

        async def get(store, key, *args, **kwargs):  # type: ignore[no-untyped-def]
            level, _, chunk = key.rpartition("/")
            if chunk and not chunk.startswith(".") and chunk != "zarr.json":
                self.counts[level] += 1
            return await original(store, key, *args, **kwargs)

        monkeypatch.setattr(tz.ZarrTiffStore, "get", get)


# ------------------------------------------------------------------------------------------
# Lazy pyramids
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pyramid_opens_lazily_and_reads_only_the_tiles_asked_for(tmp_path, monkeypatch):
    path = write_ome_pyramid(tmp_path / "slide.ome.tif", side=8192, n_levels=4)
    counter = ChunkCounter(monkeypatch)
    opened = open_image(path)
    assert [lev.shape for lev in opened.levels] == [
        (8192, 8192, 3),
        (4096, 4096, 3),
        (2048, 2048, 3),
        (1024, 1024, 3),
    ]
    assert all(isinstance(lev, da.Array) for lev in opened.levels)
    assert opened.rgb and opened.multiscale
    assert counter.counts["0"] == 0, "opening must not decode full-resolution tiles"
    assert counter.counts["3"] == 1  # the probe: one tile of the smallest level
    region = np.asarray(opened.full[5000:5100, 6000:6300])
    # the region spans 1 x 2 tiles; level 0 has 32 x 32 = 1024 tiles
    assert counter.counts["0"] == 2
    np.testing.assert_array_equal(region, expected_region(5000, 5100, 6000, 6300))
    assert opened.pixel_size_um == (0.5, 0.5)
    assert opened.metadata["format"] == "ome-tiff"
    assert opened.metadata["tile"] == [256, 256]
    assert opened.metadata["lazy"] is True
    opened.close()


def test_svs_levels_mpp_and_associated_images(tmp_path):
    opened = open_image(write_svs(tmp_path / "case.svs"))
    assert opened.metadata["format"] == "svs"
    assert opened.metadata["level_shapes"] == [[2048, 2048, 3], [512, 512, 3]]
    assert opened.pixel_size_um == (0.25, 0.25)
    assert opened.metadata["objective_power"] == 20.0
    assert opened.metadata["associated_images"] == ["Thumbnail", "Label", "Macro"]
    assert opened.rgb
    centre = np.asarray(opened.levels[1][200:210, 200:210]).reshape(-1, 3).mean(0)
    assert np.abs(centre - np.array(BLOB)).max() < 12  # JPEG


def test_single_level_strip_tiff_is_lazy_too(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (300, 200), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "grey.tiff", data)
    opened = open_image(tmp_path / "grey.tiff")
    assert not opened.multiscale and not opened.rgb
    assert isinstance(opened.full, da.Array)
    np.testing.assert_array_equal(np.asarray(opened.full), data)


# ------------------------------------------------------------------------------------------
# Pixel size
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"resolution": (1e4 / 0.5, 1e4 / 0.25), "resolutionunit": "CENTIMETER"}, (0.25, 0.5)),
        ({"resolution": (25400 / 0.5, 25400 / 0.5), "resolutionunit": "INCH"}, (0.5, 0.5)),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # desktop dpi, not physical
        ({}, None),
    ],
)
def test_pixel_size_from_resolution_tags(tmp_path, kwargs, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint16), **kwargs)
    opened = open_image(path)
    if expected is None:
        assert opened.pixel_size_um is None
    else:
        assert opened.pixel_size_um == pytest.approx(expected)


def test_pixel_size_from_imagej_micron(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, np.zeros((32, 32), np.uint8), imagej=True, resolution=(1 / 0.3, 1 / 0.3),
        metadata={"unit": "micron"},
    )  # fmt: skip
    assert open_image(path).pixel_size_um == pytest.approx((0.3, 0.3))


# ------------------------------------------------------------------------------------------
# Eager formats, grey, 16-bit, RGBA
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "array", "mode", "rgb", "dtype", "shape"),
    [
        ("rgb.png", np.full((40, 50, 3), 100, np.uint8), None, True, "uint8", (40, 50, 3)),
        ("rgb.jpg", np.full((40, 50, 3), 100, np.uint8), None, True, "uint8", (40, 50, 3)),
        ("grey.png", np.full((40, 50), 100, np.uint8), None, False, "uint8", (40, 50)),
        ("grey16.png", np.full((40, 50), 4000, np.uint16), None, False, "uint16", (40, 50)),
        ("rgba.png", np.full((40, 50, 4), 100, np.uint8), None, True, "uint8", (40, 50, 4)),
        ("palette.png", np.full((40, 50, 3), 100, np.uint8), "P", True, "uint8", (40, 50, 3)),
        ("grey_alpha.png", np.full((40, 50, 2), 100, np.uint8), "LA", True, "uint8", (40, 50, 4)),
    ],
)
def test_png_jpeg_modes(tmp_path, name, array, mode, rgb, dtype, shape):
    img = Image.fromarray(array, mode="LA") if mode == "LA" else Image.fromarray(array)
    if mode == "P":
        img = img.convert("P")
    img.save(tmp_path / name)
    opened = open_image(tmp_path / name)
    assert opened.rgb is rgb
    assert str(opened.full.dtype) == dtype
    assert opened.full.shape == shape
    assert isinstance(opened.full, np.ndarray)
    assert opened.metadata["format"] in ("png", "jpeg")
    assert opened.pixel_size_um is None


@pytest.mark.parametrize(
    ("array", "photometric", "rgb"),
    [
        (np.full((48, 40), 3000, np.uint16), "minisblack", False),
        (np.full((48, 40, 3), 3000, np.uint16), "rgb", True),
        (np.full((48, 40, 4), 200, np.uint8), "rgb", True),
        (np.full((48, 40), 0.25, np.float32), "minisblack", False),
    ],
)
def test_tiff_dtypes_and_channels(tmp_path, array, photometric, rgb):
    path = tmp_path / "x.tif"
    extras = {"extrasamples": [2]} if array.ndim == 3 and array.shape[2] == 4 else {}
    tifffile.imwrite(path, array, photometric=photometric, **extras)
    opened = open_image(path)
    assert opened.rgb is rgb
    assert opened.full.shape == array.shape
    assert opened.full.dtype == array.dtype
    np.testing.assert_array_equal(np.asarray(opened.full), array)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_levels_axes_and_pixel_size(tmp_path, zarr_format):
    path = tmp_path / "img.ome.zarr"
    level0 = write_ome_zarr(path, zarr_format=zarr_format, pixel_um=0.5)
    opened = open_image(path)
    assert opened.metadata["format"] == "ome-zarr"
    assert opened.rgb
    assert [lev.shape for lev in opened.levels] == [(256, 320, 3), (128, 160, 3), (64, 80, 3)]
    np.testing.assert_array_equal(np.asarray(opened.full), level0)
    assert opened.pixel_size_um == (0.5, 0.5)


def test_plain_zarr_array(tmp_path):
    data = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=data.shape, dtype=data.dtype)
    z[...] = data
    opened = open_image(tmp_path / "plain.zarr")
    assert opened.metadata["format"] == "zarr" and not opened.rgb
    np.testing.assert_array_equal(np.asarray(opened.full), data)


def test_zarr_group_without_multiscales_and_plain_folder(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ImageReadError, match="multiscales"):
        open_image(tmp_path / "g.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImageReadError, match="not a Zarr store"):
        open_image(tmp_path / "folder")


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "text",
        "truncated",
        "one_pixel",
        "five_channels",
        "five_channels_imagej",
        "one_pixel_png",
        "truncated_png",
        "fake_jpg",
    ],
)
def test_bad_input_message_names_file_reason_and_action(bad_files, case):
    path, phrase = bad_files[case]
    with pytest.raises(ImageReadError) as info:
        open_image(path)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ")
    assert phrase in message
    assert message.rstrip().endswith(".")
    assert len(message.split(". ")) >= 2  # a reason and what to do


def test_corrupt_tile_data_is_reported_at_open(tmp_path):
    path = tmp_path / "corrupt.tif"
    data = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages.first.dataoffsets[0], tf.pages.first.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="^corrupt.tif: the pixel data cannot be decoded"):
        open_image(path)


def test_z_stack_and_unsupported_suffix(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 32, 32), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match="4 z-planes"):
        open_image(path)
    other = tmp_path / "scan.bmp"
    other.write_bytes(b"BM")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        open_image(other)
    with pytest.raises(ImageReadError, match="no such file"):
        open_image(tmp_path / "missing.svs")


def test_supported_suffix():
    assert supported_suffix("a/b/Slide.OME.TIF") == ".ome.tif"
    assert supported_suffix("x.svs") == ".svs"
    assert supported_suffix("x.ome.zarr/") == ".ome.zarr"
    assert supported_suffix("x.bmp") is None
    assert ".jpeg" in SUPPORTED_SUFFIXES


# ------------------------------------------------------------------------------------------
# to_rgb_uint8
# ------------------------------------------------------------------------------------------


def test_to_rgb_uint8_grey_and_uint8_passthrough():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = to_rgb_uint8(grey)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], grey)
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(grey[..., None]), out)


def test_to_rgb_uint8_16bit_uses_robust_percentiles():
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 4000, (100, 100), dtype=np.uint16)  # 12-bit camera in 16 bits
    data[0, 0] = 65535  # one hot pixel must not darken everything
    out = to_rgb_uint8(data)
    lo, hi = np.percentile(data, PERCENTILES)  # the one rule of core.imageprep
    expected = np.round(np.clip((data.astype(np.float32) - lo) * (255 / (hi - lo)), 0, 255))
    np.testing.assert_allclose(out[..., 0], expected, atol=1)
    assert out[..., 0].mean() > 100


def test_to_rgb_uint8_float_bool_and_constant():
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_array_equal(to_rgb_uint8(f)[..., 2], np.round(f * 255).astype(np.uint8))
    b = np.eye(8, dtype=bool)
    assert set(np.unique(to_rgb_uint8(b))) == {0, 255}
    const = np.full((8, 8, 3), 500, np.uint16)
    assert to_rgb_uint8(const).dtype == np.uint8


def test_to_rgb_uint8_rgba_composites_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red
    rgba[0, 1, 3] = 0  # transparent -> white
    rgba[0, 2, 3] = 128
    out = to_rgb_uint8(rgba)
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    w = 128 / 255
    np.testing.assert_allclose(
        out[0, 2], np.round([200 * w + 255 * (1 - w), 255 * (1 - w), 255 * (1 - w)]), atol=1
    )


def test_to_rgb_uint8_dask_region_and_bad_shapes():
    d = da.from_array(np.full((64, 64, 3), 7, np.uint8), chunks=16)
    out = to_rgb_uint8(d[10:20, 10:30])
    assert isinstance(out, np.ndarray) and out.shape == (10, 20, 3)
    with pytest.raises(InputError, match="expected"):
        to_rgb_uint8(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(InputError, match="expected"):
        to_rgb_uint8(np.zeros((2, 8, 8, 3), np.uint8))
