"""One image preparer: every path (inference, training, adaptation, DCIN, slides, the reader)
turns the same array into the same network input, by the rule of :mod:`napari_dgseg.core.imageprep`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_dgseg.core import imageprep
from napari_dgseg.core.color.tissue import colour_to_float, image_color_stats, prepare_image
from napari_dgseg.core.data import datasets
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import PERCENTILES, ImageAdapter, decide_scaling
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.predict import run_tiled
from napari_dgseg.core.slide import to_rgb_uint8 as slide_to_rgb_uint8
from napari_dgseg.core.train.data import CropSampler, load_sources

RNG = np.random.default_rng(7)


def _twelve_bit(h: int = 64, w: int = 64) -> np.ndarray:
    """A 12-bit RGB camera image in a uint16 container (values 0..4095)."""
    base = RNG.integers(200, 3900, (h, w, 3)).astype(np.uint16)
    base[5, 5] = 4095
    return base


def _expected_levels(image: np.ndarray) -> np.ndarray:
    """The documented rule for non-8-bit data, written out independently."""
    lo, hi = np.percentile(image.astype(np.float64), PERCENTILES)
    v = np.clip((image.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(v * 255.0)


def _all_paths_uint8(image: np.ndarray) -> dict[str, np.ndarray]:
    adapter = ImageAdapter.from_array(image, min_side=1)
    return {
        "imageprep": imageprep.to_rgb_uint8(image),
        "inference": np.round(adapter.region(0, image.shape[0], 0, image.shape[1]) * 255.0).astype(
            np.uint8
        ),
        "datasets (training, adaptation)": datasets.to_rgb_uint8(image),
        "slide": slide_to_rgb_uint8(image),
    }


def _assert_paths_agree(image: np.ndarray) -> np.ndarray:
    outs = _all_paths_uint8(image)
    ref = outs["imageprep"]
    assert ref.dtype == np.uint8 and ref.shape == image.shape[:2] + (3,)
    for name, out in outs.items():
        np.testing.assert_array_equal(out, ref, err_msg=name)
    return ref


def test_8bit_rgb_is_identity_everywhere():
    img = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = _assert_paths_agree(img)
    np.testing.assert_array_equal(out, img)
    # the exact float the shipped bundles have always been fed: v / 255 in float32
    f = ImageAdapter.from_array(img).region(0, 20, 0, 30)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, img.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(imageprep.to_rgb_float(img), f)
    # the colour code reads 8-bit the same way (v * (1 / 255): equal to float rounding)
    colour, _ = prepare_image(img)
    np.testing.assert_allclose(colour_to_float(colour), f, rtol=0, atol=1e-7)


def test_12bit_in_16bit_is_stretched_not_black():
    img = _twelve_bit()
    out = _assert_paths_agree(img)
    np.testing.assert_array_equal(out, _expected_levels(img).astype(np.uint8))
    assert out.mean() > 100  # dividing by 65535 would give a mean near 8
    # the colour statistics code uses the same low/high
    colour, _ = prepare_image(img)
    lo, hi = decide_scaling(img)
    np.testing.assert_allclose(
        colour_to_float(colour), np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6
    )


def test_full_16bit_range():
    img = RNG.integers(0, 65536, (32, 32, 3)).astype(np.uint16)
    out = _assert_paths_agree(img)
    np.testing.assert_array_equal(out, _expected_levels(img).astype(np.uint8))


def test_float_in_unit_range_as_is_and_other_floats_by_percentiles():
    f = RNG.random((16, 16, 3)).astype(np.float32)
    out = _assert_paths_agree(f)
    np.testing.assert_array_equal(out, np.round(f * 255.0).astype(np.uint8))
    g = (f * 1000.0 - 300.0).astype(np.float64)
    out = _assert_paths_agree(g)
    np.testing.assert_array_equal(out, _expected_levels(g).astype(np.uint8))


def test_grey_becomes_three_equal_channels():
    grey = RNG.integers(0, 256, (12, 14), dtype=np.uint8)
    out = _assert_paths_agree(grey)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    np.testing.assert_array_equal(imageprep.to_rgb_uint8(grey[..., None]), out)
    grey16 = _twelve_bit()[..., 0]
    out16 = _assert_paths_agree(grey16)
    np.testing.assert_array_equal(out16[..., 0], out16[..., 2])


def test_rgba_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 51  # 20 % opaque
    out = _assert_paths_agree(rgba)
    np.testing.assert_array_equal(out[5, 5], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], np.round([200 * 0.2 + 255 * 0.8, 255 * 0.8, 255 * 0.8]))
    # 16-bit RGBA: alpha over the dtype maximum, not over the colour percentiles
    rgba16 = np.concatenate([_twelve_bit(10, 10), np.full((10, 10, 1), 65535, np.uint16)], -1)
    rgba16[0, 0, 3] = 0
    out16 = _assert_paths_agree(rgba16)
    np.testing.assert_array_equal(out16[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out16[1:], imageprep.to_rgb_uint8(rgba16[..., :3])[1:])


def test_scaling_is_decided_once_per_image_not_per_tile():
    img = _twelve_bit(64, 64)
    img[:32] //= 4  # a dark half: per-tile scaling would stretch it, the image rule does not
    adapter = ImageAdapter.from_array(img)
    whole = adapter.region(0, 64, 0, 64)
    np.testing.assert_array_equal(adapter.region(0, 32, 0, 64), whole[:32])
    np.testing.assert_array_equal(adapter.region(32, 64, 10, 50), whole[32:, 10:50])


def test_bad_input_is_one_clear_error():
    with pytest.raises(InputError, match="channels first"):
        imageprep.to_rgb_uint8(np.zeros((3, 10, 20), np.uint8))
    with pytest.raises(InputError, match="no finite"):
        imageprep.to_rgb_uint8(np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="not supported"):
        imageprep.to_rgb_uint8(np.zeros((4, 4), np.complex64))


class _Recorder(torch.nn.Module):
    """A stand-in network that records what inference feeds it."""

    divisor = 16
    discrete_outputs: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(x.clone())
        return {"logits": torch.zeros(x.shape[0], 2, x.shape[2], x.shape[3])}


def test_12bit_case_trains_and_predicts_on_the_same_scaling(tmp_path):
    img = _twelve_bit(64, 64)
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels)

    # training: the folder reader, then the batch sampler (crop = whole image, random dihedral)
    domains = load_sources([tmp_path])
    sampler = CropSampler(domains, size=64, num_classes=2, instance=False, seed=0)
    seen_by_training = sampler.batch(1)["image"][0]  # (3, 64, 64) in [0, 1]

    # inference: the tiled runner, one 64 x 64 tile; undo the bundle's input normalisation
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3}
    model = _Recorder()
    run_tiled(model, img, input_spec=spec, tile=64, overlap=8, device="cpu")
    [x] = model.seen
    fed = x[0] * 0.25 + 0.5
    assert fed.shape == seen_by_training.shape
    assert float(fed.mean()) > 0.3  # not the near-black of a dtype-maximum scaling

    # the training batch is a rotation/flip of the same pixels
    diffs = []
    for k in range(4):
        for flip in (False, True):
            cand = torch.rot90(fed, k, dims=(1, 2))
            cand = torch.flip(cand, dims=(2,)) if flip else cand
            diffs.append(float((cand - seen_by_training).abs().max()))
    assert min(diffs) < 1e-6
    # and both are normalised the same way before reaching the network
    np.testing.assert_allclose(
        normalise_input(seen_by_training[None], spec).numpy().std(),
        x.numpy().std(),
        rtol=1e-5,
    )


def test_in_memory_training_samples_use_the_same_preparer():
    from napari_dgseg.core.data.sample import Sample

    img = _twelve_bit(32, 32)
    labels = np.zeros((32, 32), np.int32)
    [(_, [s])] = load_sources([[Sample(img, labels, "a", domain="d")]])
    np.testing.assert_array_equal(s.image, imageprep.to_rgb_uint8(img))
    rgb8 = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    [(_, [s8])] = load_sources([[Sample(rgb8, labels, "b", domain="d")]])
    assert s8.image is rgb8  # 8-bit RGB untouched, not even copied


def test_dcin_statistics_of_a_12bit_image_match_its_8bit_preparation():
    img = _twelve_bit(128, 128)
    m16, s16 = image_color_stats(img, tissue_only=False)
    m8, s8 = image_color_stats(imageprep.to_rgb_uint8(img), tissue_only=False)
    np.testing.assert_allclose(m16, m8, atol=0.02)
    np.testing.assert_allclose(s16, s8, atol=0.02)
