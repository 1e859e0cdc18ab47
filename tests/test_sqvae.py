"""The ``sqvae`` family (Saito & Hotta 2025): losses against hand-computed values, quantiser, groups,
gradients, save/load, training hooks and the domain-shift score.

    .venv/bin/pytest tests/test_sqvae.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_dgseg.core import codebook as cb
from napari_dgseg.core.families.sqvae import loss as L
from napari_dgseg.core.families.sqvae.model import (
    SQVAE,
    GaussianQuantizer,
    SQVAEConfig,
    code_groups,
    gumbel_softmax,
    sqvae_training_loss,
)
from napari_dgseg.core.registry import get_family

TINY = {"widths": (8, 16, 32), "latent_channels": 8, "codebook_size": 10}


def tiny(num_classes: int = 2, **kw) -> SQVAE:
    torch.manual_seed(0)
    return SQVAE(SQVAEConfig(num_classes=num_classes, **{**TINY, **kw}))


def state(it: int = 0, cqg: bool = False) -> dict:
    return {
        "iteration": it,
        "iters": 10,
        "generator": torch.Generator().manual_seed(1),
        "domains": 1,
        "cqg": cqg,
        "input_spec": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }


# ---------------------------------------------------------------- decorrelation (eqs. 1-2)
def test_squared_correlation_hand_value():
    # x = 1..4, y = (1, 3, 2, 4): Pearson r = 0.8; the ridge r adds to both variances (1 after
    # standardisation), so the loss is r^2 / (1 + ridge)^2.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    ridge = 1e-3
    got = L.squared_correlation(x, y, ridge=ridge)
    assert float(got) == pytest.approx(0.64 / (1 + ridge) ** 2, rel=1e-5)


def test_squared_correlation_independent_and_identical():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 64, 64, generator=g)
    b = torch.randn(2, 4, 64, 64, generator=g)
    assert float(L.squared_correlation(a, b)) < 0.01
    assert float(L.squared_correlation(a, a)) > 0.99
    # A linear mix of the same channels is just as correlated (CCA is invariant to it).
    mix = torch.einsum("ij,bjhw->bihw", torch.randn(4, 4, generator=g), a)
    assert float(L.squared_correlation(a, mix)) > 0.99
    # Scale does not matter.
    assert float(L.squared_correlation(a, 1e3 * a)) > 0.99


# ---------------------------------------------------------------- L_domain (eq. 3)
def test_domain_loss_hand_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # pixel0 (1,0), pixel1 (0,2)
    target = torch.tensor([[[0, 1]]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # pull: |t0 - (1,0)|^2 + |t1 - (0,2)|^2 = 1 + 1; push: 0.5 * (1 + 1) = 1.
    assert float(L.domain_loss(z1, target, t, margin=16.0)) == pytest.approx(1.0)
    # margin caps each squared distance: push = 0.5 * (0.5 + 0.5).
    assert float(L.domain_loss(z1, target, t, margin=0.5)) == pytest.approx(1.5)
    # an ignored pixel (255) adds no pull; class 1 then has no pixel.
    assert float(L.domain_loss(z1, torch.tensor([[[0, 255]]]), t)) == pytest.approx(0.0)


# ---------------------------------------------------------------- L_code (eqs. 10-12)
def _two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.3, 0.2, 0.4, 0.1]]).T.reshape(1, 4, 1, 2)
    return probs, torch.tensor([0, 0, 1, 1])


def test_code_weights_hand_value():
    probs, groups = _two_pixels()
    # dif = |0.7 - 0.1| = 0.6 and |0.3 - 0.4| = 0.1; w = dif / max(dif).
    w = L.code_weights(probs, groups, 2)
    assert w.shape == (1, 1, 2)
    assert w.flatten().tolist() == pytest.approx([1.0, 1.0 / 6.0])


def test_code_weights_k3_uses_gap_between_best_two_groups():
    probs = torch.tensor([0.5, 0.1, 0.3, 0.1]).reshape(1, 4, 1, 1)
    w_raw = L.code_weights(
        torch.cat([probs, torch.tensor([0.25] * 4).reshape(1, 4, 1, 1)], 3),
        torch.tensor([0, 1, 2, 2]),
        3,
    )
    # pixel 0: group maxima (0.5, 0.1, 0.3) -> gap 0.2; pixel 1: (0.25, 0.25, 0.25) -> gap 0.
    assert w_raw.flatten().tolist() == pytest.approx([1.0, 0.0])


def test_code_loss_hand_value():
    probs, groups = _two_pixels()
    target = torch.tensor([[[0, 1]]])
    w = L.code_weights(probs, groups, 2)
    # own-group mass 0.8 and 0.5: mean(1 * 0.2^2, 1/6 * 0.5^2), then log.
    expected = math.log(1e-6 + (0.04 + 0.25 / 6.0) / 2.0)
    assert float(L.code_loss(probs, target, groups, 2, weights=w)) == pytest.approx(
        expected, rel=1e-5
    )
    unweighted = math.log(1e-6 + (0.04 + 0.25) / 2.0)
    assert float(L.code_loss(probs, target, groups, 2)) == pytest.approx(unweighted, rel=1e-5)
    # ignored pixels do not count
    ign = torch.tensor([[[0, 255]]])
    assert float(L.code_loss(probs, ign, groups, 2)) == pytest.approx(
        math.log(1e-6 + 0.04), rel=1e-5
    )


# ---------------------------------------------------------------- SQ-VAE terms
def test_log_mse_entropy_continuous_hand_values():
    x = torch.zeros(1, 3, 2, 2)
    assert float(L.log_mse_loss(x, x + 0.5)) == pytest.approx(0.5 * math.log(0.25), rel=1e-6)
    n = 8
    assert float(L.negative_entropy(torch.zeros(2, n, 3, 3))) == pytest.approx(
        -math.log(n), rel=1e-6
    )
    two = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1)  # p = (0.25, 0.75)
    assert float(L.negative_entropy(two)) == pytest.approx(
        0.25 * math.log(0.25) + 0.75 * math.log(0.75), rel=1e-5
    )
    assert float(
        L.negative_entropy(torch.tensor([0.0, 50.0]).reshape(1, 2, 1, 1))
    ) == pytest.approx(0.0, abs=1e-6)
    z = torch.ones(1, 2, 1, 1)
    assert float(L.continuous_loss(z, torch.zeros_like(z), torch.tensor(2.0))) == pytest.approx(0.5)


# ---------------------------------------------------------------- quantiser
def test_gaussian_logits_match_brute_force_and_variance_floor():
    torch.manual_seed(0)
    q = GaussianQuantizer(7, 3, math.log(20.0), True)
    assert float(q.variance.detach()) == pytest.approx(21.0)
    z = torch.randn(2, 3, 4, 5)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = -torch.cdist(flat, q.codebook).pow(2) / (2 * 21.0)
    got = q.logits(z).permute(0, 2, 3, 1).reshape(-1, 7)
    torch.testing.assert_close(got, brute, atol=1e-5, rtol=1e-5)
    # sigma^2 = 1 + exp(p) never falls below 1, however negative p gets.
    with torch.no_grad():
        q.log_var.fill_(-50.0)
    assert float(q.variance.detach()) >= 1.0


def test_gumbel_softmax_becomes_one_hot_as_temperature_goes_to_zero():
    logits = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    soft = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(soft.sum(1), torch.ones(4, 3, 3))
    assert float(soft.max(1).values.min()) < 0.9
    for t in (1e-2, 1e-3):
        hard = gumbel_softmax(logits, t, generator=torch.Generator().manual_seed(5))
        assert float(hard.max(1).values.min()) > 0.999
        # the chosen category is argmax(logits + g) for the same noise, i.e. the same at every T
        assert torch.equal(hard.argmax(1), soft.argmax(1))
    # the noise samples categories: with a small logit gap both get chosen
    flat = torch.tensor([0.0, 0.2]).view(1, 2, 1, 1).expand(1, 2, 64, 64)
    picks = gumbel_softmax(flat, 1e-3, generator=torch.Generator().manual_seed(2)).argmax(1)
    assert 0.3 < float(picks.float().mean()) < 0.8


def test_code_groups_are_contiguous_and_cover_every_class():
    assert code_groups(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert code_groups(512, 2).tolist() == [0] * 256 + [1] * 256
    with pytest.raises(ValueError):
        code_groups(2, 3)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_predicted_class_is_group_of_argmax_code(k):
    model = tiny(k).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.infer(x)
        logits = model(x)
    assert out["logits"].shape == (2, k, 32, 32)
    assert out["codebook_indices"].shape == (2, 32, 32)
    assert not out["codebook_indices"].is_floating_point()
    assert torch.equal(out["logits"].argmax(1), model.groups[out["codebook_indices"]])
    assert torch.equal(logits, out["logits"])
    assert model.discrete_outputs[0] == "codebook_indices"


def test_config_validation():
    with pytest.raises(ValueError, match="num_classes"):
        SQVAEConfig(num_classes=1)
    with pytest.raises(ValueError, match="codebook_size"):
        SQVAEConfig(num_classes=5, codebook_size=4)
    with pytest.raises(ValueError, match="split"):
        SQVAEConfig(latent_channels=8, split=8)
    cfg = SQVAEConfig(latent_channels=10, split=3)
    assert (cfg.z1_channels, cfg.z2_channels) == (3, 7)
    assert SQVAE(cfg).quant_beta.codebook.shape == (64, 7)


# ---------------------------------------------------------------- training loss
def test_training_loss_logs_every_term_and_reaches_all_parameters():
    model = tiny(3, learn_temperature=True).train()  # the default keeps T on its schedule
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(2, 3, 32, 32, generator=g),
        "target": torch.randint(0, 3, (2, 32, 32), generator=g),
    }
    batch["target"][0, :4] = 255
    loss, logs = sqvae_training_loss(model, batch, state(5))
    for key in (
        "seg",
        "code",
        "domain",
        "corr_z",
        "corr_zq",
        "recon",
        "entropy",
        "continuous",
        "temperature",
        "variance_alpha",
    ):
        assert key in logs and math.isfinite(logs[key])
    loss.backward()
    for name in (
        "quant_alpha.codebook",
        "quant_beta.codebook",
        "quant_alpha.log_var",
        "quant_beta.log_var",
        "log_tau",
        "representatives",
        "to_latent.weight",
        "recon.5.weight",
        "encoder.stages.0.0.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    # every parameter is trained
    assert all(p.grad is not None for p in model.parameters())


def test_training_loss_with_cqg_and_temperature_schedule():
    model = tiny(2, temperature_decay=1e-3).train()
    batch = {"image": torch.rand(2, 3, 32, 32), "target": torch.randint(0, 2, (2, 32, 32))}
    loss, logs = sqvae_training_loss(model, batch, state(1000, cqg=True))
    assert {"cqg_seg1", "cqg_seg2", "cqg_consistency"} <= set(logs)
    assert logs["temperature"] == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert torch.isfinite(loss)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny(2).train()
    x = torch.rand(4, 3, 32, 32)
    y = (x[:, 0] > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seg = []
    for it in range(25):
        loss, logs = sqvae_training_loss(model, {"image": x, "target": y}, state(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seg.append(logs["seg"])
    assert np.mean(seg[-5:]) < np.mean(seg[:5])


# ---------------------------------------------------------------- bundle round trip
def test_save_load_gives_identical_logits_and_indices(tmp_path):
    from napari_dgseg.core.bundle import Bundle, load_bundle

    model = tiny(3).eval()
    cfg = model.config
    bundle = Bundle.create(model, "sqvae", cfg, name="t", class_names=["a", "b", "c"])
    path = bundle.save(tmp_path / "t.dgseg")
    loaded = load_bundle(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model.infer(x)
        b = loaded.model.infer(x)
    assert torch.equal(a["logits"], b["logits"])
    assert torch.equal(a["codebook_indices"], b["codebook_indices"])
    assert torch.equal(a["domain_code_indices"], b["domain_code_indices"])


def test_bundle_predict_returns_indices_and_usage():
    from napari_dgseg.core.bundle import Bundle

    model = tiny(2).eval()
    bundle = Bundle.create(model, "sqvae", model.config, name="t", class_names=["bg", "fg"])
    image = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    pred = bundle.predict(image, tile=32, overlap=8, device="cpu")
    assert pred.codebook_indices.shape == (40, 52) and pred.codebook_indices.dtype == np.int32
    usage = pred.extras["code_usage"]
    assert usage.shape == (10,) and usage.sum() == pytest.approx(1.0)
    assert usage == pytest.approx(cb.code_usage(pred.codebook_indices, 10))
    assert pred.extras["domain_code_indices"].shape == (40, 52)
    report = cb.analyse_prediction(pred, bundle)
    assert report.score is None  # no training usage stored in this bundle
    assert report.codes_used == int(np.count_nonzero(usage))


# ---------------------------------------------------------------- codebook analysis
def test_code_usage_and_js_divergence():
    idx = np.array([[0, 0, 1], [3, 3, 3]])
    assert cb.code_usage(idx, 4).tolist() == pytest.approx([2 / 6, 1 / 6, 0, 3 / 6])
    assert cb.code_usage(idx, 4, mask=idx == 3).tolist() == [0, 0, 0, 1]
    with pytest.raises(Exception, match="codebook has 3 codes"):
        cb.code_usage(idx, 3)
    p = np.array([1.0, 0.0])
    q = np.array([0.0, 1.0])
    assert cb.js_divergence(p, p) == pytest.approx(0.0)
    assert cb.js_divergence(p, q) == pytest.approx(1.0)
    # hand value: p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4)
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(
        1 / 0.75
    )
    assert cb.js_divergence(np.array([0.5, 0.5]), p) == pytest.approx(expected)
    assert cb.shift_score(p, p, p, q) == pytest.approx(0.5)


def test_group_colors_one_hue_family_per_group():
    import colorsys

    colors = cb.group_colors(12, 3, {0: (0, 0, 0), 1: (230, 40, 40), 2: (40, 200, 40)})
    assert sorted(colors) == list(range(12))
    groups = cb.code_groups_np(12, 3)
    hues = {
        g: [colorsys.rgb_to_hls(*colors[c][:3])[0] for c in np.flatnonzero(groups == g)]
        for g in range(3)
    }

    def circ(a, b):
        d = abs(a - b) % 1.0
        return min(d, 1 - d)

    for g in range(3):
        inside = max(circ(a, b) for a in hues[g] for b in hues[g])
        others = min(circ(a, b) for h in range(3) if h != g for a in hues[g] for b in hues[h])
        assert inside < others
    # the red class keeps a red hue
    assert circ(hues[1][0], 0.0) < 0.08
    # codes in a group are not all the same colour
    assert len({colors[c] for c in np.flatnonzero(groups == 1)}) == 4


# ---------------------------------------------------------------- shift score on synthetic domains
@pytest.mark.slow
def test_training_stores_usage_and_shift_score_flags_a_new_domain(tmp_path):
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.data import synthetic
    from napari_dgseg.core.inference import predict_bundle
    from napari_dgseg.core.train.source import train

    names = synthetic.list_domains()["nuclei"]
    train_dom, other = names[0], "dark-stain"
    samples = [synthetic.make_sample("nuclei", 96, train_dom, seed) for seed in range(6)]
    bundle = train(
        "sqvae",
        [samples],
        iters=30,
        size=64,
        batch=2,
        lr=2e-3,
        seed=0,
        config={"widths": [8, 16, 32], "latent_channels": 8, "codebook_size": 16},
        device="cpu",
        out=tmp_path / "m.dgseg",
    )
    stored = load_bundle(tmp_path / "m.dgseg").extra("codebook")
    assert stored is not None and stored["usage_alpha"].shape == (16,)
    assert float(stored["usage_alpha"].sum()) == pytest.approx(1.0)
    assert stored["calibration_scores"].numel() == 6

    def score(domain: str, seed: int) -> float:
        s = synthetic.make_sample("nuclei", 96, domain, 1000 + seed)
        return cb.analyse_prediction(
            predict_bundle(bundle, s.image, tile=96, device="cpu"), bundle
        ).score

    in_domain = [score(train_dom, i) for i in range(3)]
    shifted = [score(other, i) for i in range(3)]
    assert np.mean(shifted) > np.mean(in_domain)
    assert max(in_domain) < min(shifted)


def test_registry_builds_sqvae_with_any_k():
    fam = get_family("sqvae")
    m = fam.build_model({"num_classes": 4, "widths": [8, 16], "codebook_size": 8})
    assert m.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert fam.training_loss is sqvae_training_loss


# ---------------------------------------------------------------- CLI
def test_cli_codebook_writes_index_map_and_prints_scores(tmp_path, capsys):
    import json

    import tifffile

    from napari_dgseg.cli import main
    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.data.sample import Sample

    model = tiny(2).eval()
    bundle = Bundle.create(model, "sqvae", model.config, name="t", class_names=["bg", "fg"])
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            image=(rng.random((40, 40, 3)) * 255).astype(np.uint8),
            labels=np.zeros((40, 40), np.int32),
            name=str(i),
        )
        for i in range(3)
    ]
    cb.store_training_usage(bundle, [("d", samples)], device="cpu")
    path = bundle.save(tmp_path / "t.dgseg")
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, samples[0].image)
    assert (
        main(
            [
                "codebook",
                "--model",
                str(path),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--labels",
                str(img),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    row = out["outputs"][0]
    written = tifffile.imread(row["codebook"])
    # the smallest integer type holding the ids: 10 codewords fit in uint8
    assert written.shape == (40, 40) and written.dtype == np.uint8
    pred = bundle.predict(samples[0].image, device="cpu")
    np.testing.assert_array_equal(written, pred.codebook_indices)
    assert 0.0 <= row["shift_score"] <= 1.0 and isinstance(row["out_of_domain"], bool)
    assert sum(row["usage"]) == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "o" / "img_labels.tif").exists()
    assert out["failed"] == [] and out["codebook_size"] == 10
    # existing outputs are kept without --overwrite, replaced with it
    before = (tmp_path / "o" / "img_codebook.tif").read_bytes()
    args = ["codebook", "--model", str(path), "--out", str(tmp_path / "o"), "--quiet", str(img)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "img_codebook.tif").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == []
    # a batch continues past a bad input, lists it under "failed" and exits 1
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    assert main(["codebook", "--model", str(path), "--out", str(tmp_path / "o2"), "--quiet",
                 str(bad), str(img)]) == 1
    captured = capsys.readouterr()
    out2 = json.loads(captured.out)
    assert [r["codebook"] for r in out2["outputs"]] == [str(tmp_path / "o2" / "img_codebook.tif")]
    (failure,) = out2["failed"]
    assert failure["input"] == str(bad) and "\n" not in failure["error"]
    assert len(captured.err.strip().splitlines()) == 1 and "bad.tif" in captured.err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o2" / "img_codebook.tif"), written)
    # a non-sqvae model is refused with a clear message (exit 2)
    from napari_dgseg.core.registry import get_family

    unet = get_family("unet").build_model({"num_classes": 2, "widths": [8, 16]})
    upath = Bundle.create(unet, "unet", unet.config, name="u", class_names=["a", "b"]).save(
        tmp_path / "u.dgseg"
    )
    assert main(["codebook", "--model", str(upath), "--out", str(tmp_path / "o"), str(img)]) == 2
    assert "sqvae" in capsys.readouterr().err


def test_threshold_rule():
    scores = np.array([0.01, 0.02, 0.03])
    assert cb._threshold(scores) == pytest.approx(max(0.02 + 3 * 0.01, 1.5 * 0.03))
    tiny_scores = np.array([3e-4, 1e-4, 2e-4])
    assert cb._threshold(tiny_scores) == pytest.approx(max(2e-4 + 3e-4, 4.5e-4))
    assert cb._threshold(np.zeros(0)) == 1.0
    # leave-one-out: an image identical to the others scores 0
    same = np.tile(np.array([[0.5, 0.5, 0.0]]), (3, 1))
    assert cb._leave_one_out_scores(same, same).tolist() == pytest.approx([0, 0, 0])
