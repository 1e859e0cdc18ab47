"""SgCG: exact online class statistics (eqs. 2-3) and the closed-form bound (eqs. 4, 10-11)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.families.ram.sgcg import (
    ClassStatistics,
    SgCGLoss,
    batch_statistics,
    downsample_labels,
    quadratic_form,
    sgcg_bound,
)
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX


def _data(seed: int = 0, n: int = 600, d: int = 5, c: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    centres = rng.normal(0, 1, (c, d))
    mix = rng.normal(0, 0.5, (c, d, d))
    feats = centres[labels] + np.einsum("nd,nde->ne", rng.normal(0, 1, (n, d)), mix[labels])
    labels[rng.random(n) < 0.05] = IGNORE_INDEX
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(labels)


def _reference(feats: torch.Tensor, labels: torch.Tensor, c: int):
    f, y = feats.double().numpy(), labels.numpy()
    means, covs, counts = [], [], []
    for k in range(c):
        sel = f[y == k]
        counts.append(len(sel))
        means.append(sel.mean(0))
        covs.append(np.cov(sel, rowvar=False, bias=True))
    return np.array(counts), np.array(means), np.array(covs)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_online_statistics_equal_batch_statistics_any_order(covariance):
    feats, labels = _data()
    # uneven batches; batch 2 has no class-2 pixel, batch 4 only ignored pixels
    cuts = [0, 37, 150, 151, 300, 420, 600]
    chunks = [(feats[a:b], labels[a:b].clone()) for a, b in itertools.pairwise(cuts)]
    chunks[1][1][chunks[1][1] == 2] = IGNORE_INDEX
    chunks[2][1][:] = IGNORE_INDEX
    all_f = torch.cat([f for f, _ in chunks])
    all_y = torch.cat([y for _, y in chunks])
    counts, means, covs = _reference(all_f, all_y, 3)
    rng = np.random.default_rng(1)
    for _ in range(4):
        order = rng.permutation(len(chunks))
        stats = ClassStatistics(3, 5, covariance)
        for i in order:
            stats.update(*chunks[i])
        assert stats.count.tolist() == counts.tolist()
        np.testing.assert_allclose(stats.mean.numpy(), means, atol=1e-5)
        expect = covs if covariance == "full" else np.stack([np.diag(c) for c in covs])
        np.testing.assert_allclose(stats.cov.numpy(), expect, atol=1e-5)


def test_batch_statistics_of_absent_class_is_zero():
    feats, labels = _data(n=50)
    labels[labels == 1] = 0
    count, mean, cov = batch_statistics(feats, labels, 3)
    assert int(count[1]) == 0
    assert float(mean[1].abs().sum()) == 0.0 and float(cov[1].abs().sum()) == 0.0
    with pytest.raises(InputError, match="covariance"):
        batch_statistics(feats, labels, 3, "spherical")


def test_bound_matches_formula_on_hand_made_tensors():
    q = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    mean = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cov = torch.tensor([[[0.2, 0.1], [0.1, 0.3]], [[0.5, 0.0], [0.0, 0.1]]])
    tau = 0.5
    got = sgcg_bound(q, labels, mean, cov, tau=tau)

    def by_hand(qv, y):
        terms = []
        for c in range(2):
            lin = sum(qv[i] * float(mean[c, i]) for i in range(2)) / tau
            quad = sum(qv[i] * float(cov[c, i, j]) * qv[j] for i in range(2) for j in range(2))
            terms.append(lin + quad / (2 * tau * tau))
        pos = sum(qv[i] * float(mean[y, i]) for i in range(2)) / tau
        return math.log(sum(math.exp(t) for t in terms)) - pos

    expect = [by_hand([0.6, 0.8], 0), by_hand([1.0, 0.0], 1)]
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6)
    # eq. 11: the same value as -log softmax of the positive logit + its variance term
    lin = q @ mean.t() / tau
    logits = lin + quadratic_form(q, cov) / (2 * tau * tau)
    eq11 = -torch.log_softmax(logits, 1).gather(1, labels[:, None]).squeeze(1) + (
        quadratic_form(q, cov).gather(1, labels[:, None]).squeeze(1) / (2 * tau * tau)
    )
    assert torch.allclose(got, eq11, atol=1e-6)
    # diagonal covariance uses only the variances
    diag = torch.stack([torch.diagonal(c) for c in cov])
    q0 = q[1:]
    assert float(sgcg_bound(q0, labels[1:], mean, diag, tau=tau)) == pytest.approx(
        float(sgcg_bound(q0, labels[1:], mean, cov, tau=tau)), rel=1e-6
    )  # q0 = e1: the off-diagonal terms vanish


def test_absent_classes_are_left_out():
    q = torch.tensor([[0.6, 0.8]])
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    cov = torch.zeros(3, 2)
    present = torch.tensor([True, False, True])
    got = sgcg_bound(q, torch.tensor([0]), mean, cov, tau=1.0, present=present)
    expect = math.log(math.exp(0.6) + math.exp(0.8)) - 0.6
    assert float(got) == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_closed_form_bounds_monte_carlo_of_eq4(covariance):
    g = torch.Generator().manual_seed(0)
    d, c, tau, draws = 4, 3, 0.5, 200_000
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.6
    if covariance == "full":
        a = torch.randn(c, d, d, generator=g, dtype=torch.float64) * 0.4
        covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    else:
        covs = torch.diag_embed(torch.rand(c, d, generator=g, dtype=torch.float64) * 0.4 + 0.05)
    # statistics estimated online from Gaussian samples, as in training
    stats = ClassStatistics(c, d, covariance)
    stats.double()
    chol = torch.linalg.cholesky(covs)
    samples = means[:, None] + (
        chol[:, None] @ torch.randn(c, 20_000, d, 1, generator=g, dtype=torch.float64)
    ).squeeze(-1)
    for k in range(c):
        for part in samples[k].split(3000):
            stats.update(part, torch.full((part.shape[0],), k))
    queries = torch.nn.functional.normalize(
        torch.randn(6, d, generator=g, dtype=torch.float64), dim=1
    )
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    bound = sgcg_bound(queries, labels, stats.mean, stats.cov, tau=tau)
    for i in range(len(queries)):
        qi, y = queries[i], int(labels[i])
        # eq. 4: one positive from N(mu_y, S_y) and one negative from each other class per draw
        draws_k = [
            means[k] + (chol[k] @ torch.randn(d, draws, generator=g, dtype=torch.float64)).t()
            for k in range(c)
        ]
        pos = draws_k[y] @ qi / tau
        neg = torch.stack([draws_k[k] @ qi / tau for k in range(c) if k != y], 1)
        per_draw = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos
        mc, se = float(per_draw.mean()), float(per_draw.std()) / math.sqrt(draws)
        assert float(bound[i]) >= mc - 4 * se, (i, float(bound[i]), mc)
        assert float(bound[i]) - mc < 5.0  # a bound, not a runaway value


def test_gradients_finite_for_tiny_and_empty_classes():
    torch.manual_seed(0)
    loss_fn = SgCGLoss(3, 4, tau=0.1, covariance="full")
    q = torch.nn.functional.normalize(torch.randn(20, 4), dim=1).requires_grad_()
    labels = torch.zeros(20, dtype=torch.long)
    labels[0] = 1  # one pixel of class 1, none of class 2
    labels[1:4] = IGNORE_INDEX
    loss = loss_fn(q, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    assert int(loss_fn.stats.count[2]) == 0 and int(loss_fn.stats.count[1]) == 1
    # only ignored pixels: zero loss, zero (finite) gradient
    q2 = torch.randn(5, 4, requires_grad=True)
    loss2 = SgCGLoss(3, 4)(q2, torch.full((5,), IGNORE_INDEX))
    loss2.backward()
    assert float(loss2.detach()) == 0.0 and torch.equal(q2.grad, torch.zeros_like(q2))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_model_gradients_finite_when_foreground_absent(covariance):
    from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
    from napari_dgseg.core.registry import get_family

    fam = get_family("ram-sgcg")
    model = fam.build_model(
        {"widths": [8, 16, 32], "num_domains": 2, "sgcg_covariance": covariance}
    )
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "target": torch.zeros(2, 32, 32, dtype=torch.long),
        "domain": torch.tensor([0, 1]),
    }
    state = {
        "generator": torch.Generator().manual_seed(0),
        "domains": 2,
        "cqg": False,
        "input_spec": dict(DEFAULT_INPUT_SPEC),
    }
    loss, logs = fam.training_loss(model, batch, state)
    loss.backward()
    assert torch.isfinite(loss) and "sgcg" in logs
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert model.projection[0].weight.grad is not None


def test_downsample_labels_majority_and_purity():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, :2, :2] = 1  # pure cell of class 1
    t[0, 2, 2] = 1  # 1/4 foreground: background keeps 3/4 = purity
    t[0, :2, 2:] = torch.tensor([[1, 1], [0, 0]])  # 50/50: ignored
    out = downsample_labels(t, 2, 2)
    assert out.tolist() == [[[1, IGNORE_INDEX], [0, 0]]]
    assert downsample_labels(t, 1, 2) is t
