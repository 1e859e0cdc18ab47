"""RAM amplitude mixup, the DSIR decoder's domain-specific BatchNorm and the ram families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC, load_bundle
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.families.ram.augment import (
    LAMBDAS,
    amplitude_mix,
    draw_lambdas,
    pick_partners,
    random_amplitude_mixup,
    window_bounds,
)
from napari_dgseg.core.families.ram.loss import restoration_loss, symmetric_kl
from napari_dgseg.core.registry import get_family

TINY = {"widths": [8, 16, 32]}


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))


def _images(b: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, h, w, generator=g)
    # different global colour per image, so the low frequencies differ strongly
    return (0.5 * base + 0.5 * torch.rand(b, 3, 1, 1, generator=g)).clamp(0, 1)


# ----------------------------------------------------------------------------- RAM maths
def test_window_is_centred_on_zero_frequency():
    h1, h2, w1, w2 = window_bounds(40, 48, 0.1)
    b = int(0.1 * 40)
    assert (h1, h2, w1, w2) == (20 - b, 20 + b + 1, 24 - b, 24 + b + 1)
    with pytest.raises(InputError, match="ratio"):
        window_bounds(40, 40, 0.7)


@pytest.mark.parametrize(("h", "w"), [(40, 48), (33, 35)])
def test_amplitude_outside_window_untouched_inside_mixed(h, w):
    x = _images(3, h, w, seed=1)
    partner = x.flip(0)
    lam = torch.tensor([0.1, 0.5, 0.8])
    out = amplitude_mix(x, partner, lam, clip=None)
    a_in, a_p, a_out = _spectrum(x).abs(), _spectrum(partner).abs(), _spectrum(out).abs()
    h1, h2, w1, w2 = window_bounds(h, w, 0.1)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[h1:h2, w1:w2] = True
    assert torch.allclose(a_out[..., ~inside], a_in[..., ~inside], atol=1e-3)
    expected = lam.view(-1, 1, 1, 1).double() * a_in + (1 - lam.view(-1, 1, 1, 1).double()) * a_p
    assert torch.allclose(a_out[..., inside], expected[..., inside], rtol=1e-4, atol=1e-3)
    # the low frequencies really changed (the test would fail for an identity)
    assert (a_out[..., inside] - a_in[..., inside]).abs().max() > 1.0


def test_phase_preserved():
    x = _images(2, 32, 32, seed=2)
    out = amplitude_mix(x, x.flip(0), 0.3, clip=None)
    s_in, s_out = _spectrum(x), _spectrum(out)
    strong = s_in.abs() > 1e-3
    unit_in = s_in / s_in.abs().clamp(min=1e-12)
    unit_out = s_out / s_out.abs().clamp(min=1e-12)
    assert torch.allclose(unit_out[strong], unit_in[strong], atol=1e-3)


def test_result_is_real_and_clipped():
    x = _images(2, 32, 32, seed=3)
    out = amplitude_mix(x, 1.0 - x.flip(0), 0.1)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_lambda_one_is_identity():
    x = _images(3, 36, 36, seed=4)
    out = amplitude_mix(x, x.flip(0), torch.ones(3))
    assert torch.allclose(out, x, atol=1e-5)


def test_partner_is_from_another_domain():
    g = torch.Generator().manual_seed(0)
    domain = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    for _ in range(20):
        partners, cross = pick_partners(domain, g)
        assert bool(cross.all())
        assert bool((domain[partners] != domain).all())


def test_single_domain_batch_falls_back_to_other_image():
    g = torch.Generator().manual_seed(0)
    partners, cross = pick_partners(torch.tensor([1, 1, 1]), g)
    assert not bool(cross.any())
    assert bool((partners != torch.arange(3)).all())
    partners, cross = pick_partners(torch.tensor([0]), g)
    assert partners.tolist() == [0] and not bool(cross.any())


def test_lambdas_come_from_reference_set_and_cover_it():
    lam = draw_lambdas(2000, torch.Generator().manual_seed(0))
    values = {round(float(v), 1) for v in lam}
    assert values == set(LAMBDAS)


def test_random_amplitude_mixup_reproducible():
    x = _images(4, 32, 32)
    dom = torch.tensor([0, 1, 0, 1])
    a = random_amplitude_mixup(x, dom, torch.Generator().manual_seed(5))
    b = random_amplitude_mixup(x, dom, torch.Generator().manual_seed(5))
    assert torch.equal(a.images, b.images) and torch.equal(a.partners, b.partners)
    assert bool((dom[a.partners] != dom).all())
    with pytest.raises(InputError, match="domain"):
        random_amplitude_mixup(x, dom[:3], torch.Generator())


# ----------------------------------------------------------------------------- loss terms
def test_symmetric_kl_zero_iff_equal_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 8, 8, generator=g)
    b = torch.randn(2, 3, 8, 8, generator=g)
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-7)
    assert float(symmetric_kl(a, b)) == pytest.approx(float(symmetric_kl(b, a)), rel=1e-6)
    pa, pb = a.softmax(1), b.softmax(1)
    ref = (pa * (pa.log() - pb.log())).sum(1).mean() + (pb * (pb.log() - pa.log())).sum(1).mean()
    assert float(symmetric_kl(a, b)) == pytest.approx(float(ref), rel=1e-5)


def test_restoration_loss_sums_domains():
    img = torch.rand(4, 3, 8, 8)
    restored = torch.zeros(4, 3, 8, 8)
    dom = torch.tensor([0, 0, 2, 2])
    total, per = restoration_loss(restored, img, dom)
    t = img * 2 - 1
    assert set(per) == {0, 2}
    assert per[0] == pytest.approx(float((t[:2] ** 2).mean()), rel=1e-5)
    assert float(total) == pytest.approx(per[0] + per[2], rel=1e-5)


# ----------------------------------------------------------------------------- model
def _state(domains: int = 3, seed: int = 0) -> dict:
    return {
        "generator": torch.Generator().manual_seed(seed),
        "domains": domains,
        "cqg": False,
        "input_spec": dict(DEFAULT_INPUT_SPEC),
        "iteration": 0,
        "iters": 1,
    }


def _batch(domain: list[int], size: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(len(domain), 3, size, size, generator=g),
        "target": (torch.rand(len(domain), size, size, generator=g) > 0.7).long(),
        "domain": torch.tensor(domain),
    }


def test_batch_from_domain_updates_only_its_batchnorm():
    fam = get_family("ram")
    model = fam.build_model({**TINY, "num_domains": 3})
    model.train()
    bns = [norm.bns for norm in model.restoration.norms]
    before = [
        [(bn.running_mean.clone(), bn.weight.detach().clone()) for bn in stage] for stage in bns
    ]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, _ = fam.training_loss(model, _batch([1, 1, 1]), _state())
    opt.zero_grad()
    loss.backward()
    for stage in bns:
        assert stage[1].weight.grad is not None and float(stage[1].weight.grad.abs().sum()) > 0
        assert stage[0].weight.grad is None and stage[2].weight.grad is None
    opt.step()
    for stage, old in zip(bns, before, strict=True):
        for d, bn in enumerate(stage):
            changed_stats = not torch.equal(bn.running_mean, old[d][0])
            changed_weight = not torch.equal(bn.weight.detach(), old[d][1])
            assert changed_stats == (d == 1) and changed_weight == (d == 1)


def test_mixed_batch_restores_each_image_with_its_own_domain_bn():
    torch.manual_seed(0)
    model = get_family("ram").build_model({**TINY, "num_domains": 2}).eval()
    with torch.no_grad():
        model.restoration.norms[0].bns[1].bias.add_(3.0)  # make BN 1 differ from BN 0
        deep = torch.randn(3, 32, 8, 8)
        mixed = model.restore(deep, torch.tensor([0, 1, 0]))
        only0 = model.restore(deep, torch.tensor([0, 0, 0]))
        only1 = model.restore(deep, torch.tensor([1, 1, 1]))
    assert torch.allclose(mixed[[0, 2]], only0[[0, 2]], atol=1e-6)
    assert torch.allclose(mixed[1], only1[1], atol=1e-6)
    assert not torch.allclose(only0[1], only1[1])
    assert float(mixed.abs().max()) <= 1.0  # tanh


def test_too_many_domains_fails_with_the_fix():
    fam = get_family("ram")
    model = fam.build_model({**TINY, "num_domains": 2})
    with pytest.raises(InputError, match='"num_domains": 3'):
        fam.training_loss(model, _batch([0, 1, 2]), _state(domains=3))


def test_same_segmenter_as_unet():
    ram = get_family("ram").build_model({**TINY, "training_heads": False})
    unet = get_family("unet").build_model(TINY)
    assert set(ram.state_dict()) == set(unet.state_dict())
    ram.load_state_dict(unet.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(ram.eval()(x), unet.eval()(x))


@pytest.mark.parametrize("family", ["ram", "ram-sgcg"])
def test_train_saves_segmenter_only_and_extras(tmp_path, family):
    from napari_dgseg.core.families.ram.model import training_model_from_bundle
    from napari_dgseg.core.train.source import train

    rng = np.random.default_rng(0)

    def domain(name: str, tint: tuple[int, int, int], n: int = 2) -> list[Sample]:
        out = []
        for i in range(n):
            lab = np.zeros((48, 48), np.int32)
            r, c = rng.integers(8, 40, 2)
            lab[max(0, r - 6) : r + 6, max(0, c - 6) : c + 6] = 1
            img = np.where(lab[..., None] > 0, 60, 200) + np.array(tint)[None, None]
            img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
            out.append(Sample(image=img, labels=lab, name=f"{name}{i}", domain=name))
        return out

    sources = [domain("a", (0, 0, 0)), domain("b", (40, -30, 0)), domain("c", (-40, 20, 30))]
    out = tmp_path / f"{family}.dgseg"
    cfg = {**TINY, "num_domains": 3}
    if family == "ram-sgcg":
        cfg["sgcg_covariance"] = "diag"
    bundle = train(family, sources, out=out, iters=3, size=32, batch=4, seed=0, config=cfg)
    assert bundle.config["training_heads"] is False
    assert bundle.provenance["domain_bn"] == ["a", "b", "c"]
    loaded = load_bundle(out)
    weights = loaded.state_dict()
    assert not any(k.startswith(("restoration", "projection", "sgcg")) for k in weights)
    assert loaded.model.restoration is None
    rest = loaded.extra("restoration")
    assert rest is not None and any("bns.2" in k for k in rest)
    if family == "ram-sgcg":
        sg = loaded.extra("sgcg")
        assert sg is not None and int(sg["stats.count"].sum()) > 0
        assert sg["stats.cov"].shape == (2, 32)
    pred = loaded.predict(sources[0][0].image, device="cpu")
    assert pred.labels.shape == (48, 48)
    full = training_model_from_bundle(loaded)
    assert full.restoration is not None
    loss, logs = loaded.family.training_loss(full.train(), _batch([0, 1, 2, 0]), _state())
    assert torch.isfinite(loss) and logs["cross_domain"] == 1.0


def test_trains_on_extra_input_channels_and_restores_rgb():
    """With ``rgb+vessel`` input (4 channels) the DSIR decoder still restores the RGB image."""
    from napari_dgseg.core.data.synthetic import make_sample
    from napari_dgseg.core.train.source import train

    a = make_sample("vessels", 96, domain="camera-a", seed=1)
    b = make_sample("vessels", 96, domain="camera-b", seed=1)
    model = get_family("ram-sgcg").build_model(
        {"num_classes": 2, "widths": [8, 16], "in_channels": 4, "training_heads": True})
    assert model.restoration.out.out_channels == 3
    bundle = train("ram-sgcg", [[a], [b]], iters=2, size=64, features="rgb+vessel",
                   config={"widths": [8, 16]})
    assert bundle.config["in_channels"] == 4
    assert bundle.predict(a.image, dcin="none", device="cpu").labels.shape == (96, 96)
