"""The guard of DCIN ``auto`` and composition-robust statistics, on images whose truth is known.

A "darkness" model (foreground where the mean RGB intensity is below 0.6; no training, so the
outcome only depends on the colours DCIN gives it) stands in for a nuclei network. Images are
pink stroma with purple nuclei; the bank holds dense images (45 % nuclei) in the same colours.
Plain Reinhard maps a sparse image's all-tissue statistics onto the dense ones, stretching the
stroma's spread until much of it is "nucleus"; the balanced statistics do not, and the guard
catches Reinhard's failure and falls back to the image as it is.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from napari_dgseg.core.color import guard as guard_module
from napari_dgseg.core.color.bank import BANK_FILE, build_reference_bank
from napari_dgseg.core.color.dcin import plan_dcin
from napari_dgseg.core.color.guard import (
    AGREE,
    COLOUR_SHIFT,
    IN_DOMAIN_KEY,
    MAX_BRANCH_DISAGREEMENT,
    GuardSignals,
    decide,
    nearest_training_colours,
    pilot_windows,
)
from napari_dgseg.core.imageprep import ImageAdapter

STROMA = np.array([232.0, 168.0, 205.0])
NUCLEUS = np.array([105.0, 55.0, 150.0])


class DarkModel(nn.Module):
    """Logits ``[0, 25 * (t - mean intensity)]`` with ``t = 0.6`` on input normalised (x-.5)/.25."""

    divisor = 16
    num_classes = 2
    discrete_outputs = ()

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(25.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x * 0.25 + 0.5).mean(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(m), self.scale * (0.6 - m)], dim=1)

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self(x)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.stack([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=2).flatten(1)
        return torch.nn.functional.normalize(v, dim=1)


def tissue(size: int, fraction: float, seed: int, stroma=STROMA, nucleus=NUCLEUS,
           noise: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """Stroma with round nuclei covering about ``fraction`` of the image; image and truth."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), bool)
    while truth.mean() < fraction:
        r = int(rng.integers(5, 11))
        c = rng.integers(r, size - r, 2)
        rr, cc = disk(tuple(c), r, shape=truth.shape)
        truth[rr, cc] = True
    img = np.where(truth[..., None], nucleus, stroma) + rng.normal(0, noise, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


@pytest.fixture(scope="module")
def dark_bundle():
    model = DarkModel().eval()
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3}
    bank = build_reference_bank(model, [tissue(192, 0.45, s)[0] for s in range(4)], spec)
    return SimpleNamespace(
        name="dark", model=model, input_spec=spec, manifest={"dcin": {"names": None}},
        family=SimpleNamespace(discrete_outputs=()), extra=lambda key: bank if key == BANK_FILE else None,
    )


def _fraction(bundle, image, **kw) -> tuple[float, object]:
    from napari_dgseg.core.predict import run_tiled

    plan = plan_dcin(bundle, ImageAdapter.from_array(image), **kw)
    out = run_tiled(bundle.model, image, input_spec=bundle.input_spec, tile=256, overlap=32,
                    branches=plan.branches)
    return float((out["logits"].argmax(0) > 0).mean()), plan


def test_sparse_tile_with_auto_keeps_its_nuclear_fraction(dark_bundle):
    image, truth = tissue(320, 0.04, seed=11)
    frac, plan = _fraction(dark_bundle, image, mode="auto")
    assert plan.requested == "auto" and plan.guard is not None
    assert truth.mean() / 1.5 <= frac <= 1.5 * truth.mean(), (frac, truth.mean(), plan.guard)


IN_DOMAIN = 0.5  # what a model's manifest might record (vessels-ram-sgcg's measured value)


def test_in_domain_colours_fall_back_without_a_pilot_pass(dark_bundle, monkeypatch):
    # a sparse tile in exactly the training colours: nothing for normalization to correct
    def no_pilot(*args, **kwargs):
        raise AssertionError("rule 0 decides before the pilot pass")

    monkeypatch.setattr(guard_module, "measure", no_pilot)
    image, truth = tissue(320, 0.04, seed=11)
    recorded = SimpleNamespace(**vars(dark_bundle))
    recorded.manifest = {"dcin": {"names": None, IN_DOMAIN_KEY: IN_DOMAIN}}
    frac, plan = _fraction(recorded, image, mode="auto", method="reinhard")
    assert plan.guard["action"] == "fallback" and plan.mode == "none"
    assert "training image" in plan.guard["reason"]
    assert plan.guard["nearest_training_shift"] < IN_DOMAIN
    assert plan.guard["not_applied"]["mode"] == "full"
    none, _ = _fraction(dark_bundle, image, mode="none")
    assert frac == none


