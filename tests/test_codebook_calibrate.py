"""``calibrate_shift`` on a tiny SQ-VAE bundle, checked against an independent computation.

The validation images are a multiple of the network's divisor and smaller than a tile, so the
untiled network output on the whole image is exactly what tiled inference gives; code usage and the
Jensen-Shannon divergence are recomputed here with numpy and scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from napari_dgseg.core import codebook as cb
from napari_dgseg.core.bundle import Bundle, load_bundle
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.families.sqvae.model import SQVAE, SQVAEConfig

N_ALPHA, N_BETA = 10, 6


def tiny_sqvae_bundle() -> Bundle:
    """An untrained SQ-VAE whose codes are latent vectors of a random image (so that different
    images use different codes; a freshly initialised codebook maps every pixel to one code)."""
    torch.manual_seed(0)
    model = SQVAE(SQVAEConfig(num_classes=2, widths=(8, 16, 32), latent_channels=8,
                              codebook_size=N_ALPHA, codebook_size_beta=N_BETA)).eval()
    x = torch.rand(1, 3, 40, 44, generator=torch.Generator().manual_seed(5)) * 4 - 2
    with torch.no_grad():
        z1, z2 = (z[0].flatten(1).T for z in model.latent(x))
        model.quant_alpha.codebook.copy_(z1[torch.randperm(len(z1))[:N_ALPHA]])
        model.quant_beta.codebook.copy_(z2[torch.randperm(len(z2))[:N_BETA]])
    return Bundle.create(model, "sqvae", model.config, name="cb", class_names=["bg", "fg"])


def samples(seed: int, n: int, tint: tuple[int, int, int] = (0, 0, 0)) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 200, (40, 44, 3)) + np.array(tint)
        out.append(Sample(image=np.clip(img, 0, 255).astype(np.uint8), labels=None, name=str(i)))
    return out


def usage_of(bundle: Bundle, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Code usage of one image from the untiled network (independent of run_tiled)."""
    spec = bundle.input_spec
    rgb = torch.from_numpy(image.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)[None]
    mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float32).view(1, 3, 1, 1)
    t = (rgb - mean) / std  # float32 as in inference: near-tied codes must not flip
    with torch.no_grad():
        out = bundle.model.infer(t)
    a = np.bincount(out["codebook_indices"].numpy().ravel(), minlength=N_ALPHA) / t[0, 0].numel()
    b = np.bincount(out["domain_code_indices"].numpy().ravel(), minlength=N_BETA) / t[0, 0].numel()
    return a, b


def js(p: np.ndarray, q: np.ndarray) -> float:
    return float(jensenshannon(p, q, base=2) ** 2)


def test_calibrate_scores_each_image_against_the_training_usage(tmp_path):
    bundle = tiny_sqvae_bundle()
    train = samples(0, 3)
    stored = cb.store_training_usage(bundle, [("d", train)], device="cpu")
    ref_a, ref_b = stored["usage_alpha"].copy(), stored["usage_beta"].copy()
    # the stored training usage is the mean usage of the training images
    rows = [usage_of(bundle, s.image) for s in train]
    np.testing.assert_allclose(ref_a, np.mean([r[0] for r in rows], 0), atol=1e-12)
    np.testing.assert_allclose(ref_b, np.mean([r[1] for r in rows], 0), atol=1e-12)

    val = samples(1, 4, tint=(40, 0, 20))
    got = cb.calibrate_shift(bundle, val, device="cpu")
    scores = []
    for s in val:
        a, b = usage_of(bundle, s.image)
        scores.append(0.5 * (js(a, ref_a) + js(b, ref_b)))
    scores = np.array(scores)
    assert set(got) == {"usage_alpha", "usage_beta", "calibration_scores", "threshold"}
    np.testing.assert_allclose(got["calibration_scores"], scores, rtol=0, atol=1e-9)
    assert scores.max() > 0  # the check is not vacuous
    want_t = min(1.0, max(scores.mean() + 3 * max(scores.std(ddof=1), 1e-4), 1.5 * scores.max()))
    assert got["threshold"].shape == (1,)
    assert got["threshold"][0] == pytest.approx(want_t, abs=1e-12)
    # the training usage is kept as it was
    np.testing.assert_array_equal(got["usage_alpha"], ref_a)
    np.testing.assert_array_equal(got["usage_beta"], ref_b)
    # the bundle now carries the new calibration, and it survives save/load
    ref = cb.training_reference(bundle)
    np.testing.assert_allclose(ref["calibration_scores"], scores, atol=1e-9)
    assert ref["threshold"][0] == pytest.approx(want_t, abs=1e-12)
    loaded = load_bundle(bundle.save(tmp_path / "cb.dgseg"))
    ref2 = cb.training_reference(loaded)
    np.testing.assert_allclose(ref2["calibration_scores"], scores, atol=1e-9)
    np.testing.assert_array_equal(ref2["usage_alpha"], ref_a)
    np.testing.assert_array_equal(ref2["usage_beta"], ref_b)


def test_calibrating_on_the_training_images_themselves():
    bundle = tiny_sqvae_bundle()
    train = samples(2, 2)
    stored = cb.store_training_usage(bundle, [("d", train)], device="cpu")
    got = cb.calibrate_shift(bundle, train[:1], device="cpu")
    a, b = usage_of(bundle, train[0].image)
    want = 0.5 * (js(a, stored["usage_alpha"]) + js(b, stored["usage_beta"]))
    assert got["calibration_scores"].tolist() == pytest.approx([want], abs=1e-9)
    # one score: sd counts as 0 (floored at 1e-4)
    assert got["threshold"][0] == pytest.approx(min(1.0, max(want + 3e-4, 1.5 * want)), abs=1e-12)


def test_calibrate_refuses_what_it_cannot_do():
    bundle = tiny_sqvae_bundle()
    with pytest.raises(InputError, match="has no training code usage; retrain it"):
        cb.calibrate_shift(bundle, samples(0, 1), device="cpu")
    cb.store_training_usage(bundle, [("d", samples(0, 2))], device="cpu")
    with pytest.raises(InputError, match="no images to compute the code usage from"):
        cb.calibrate_shift(bundle, [], device="cpu")
    from napari_dgseg.core.registry import get_family

    unet = get_family("unet").build_model({"num_classes": 2, "widths": [8, 16]})
    ub = Bundle.create(unet, "unet", unet.config, name="u", class_names=["a", "b"])
    # the refusal comes from the family contract: families declare the ``codebook`` capability
    with pytest.raises(InputError) as err:
        cb.calibrate_shift(ub, samples(0, 1), device="cpu")
    assert str(err.value) == (
        "model 'u' is a 'unet' model, which has no codebook; codebook maps need a model of one "
        "of these families: ['sqvae'] (see `dgseg models`)"
    )
