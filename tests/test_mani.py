"""MaNi: the JSD mutual-information loss, masked pooling, the concat critic, pseudo-labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_dgseg.core.losses.mani import (
    ManiModule,
    jsd_mi_loss,
    mani_loss,
    masked_mean,
    pseudo_labels,
    source_masks,
)
from napari_dgseg.core.models.discriminators import ConcatDiscriminator, ProjectionHead


def sp(v: float) -> float:
    return math.log1p(math.exp(v))


def test_jsd_loss_matches_formula_by_hand():
    pos = torch.tensor([0.0, 1.0, -2.0])
    neg = torch.tensor([2.0, -1.0, 0.5])
    expected = (sp(2.0) + sp(-1.0) + sp(0.5)) / 3 + (sp(0.0) + sp(-1.0) + sp(2.0)) / 3
    assert float(jsd_mi_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)
    # the bound's optimum: confident critic -> loss -> 0
    assert float(jsd_mi_loss(torch.tensor([50.0]), torch.tensor([-50.0]))) < 1e-10


def test_masked_mean_by_hand():
    f = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    m = torch.tensor([[[1, 0], [0, 1]], [[0, 0], [0, 0]]], dtype=torch.bool)
    mean, count = masked_mean(f, m)
    torch.testing.assert_close(mean[0], torch.tensor([(0 + 3) / 2, (4 + 7) / 2]))
    torch.testing.assert_close(mean[1], torch.zeros(2))
    torch.testing.assert_close(count, torch.tensor([2.0, 0.0]))


class SumCritic(nn.Module):
    """T(a, b) = sum(a * b): a hand-checkable critic."""

    def forward(self, a, b):
        return (a * b).sum(1)


def test_mani_loss_pairs_by_hand():
    # one image pair, F = 1: features constant per region
    src = torch.zeros(1, 1, 2, 2)
    src[0, 0, 0, :] = 2.0  # foreground row
    src[0, 0, 1, :] = -1.0  # background row
    s_fg = torch.tensor([[[True, True], [False, False]]])
    s_bg = ~s_fg
    tgt = torch.full((1, 1, 2, 2), 0.5)
    t_fg = torch.tensor([[[True, False], [False, False]]])
    loss, logs = mani_loss(SumCritic(), src, s_fg, s_bg, tgt, t_fg)
    pos, neg = 0.5 * 2.0, 0.5 * -1.0  # T(t_fg, s_fg), T(t_fg, s_bg)
    assert float(loss) == pytest.approx(sp(neg) + sp(-pos), rel=1e-6)
    assert (
        logs["pos"] == pytest.approx(pos)
        and logs["neg"] == pytest.approx(neg)
        and logs["pairs"] == 1
    )


def test_mani_loss_skips_pairs_with_empty_masks():
    src = torch.randn(2, 3, 4, 4, requires_grad=True)
    tgt = torch.randn(2, 3, 4, 4, requires_grad=True)
    fg = torch.zeros(2, 4, 4, dtype=torch.bool)
    fg[0, :2] = True
    empty_t = torch.zeros(2, 4, 4, dtype=torch.bool)
    loss, logs = mani_loss(SumCritic(), src, fg, ~fg, tgt, empty_t)
    assert float(loss.detach()) == 0.0 and logs["pairs"] == 0
    loss.backward()  # still part of the graph
    t_fg = torch.ones(2, 4, 4, dtype=torch.bool)
    loss, logs = mani_loss(SumCritic(), src, fg, ~fg, tgt, t_fg)
    assert logs["pairs"] == 1  # image 1 has no source foreground


def test_concat_discriminator_architecture():
    d = ConcatDiscriminator(16)
    linears = [m for m in d.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 512), (512, 512), (512, 1)]
    assert d(torch.randn(5, 16), torch.randn(5, 16)).shape == (5,)
    with pytest.raises(ValueError):
        d(torch.randn(5, 16), torch.randn(4, 16))
    head = ProjectionHead(8)
    assert isinstance(head[0], nn.Conv2d) and head[0].kernel_size == (1, 1)
    assert isinstance(head[1], nn.BatchNorm2d) and isinstance(head[2], nn.ReLU)


def test_discriminator_separates_positive_from_negative_pairs():
    """Toy: nucleus features cluster around mu_fg in both domains (target shifted), background
    around mu_bg. Trained on the JSD loss, the critic scores (t_fg, s_fg) above (t_fg, s_bg)."""
    torch.manual_seed(0)
    f = 8
    mu_fg, mu_bg = torch.randn(f), torch.randn(f)
    shift = 0.3 * torch.randn(f)

    def draw(n):
        s_fg = mu_fg + 0.5 * torch.randn(n, f)
        s_bg = mu_bg + 0.5 * torch.randn(n, f)
        t_fg = mu_fg + shift + 0.5 * torch.randn(n, f)
        return s_fg, s_bg, t_fg

    critic = ConcatDiscriminator(f, hidden=64)
    opt = torch.optim.Adam(critic.parameters(), 1e-3)
    for _ in range(150):
        s_fg, s_bg, t_fg = draw(32)
        loss = jsd_mi_loss(critic(t_fg, s_fg), critic(t_fg, s_bg))
        opt.zero_grad()
        loss.backward()
        opt.step()
    s_fg, s_bg, t_fg = draw(500)
    with torch.no_grad():
        pos, neg = critic(t_fg, s_fg), critic(t_fg, s_bg)
    assert float((pos > 0).float().mean()) > 0.95 and float((neg < 0).float().mean()) > 0.95
    assert float(jsd_mi_loss(pos, neg)) < 0.2 < 2 * math.log(2)  # 2 log 2: an untrained critic


def test_pseudo_labels_threshold_the_models_own_prediction():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 1] = torch.tensor([-1.0, 0.0, 1.0])  # p(fg) = sigmoid(.) -> 0.27, 0.5, 0.73
    torch.testing.assert_close(pseudo_labels(logits), torch.tensor([[[False, True, True]]]))
    multi = torch.zeros(1, 3, 1, 1)  # three classes equal: p(background) = 1/3 -> foreground
    assert bool(pseudo_labels(multi)[0, 0, 0])
    assert not pseudo_labels(logits.requires_grad_(True)).requires_grad


def test_source_masks_ignore_index():
    t = torch.tensor([[[0, 1, 255, 2]]])
    fg, bg = source_masks(t)
    assert fg.tolist() == [[[False, True, False, True]]] and bg.tolist() == [
        [[True, False, False, False]]
    ]


def test_module_agrees_with_function_and_uses_predictions():
    torch.manual_seed(1)
    mod = ManiModule(4, hidden=16).eval()
    fs, ft = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 2, (2, 6, 6))
    logits = torch.randn(2, 2, 6, 6)
    loss, _ = mod(fs, target, ft, logits)
    proj = mod.projection(torch.cat([fs, ft]))
    fg, bg = source_masks(target)
    ref, _ = mani_loss(mod.critic, proj[:2], fg, bg, proj[2:], pseudo_labels(logits))
    torch.testing.assert_close(loss, ref)
    # the target mask follows the prediction: other logits -> other loss
    loss2, _ = mod(fs, target, ft, -logits)
    assert not torch.allclose(loss, loss2)
    # known target labels replace the pseudo-labels of that image only
    known = torch.full((2, 6, 6), 255)
    known[0] = (pseudo_labels(-logits)[0]).long()
    loss3, _ = mod(fs, target, ft, logits, known)
    mixed = torch.stack([pseudo_labels(-logits)[0], pseudo_labels(logits)[1]])
    ref3, _ = mani_loss(mod.critic, proj[:2], fg, bg, proj[2:], mixed)
    torch.testing.assert_close(loss3, ref3)