def test_nearest_training_colours_names_the_closest_bank_image():
    pale = (np.array([245.0, 225.0, 240.0]), np.array([150.0, 120.0, 200.0]))
    model = DarkModel().eval()
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3}
    images = [tissue(160, 0.3, s)[0] for s in range(2)]
    images += [tissue(160, 0.3, s, stroma=pale[0], nucleus=pale[1])[0] for s in range(2, 4)]
    bank = build_reference_bank(model, images, spec)
    bundle = SimpleNamespace(manifest={"dcin": {"names": ["std-0", "std-1", "pale-0", "pale-1"]}},
                             extra=lambda key: bank if key == BANK_FILE else None)
    d_pale, name_pale = nearest_training_colours(bundle, tissue(200, 0.1, 9, stroma=pale[0],
                                                                nucleus=pale[1])[0])
    d_std, name_std = nearest_training_colours(bundle, tissue(200, 0.1, 9)[0])
    assert name_pale.startswith("pale-") and name_std.startswith("std-")
    assert d_pale < IN_DOMAIN and d_std < IN_DOMAIN
    # a third stain is far from both groups
    far, _ = nearest_training_colours(bundle, tissue(200, 0.3, 9, stroma=np.array([200.0, 220.0, 160.0]),
                                                     nucleus=np.array([60.0, 90.0, 40.0]))[0])
    assert far > IN_DOMAIN
    assert nearest_training_colours(SimpleNamespace(extra=lambda key: None, manifest={}),
                                    images[0]) is None


def test_plain_reinhard_breaks_the_sparse_tile_and_the_guard_falls_back(dark_bundle):
    image, truth = tissue(320, 0.04, seed=11)
    # the failure itself: unguarded Reinhard calls far too much of the stroma "nucleus"
    broken, _ = _fraction(dark_bundle, image, mode="full", method="reinhard")
    assert broken > 3 * truth.mean()
    frac, plan = _fraction(dark_bundle, image, mode="auto", method="reinhard")
    assert plan.guard["action"] == "fallback" and plan.mode == "none"
    assert "grow the foreground" in plan.guard["reason"]
    assert plan.guard["signals"]["colour_shift"] < COLOUR_SHIFT
    assert plan.guard["not_applied"]["mode"] == "full"  # what would have run is recorded
    none, _ = _fraction(dark_bundle, image, mode="none")
    assert frac == none  # the fall-back is exactly the image as it is


def test_the_guard_keeps_normalization_for_an_out_of_domain_stain(dark_bundle):
    # pale, bluish scanner: the darkness model misses the nuclei until colours are normalised
    image, truth = tissue(320, 0.3, seed=12, stroma=np.array([245.0, 235.0, 250.0]),
                          nucleus=np.array([150.0, 150.0, 215.0]))
    none, _ = _fraction(dark_bundle, image, mode="none")
    frac, plan = _fraction(dark_bundle, image, mode="auto")
    assert none < 0.5 * truth.mean()
    assert plan.guard["action"] == "keep" and plan.mode == "full"
    assert abs(frac - truth.mean()) < abs(none - truth.mean())


def test_predict_records_the_guard_in_provenance(dark_bundle):
    from napari_dgseg.core.inference import predict_bundle

    bundle = SimpleNamespace(**vars(dark_bundle), class_names=("background", "nucleus"),
                             family_name="dark", path=None, sha256=None)
    bundle.family = SimpleNamespace(
        discrete_outputs=(), output="semantic", segment_image=None, postprocess=lambda maps, cfg: {"labels": maps["logits"].argmax(0)})
    bundle.config = bundle.postprocess_config = {}
    image, _ = tissue(160, 0.04, seed=13)
    pred = predict_bundle(bundle, image, tile=128, dcin="auto", dcin_method="reinhard")
    guard = pred.provenance["dcin"]["guard"]
    assert guard["action"] == "fallback" and pred.provenance["dcin"]["mode"] == "none"
    assert pred.provenance["dcin"]["requested"] == "auto"
    assert set(guard["signals"]) >= {"fraction_none", "fraction_normalized", "agreement",
                                     "colour_shift"}


