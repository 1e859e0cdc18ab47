"""What the network sees: ``ImageAdapter`` on 8-bit, 16-bit, float, bool, grey and RGBA inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import MIN_SIDE, ImageAdapter


def assert_nearest_levels(out: np.ndarray, want: np.ndarray) -> None:
    """``out`` is the module rule's 8-bit quantisation of ``want`` (values in [0, 1], float64).

    Every output value must lie on one of the 256 levels ``k / 255`` and be the level nearest to
    ``want`` (within half a level; at an exact tie either neighbour is the nearest).
    """
    levels = out.astype(np.float64) * 255.0
    assert np.abs(levels - np.round(levels)).max() < 1e-4, "output is not on the 256 levels"
    assert np.abs(levels - want * 255.0).max() <= 0.5 + 1e-4, "output is not the nearest level"


def test_uint8_rgb_maps_0_255_to_0_1():
    img = np.array([[[0, 128, 255], [10, 20, 30]]] * 8 * 4, np.uint8).reshape(8, 8, 3)
    a = ImageAdapter.from_array(img)
    assert (a.height, a.width, a.channels, a.low, a.high) == (8, 8, 3, 0.0, 255.0)
    out = a.region(0, 8, 0, 8)
    assert out.dtype == np.float32 and out.shape == (8, 8, 3) and out.flags.c_contiguous
    np.testing.assert_allclose(out, img / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(a.to_rgb_uint8(img), img)


def test_grey_and_single_channel_are_repeated_to_rgb():
    grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
    a = ImageAdapter.from_array(grey)
    assert a.channels == 1
    out = a.region(2, 5, 3, 9)
    assert out.shape == (3, 6, 3)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], grey[2:5, 3:9] / 255.0, atol=1e-7)
    one = grey[..., None]
    b = ImageAdapter.from_array(one)
    assert b.channels == 1
    np.testing.assert_array_equal(b.region(0, 10, 0, 10), a.region(0, 10, 0, 10))


def test_uint16_uses_robust_percentiles_of_the_whole_image():
    rng = np.random.default_rng(0)
    img = rng.integers(1000, 3000, (40, 50)).astype(np.uint16)
    img[0, 0] = 65535  # one hot pixel must not set the white point
    a = ImageAdapter.from_array(img)
    lo, hi = np.percentile(img.astype(np.float64), [0.5, 99.8])
    assert a.low == pytest.approx(lo) and a.high == pytest.approx(hi)
    assert a.high < 3000
    out = a.region(0, 40, 0, 50)
    want = np.clip((img.astype(np.float64) - lo) / (hi - lo), 0, 1)
    for c in range(3):
        assert_nearest_levels(out[..., c], want)
    assert out[0, 0, 0] == 1.0 and out.min() == 0.0


def test_large_images_are_sampled_on_a_stride():
    # 2049 px wide -> stride ceil(2049 / 1024) = 3: only pixels on multiples of 3 count
    img = np.full((9, 2049), 100, np.uint16)
    img[:, 1::3] = 5000
    img[:, 2::3] = 0
    a = ImageAdapter.from_array(img)
    assert (a.low, a.high) == (100.0, 101.0)  # a flat sample: high = low + 1
    img[::3, ::3] = np.tile(np.linspace(0, 999, 683), (3, 1))
    b = ImageAdapter.from_array(img)
    lo, hi = np.percentile(img[::3, ::3].astype(np.float64), [0.5, 99.8])
    assert (b.low, b.high) == (pytest.approx(lo), pytest.approx(hi))


def test_float_images_in_unit_range_are_taken_as_they_are():
    rng = np.random.default_rng(1)
    # built on the 256 levels, so "as is" then "quantised to 256 levels" changes nothing
    img = rng.integers(64, 192, (12, 9, 3)).astype(np.float32) / np.float32(255)
    a = ImageAdapter.from_array(img)
    assert (a.low, a.high) == (0.0, 1.0)
    np.testing.assert_array_equal(a.region(0, 12, 0, 9), img)
    # off the levels: no rescaling, only rounding to the nearest level
    off = rng.random((12, 9, 3)) * 0.5 + 0.25
    b = ImageAdapter.from_array(off.astype(np.float32))
    assert (b.low, b.high) == (0.0, 1.0)
    assert_nearest_levels(b.region(0, 12, 0, 9), off)
    probe = np.array([[0.301, 0.299, 0.702]], np.float32)  # 76.755, 76.245, 179.01 levels
    assert b.to_rgb_uint8(probe)[0, :, 0].tolist() == [77, 76, 179]
    np.testing.assert_array_equal(b.to_rgb_float(probe)[0, :, 0], np.float32([77, 76, 179]) / 255)
    # exactly 0 and 1 are still the unit range
    img[0, 0, 0], img[1, 1, 1] = 0.0, 1.0
    assert (ImageAdapter.from_array(img).low, ImageAdapter.from_array(img).high) == (0.0, 1.0)
    f64 = img.astype(np.float64)
    np.testing.assert_allclose(ImageAdapter.from_array(f64).region(0, 12, 0, 9), img, atol=1e-7)


def test_float_images_outside_unit_range_are_rescaled_and_nan_inf_handled():
    img = np.linspace(-50.0, 150.0, 400, dtype=np.float32).reshape(20, 20)
    img[3, 4] = np.nan
    img[5, 6] = np.inf
    img[7, 8] = -np.inf
    a = ImageAdapter.from_array(img)
    finite = img[np.isfinite(img)].astype(np.float64)
    lo, hi = np.percentile(finite, [0.5, 99.8])
    assert a.low == pytest.approx(lo) and a.high == pytest.approx(hi)
    out = a.region(0, 20, 0, 20)[..., 0]
    assert np.isfinite(out).all()
    assert out[3, 4] == 0.0 and out[5, 6] == 1.0 and out[7, 8] == 0.0
    want = np.clip((np.nan_to_num(img, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo), 0, 1)
    assert_nearest_levels(out, want)
    mid = (float(img[10, 10]) - lo) / (hi - lo)
    assert out[10, 10] == pytest.approx(round(255 * mid) / 255, abs=1e-6)
    # float data slightly above 1 is not the unit range either
    above = np.linspace(0.0, 1.5, 64, dtype=np.float32).reshape(8, 8)
    lo, hi = np.percentile(above.astype(np.float64), [0.5, 99.8])
    c = ImageAdapter.from_array(above)
    assert (c.low, c.high) == (pytest.approx(lo), pytest.approx(hi)) and c.high > 1.4
    # negative-only float data is not in [0, 1]: percentiles, not the unit range
    neg = -np.arange(64, dtype=np.float32).reshape(8, 8) / 64
    assert ImageAdapter.from_array(neg).low < 0


def test_constant_images_get_a_unit_range():
    a = ImageAdapter.from_array(np.full((8, 8), 7, np.int32))
    assert (a.low, a.high) == (7.0, 8.0)
    np.testing.assert_array_equal(a.region(0, 8, 0, 8), 0.0)
    f = ImageAdapter.from_array(np.full((8, 8), 3.5, np.float32))
    assert (f.low, f.high) == (3.5, 4.5)


def test_bool_masks_map_to_0_and_1():
    m = np.zeros((8, 10), bool)
    m[2:4, 3:7] = True
    a = ImageAdapter.from_array(m)
    assert (a.low, a.high) == (0.0, 1.0)
    out = a.region(0, 8, 0, 10)
    np.testing.assert_array_equal(out[..., 1], m.astype(np.float32))


def test_rgba_is_composited_on_white_and_alpha_is_not_an_intensity():
    img = np.zeros((8, 8, 4), np.uint8)
    img[..., :3] = (200, 100, 0)
    img[..., 3] = 255
    img[0, 0, 3] = 0  # fully transparent -> white glass
    img[0, 1, 3] = 51  # alpha 0.2
    a = ImageAdapter.from_array(img)
    assert a.channels == 4
    out = a.region(0, 8, 0, 8)
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out[0, 0], 1.0)
    np.testing.assert_allclose(out[1, 1], np.array([200, 100, 0]) / 255.0, atol=1e-6)
    c = np.array([200, 100, 0]) / 255.0
    np.testing.assert_allclose(out[0, 1], c * 0.2 + 0.8, atol=1e-6)
    # 16-bit RGBA: the (opaque) alpha channel does not enter the percentiles
    rng = np.random.default_rng(2)
    img16 = np.empty((16, 16, 4), np.uint16)
    img16[..., :3] = rng.integers(0, 1000, (16, 16, 3))
    img16[..., 3] = 65535
    b = ImageAdapter.from_array(img16)
    lo, hi = np.percentile(img16[..., :3].astype(np.float64), [0.5, 99.8])
    assert b.low == pytest.approx(lo) and b.high == pytest.approx(hi)


def test_grey_plus_alpha_is_an_image_composited_on_white():
    # (H, W, 2) was once refused as a bad shape; the module rule now reads it as grey + alpha
    img = np.zeros((8, 8, 2), np.uint8)
    img[..., 0] = 60
    img[..., 1] = 255
    img[0, 0, 1] = 0  # transparent -> white glass
    img[0, 1, 1] = 51  # alpha 0.2
    a = ImageAdapter.from_array(img)
    assert (a.channels, a.low, a.high) == (2, 0.0, 255.0)
    out = a.region(0, 8, 0, 8)
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out[0, 0], 1.0)
    np.testing.assert_allclose(out[4, 4], 60 / 255, atol=1e-7)
    # 60 * 0.2 + 255 * 0.8 = 216 exactly, on a level
    np.testing.assert_allclose(out[0, 1], 216 / 255, atol=1e-7)
    # 16-bit grey + alpha: the alpha channel does not enter the percentiles
    rng = np.random.default_rng(3)
    img16 = np.empty((16, 16, 2), np.uint16)
    img16[..., 0] = rng.integers(0, 1000, (16, 16))
    img16[..., 1] = 65535
    b = ImageAdapter.from_array(img16)
    lo, hi = np.percentile(img16[..., 0].astype(np.float64), [0.5, 99.8])
    assert b.low == pytest.approx(lo) and b.high == pytest.approx(hi)


def test_to_rgb_uint8_rounds():
    a = ImageAdapter.from_array(np.zeros((8, 8), np.float32))  # float in [0, 1]: identity scale
    block = np.array([[0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 1.0, 2.0]], np.float32)
    assert a.to_rgb_uint8(block)[0, :, 0].tolist() == [0, 0, 1, 2, 255, 255]


def test_dask_regions_read_lazily():
    da = pytest.importorskip("dask.array")
    img = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    a = ImageAdapter.from_array(da.from_array(img, chunks=(10, 10, 3)))
    np.testing.assert_allclose(a.region(5, 17, 11, 30), img[5:17, 11:30] / 255.0, atol=1e-7)


class LazyImage:
    """An array-like with shape and dtype (like zarr or dask) that refuses a whole-image read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole image was read at once")


