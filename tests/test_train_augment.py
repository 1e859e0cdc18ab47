"""Training augmentations (core/train/augment.py) and the sampler and training options using them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.data.synthetic import make_sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.train import augment as aug
from napari_dgseg.core.train.data import CropSampler


@pytest.fixture(scope="module")
def tile():
    return make_sample("nuclei", 128, domain="clean", seed=3)


def test_stain_jitter_is_seeded_and_keeps_glass_white(tile):
    a = aug.stain_jitter(tile.image, np.random.default_rng(1))
    b = aug.stain_jitter(tile.image, np.random.default_rng(1))
    c = aug.stain_jitter(tile.image, np.random.default_rng(2))
    assert a.dtype == np.uint8 and a.shape == tile.image.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert aug.stain_jitter(white, np.random.default_rng(0)).min() >= 250  # no stain -> glass


def test_stain_jitter_changes_nuclei_and_stroma_differently(tile):
    """Per-stain scaling: the H/E balance changes, not only overall brightness."""
    nuclei = tile.labels > 0
    ratios = []
    for seed in range(6):
        out = aug.stain_jitter(tile.image, np.random.default_rng(seed)).astype(float)
        ratios.append(out[nuclei].mean() / out[~nuclei].mean())
    assert np.ptp(ratios) > 0.03


def test_nucleus_jitter_pales_some_nuclei_each_on_its_own_and_leaves_the_rest(tile):
    """``stain-nuclei``: each chosen nucleus's haematoxylin is scaled by its own factor; pixels
    away from every nucleus do not change."""
    from scipy import ndimage as ndi

    from napari_dgseg.core.input_features import OD_TO_STAIN

    out = aug.nucleus_jitter(tile.image, tile.labels, np.random.default_rng(4))
    assert out.shape == tile.image.shape and out.dtype == np.uint8
    far = ~ndi.binary_dilation(tile.labels > 0, iterations=4)
    assert np.abs(out[far].astype(int) - tile.image[far]).max() <= 1  # round trip only

    def h_density(img, lab, i):
        od = -np.log10((img[lab == i].astype(float) + 1.0) / 256.0)
        return float((od @ OD_TO_STAIN)[:, 0].mean())

    ids = np.unique(tile.labels)[1:]
    ratios = np.array([h_density(out, tile.labels, i) / h_density(tile.image, tile.labels, i)
                       for i in ids])
    paled = ratios < 0.95
    assert 0.2 < paled.mean() < 0.8  # about half of the nuclei (P_NUCLEUS)
    assert ratios.min() > aug.NUCLEUS_SCALE[0] * 0.8 and ratios.max() < 1.05
    assert np.ptp(ratios[paled]) > 0.1  # each by its own factor, not one for the crop
    sampler = CropSampler([("d", [tile])], size=64, num_classes=2, instance=True, seed=0,
                          augment="stain-nuclei")
    assert sampler.batch(2)["image"].shape == (2, 3, 64, 64)


def test_camera_jitter_and_jpeg(tile):
    out = aug.camera_jitter(tile.image, np.random.default_rng(0))
    assert out.shape == tile.image.shape and out.dtype == np.uint8
    q = aug.jpeg_round_trip(tile.image, 30)
    assert q.shape == tile.image.shape and 0 < np.abs(q.astype(int) - tile.image).mean() < 20


def test_rescale_crop_keeps_instances(tile):
    img, lab = aug.rescale_crop(tile.image[:64, :64], tile.labels[:64, :64], 128, 2.0)
    assert img.shape == (128, 128, 3) and lab.shape == (128, 128)
    assert set(np.unique(lab)) <= set(np.unique(tile.labels[:64, :64]))  # nearest: no new ids
    # objects got twice as wide: the foreground fraction is preserved
    assert abs((lab > 0).mean() - (tile.labels[:64, :64] > 0).mean()) < 0.03


def test_sampler_with_augmentation_and_scale_range(tile):
    sampler = CropSampler([("d", [tile])], size=64, num_classes=2, instance=True, seed=0,
                          augment="stain", scale_range=(0.5, 2.0))
    b = sampler.batch(6)
    assert b["image"].shape == (6, 3, 64, 64) and b["target"].shape == (6, 64, 64)
    assert set(np.unique(b["target"].numpy())) <= {0, 1, -100}
    again = CropSampler([("d", [tile])], size=64, num_classes=2, instance=True, seed=0,
                        augment="stain", scale_range=(0.5, 2.0)).batch(6)
    assert np.array_equal(b["image"].numpy(), again["image"].numpy())  # seeded


def test_train_records_features_augment_and_scale(tile):
    from napari_dgseg.core.train.source import train

    bundle = train("unet", [[tile]], iters=2, size=64, batch=2, features="rgb+stain",
                   augment="stain", scale_range=(0.8, 1.25), config={"widths": [8, 16]})
    assert bundle.input_spec["features"] == "rgb+stain"
    assert bundle.input_spec["channels"] == 5 and bundle.config["in_channels"] == 5
    prov = bundle.provenance
    assert prov["augment"] == "stain" and prov["scale_range"] == [0.8, 1.25]
    pred = bundle.predict(tile.image, dcin="none", device="cpu")
    assert pred.labels.shape == tile.labels.shape


def test_train_refuses_bad_options(tile):
    from napari_dgseg.core.train.source import train

    with pytest.raises(InputError, match="augment"):
        train("unet", [[tile]], iters=1, size=64, augment="heavy")
    with pytest.raises(InputError, match="scale range"):
        train("unet", [[tile]], iters=1, size=64, scale_range=(2.0, 1.0))
    with pytest.raises(InputError, match="input features"):
        train("unet", [[tile]], iters=1, size=64, features="hsv")
    with pytest.raises(InputError, match="nothing to train"):
        train("classical-he", [[tile]], iters=1, size=64)


def test_fundus_jitter_changes_colour_balance_and_illumination():
    fundus = make_sample("vessels", 128, domain="camera-a", seed=2)
    outs = [aug.fundus_jitter(fundus.image, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == fundus.image.shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], aug.fundus_jitter(fundus.image, np.random.default_rng(0)))
    inside = fundus.image.max(axis=2) > 30
    # green/red balance varies across draws (per-channel gains), beyond what camera_jitter does
    ratios = [o[inside, 1].mean() / o[inside, 0].mean() for o in outs]
    cam = [aug.camera_jitter(fundus.image, np.random.default_rng(s)) for s in range(8)]
    cam_ratios = [o[inside, 1].mean() / o[inside, 0].mean() for o in cam]
    assert np.ptp(ratios) > 2 * np.ptp(cam_ratios)
    # vessels stay locally darker than their surround in green (structure kept): their
    # green-channel top-hat stays well above the background's
    import torch

    from napari_dgseg.core.input_features import vessel_tophat

    vessel = (fundus.labels > 0) & inside
    for o in outs:
        th = vessel_tophat(torch.from_numpy(o).permute(2, 0, 1)[None].float() / 255.0)[0, 0].numpy()
        assert th[vessel].mean() > 1.5 * th[inside & ~vessel].mean()
    sampler = CropSampler([("d", [fundus])], size=64, num_classes=2, instance=False, seed=0,
                          augment="fundus")
    assert sampler.batch(2)["image"].shape == (2, 3, 64, 64)


def test_warm_start_begins_from_the_parent_and_records_it(tile):
    import torch

    from napari_dgseg.core.train.source import train

    parent = train("unet", [[tile]], iters=3, size=64, batch=2, config={"widths": [8, 16]})
    child = train("unet", [[tile]], iters=1, size=64, batch=2, lr=1e-9, init=parent,
                  config={"widths": [8, 16]})
    fresh = train("unet", [[tile]], iters=1, size=64, batch=2, lr=1e-9, seed=5,
                  config={"widths": [8, 16]})
    p, c, f = parent.state_dict(), child.state_dict(), fresh.state_dict()
    conv = [k for k in p if k.endswith("weight") and p[k].ndim == 4]
    assert all(torch.allclose(p[k], c[k], atol=1e-5) for k in conv)
    assert not all(torch.allclose(p[k], f[k], atol=1e-5) for k in conv)
    assert child.provenance["parent"]["kind"] == "warm start"
    with pytest.raises(InputError, match="another architecture"):
        train("unet", [[tile]], iters=1, size=64, init=parent, config={"widths": [8, 16, 32]})
    with pytest.raises(InputError, match="--features"):
        train("unet", [[tile]], iters=1, size=64, init=parent, features="rgb+stain",
              config={"widths": [8, 16]})
    with pytest.raises(InputError, match="is a unet model"):
        train("sqvae", [[tile]], iters=1, size=64, init=parent)