def _signals(**kw) -> GuardSignals:
    base = dict(fraction_none=0.2, fraction_normalized=0.2, agreement=1.0,
                branch_disagreement=0.0, pilot_pixels=1000, colour_shift=0.1)
    return GuardSignals(**(base | kw))


def test_decide_rule_order():
    assert decide(_signals(agreement=AGREE)).action == "keep"
    grow = dict(fraction_none=0.05, fraction_normalized=0.3, agreement=0.3)
    assert decide(_signals(**grow)).action == "fallback"
    assert decide(_signals(**grow, colour_shift=COLOUR_SHIFT + 0.1)).action == "keep"
    # growth below the minimum number of pixels is noise, not a reason to fall back
    assert decide(_signals(fraction_none=0.001, fraction_normalized=0.01, agreement=0.2)).action == "keep"
    # shrinking the mask is allowed (dense tumour over-called without normalization)
    assert decide(_signals(fraction_none=0.6, fraction_normalized=0.3, agreement=0.6)).action == "keep"
    split = _signals(agreement=0.5, branch_disagreement=MAX_BRANCH_DISAGREEMENT + 0.05)
    assert decide(split).action == "fallback" and "branches disagree" in decide(split).reason


def test_pilot_windows_prefer_tissue_and_cover_small_images():
    assert pilot_windows(300, 200) == [(0, 300, 0, 200)]
    mask = np.zeros((100, 100), bool)
    mask[60:, 60:] = True  # tissue in the bottom-right corner only
    wins = pilot_windows(1000, 1000, mask, side=256, count=2)
    assert len(wins) == 2 and wins[0] == (744, 1000, 744, 1000)
    assert all(y1 - y0 == 256 and x1 - x0 == 256 for y0, y1, x0, x1 in wins)


@pytest.mark.slow  # a few seconds: the shipped nuclei U-Net on four 256 px crops
@pytest.mark.parametrize("domain", ["clean", "warm-scanner"])
def test_shipped_model_keeps_a_sparse_synthetic_crop_sparse_with_auto(domain):
    """Whatever weights are shipped: auto may not turn a few nuclei into many."""
    from napari_dgseg import list_bundles, load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei

    if "nuclei-unet" not in {b["name"] for b in list_bundles()}:
        pytest.skip("the shipped nuclei-unet bundle is not installed")
    bundle = load_bundle("nuclei-unet")
    img, gt = make_nuclei(1024, domain=domain, seed=70_001)
    truth = gt > 0
    # the 256 px crop with the fewest nuclear pixels (but some)
    best = min((truth[y:y + 256, x:x + 256].mean(), y, x) for y in range(0, 769, 32)
                for x in range(0, 769, 32) if truth[y:y + 256, x:x + 256].any())
    _, y, x = best
    crop, t = img[y:y + 256, x:x + 256], truth[y:y + 256, x:x + 256]
    assert t.mean() < 0.1  # a sparse crop indeed
    pred = bundle.predict(crop, dcin="auto", device="cpu")
    frac = float((pred.labels > 0).mean())
    assert t.mean() / 1.5 <= frac <= 1.5 * t.mean(), (frac, t.mean(), pred.provenance["dcin"]["guard"])


def test_shipped_vessel_model_keeps_training_colours_and_normalizes_new_ones():
    """Rule 0 as shipped: a training camera is predicted as it is, a held-out style normalized."""
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_sample

    bundle = load_bundle("vessels-ram-sgcg")
    limit = bundle.manifest["dcin"][IN_DOMAIN_KEY]
    seen = make_sample("vessels", 192, "camera-c", 4242)
    plan = plan_dcin(bundle, ImageAdapter.from_array(seen.image), mode="auto")
    assert plan.mode == "none" and plan.guard["nearest_training_shift"] < limit
    assert plan.guard["nearest_training_image"].startswith("vessels_")
    new = make_sample("vessels", 192, "hv-dim-vignette", 4242, renderer="heldout")
    plan = plan_dcin(bundle, ImageAdapter.from_array(new.image), mode="auto")
    assert plan.guard["nearest_training_shift"] >= limit
    assert plan.mode == "full" and plan.guard["action"] == "keep"