def test_array_likes_with_shape_and_dtype_are_read_region_by_region():
    data = (np.arange(40 * 30 * 3) % 256).astype(np.uint8).reshape(40, 30, 3)
    lazy = LazyImage(data)
    a = ImageAdapter.from_array(lazy)
    assert a.image is lazy and (a.height, a.width, a.channels) == (40, 30, 3)
    np.testing.assert_allclose(a.region(4, 20, 5, 9), data[4:20, 5:9] / 255.0, atol=1e-7)
    assert lazy.reads == [(slice(4, 20), slice(5, 9))]
    f = LazyImage(np.linspace(0, 5000, 40 * 30).reshape(40, 30).astype(np.uint16))
    b = ImageAdapter.from_array(f)
    assert f.reads == [(slice(None, None, 1), slice(None, None, 1))]  # the strided sample only
    assert b.high > b.low > 0


def test_lists_are_accepted_as_arrays():
    a = ImageAdapter.from_array([[0, 1] * 4] * 8)
    assert (a.height, a.width, a.channels) == (8, 8, 1)

    class ShapeOnly:  # has a shape but no dtype: converted with np.asarray
        shape = (8, 9)

        def __array__(self, dtype=None, copy=None):
            return np.full((8, 9), 255, np.uint8)

    b = ImageAdapter.from_array(ShapeOnly())
    assert (b.height, b.width, b.high) == (8, 9, 255.0)
    np.testing.assert_array_equal(b.region(0, 8, 0, 9), 1.0)


@pytest.mark.parametrize(
    "shape,match",
    [((3, 64, 64), "channels first"), ((4, 20, 30), "channels first"), ((64, 64, 5), "expected"),
     ((4, 4, 4, 3), "expected"), ((64,), "expected"),
     ((3, 64, 4), "at least 8 x 8"), ((3, 64, 5), "channels first"),
     ((MIN_SIDE - 1, 64), "at least 8 x 8"), ((64, MIN_SIDE - 1, 3), "at least 8 x 8")],
)
def test_bad_shapes_give_one_clear_line(shape, match):
    with pytest.raises(InputError, match=match) as err:
        ImageAdapter.from_array(np.zeros(shape, np.uint8))
    assert "\n" not in str(err.value)


def test_too_small_message_in_full():
    with pytest.raises(InputError) as err:
        ImageAdapter.from_array(np.zeros((5, 64, 3), np.uint8))
    assert str(err.value) == (
        "image is 5 x 64 pixels; segmentation needs at least 8 x 8. Choose a larger image or region."
    )


def test_smallest_accepted_side_and_bad_dtypes():
    assert ImageAdapter.from_array(np.zeros((MIN_SIDE, MIN_SIDE), np.uint8)).height == MIN_SIDE
    with pytest.raises(InputError) as err:
        ImageAdapter.from_array(np.full((8, 8), np.nan, np.float32))
    assert str(err.value) == "image has no finite pixel values (all NaN or inf)"
    with pytest.raises(InputError, match="dtype complex64 is not supported"):
        ImageAdapter.from_array(np.zeros((8, 8), np.complex64))
    with pytest.raises(InputError, match="not supported"):
        ImageAdapter.from_array(np.array([["a"] * 8] * 8))
