"""Cross-entropy + soft Dice against independent numpy computations and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_dgseg.core.losses.segmentation import IGNORE_INDEX, ce_dice_loss, soft_dice_loss


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_dice_loss(logits: np.ndarray, target: np.ndarray, ignore: int = 255, eps: float = 1.0):
    """Mean over classes 1..K-1 (class 0 when K == 1) of 1 - (2 I + eps) / (|P| + |G| + eps),
    summed over the batch and all non-ignored pixels, computed pixel by pixel."""
    b, k, h, w = logits.shape
    p = np_softmax(logits.astype(np.float64))
    inter = np.zeros(k)
    psum = np.zeros(k)
    gsum = np.zeros(k)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[n, y, x])
                if t == ignore:
                    continue
                for c in range(k):
                    g = 1.0 if t == c else 0.0
                    inter[c] += p[n, c, y, x] * g
                    psum[c] += p[n, c, y, x]
                    gsum[c] += g
    dice = (2 * inter + eps) / (psum + gsum + eps)
    return 1.0 - (dice[1:].mean() if k > 1 else dice.mean())


def np_cross_entropy(logits: np.ndarray, target: np.ndarray, ignore: int = 255) -> float:
    logp = np.log(np_softmax(logits.astype(np.float64)))
    vals = [
        -logp[n, target[n, y, x], y, x]
        for n in range(target.shape[0])
        for y in range(target.shape[1])
        for x in range(target.shape[2])
        if target[n, y, x] != ignore
    ]
    return float(np.mean(vals))


def test_dice_hand_value_two_pixels():
    # pixel 0: p(fg) = 3/4 and it is foreground; pixel 1: p(fg) = 1/4 and it is background
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # foreground: I = 3/4, |P| = 3/4 + 1/4 = 1, |G| = 1 -> dice = (1.5 + 1) / (2 + 1)
    want = 1.0 - (2 * 0.75 + 1.0) / (1.0 + 1.0 + 1.0)
    assert soft_dice_loss(logits, target).item() == pytest.approx(want, abs=1e-6)
    # eps = 0: the plain Dice coefficient 2 * 0.75 / 2
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(0.25, abs=1e-6)
    # cross-entropy: both pixels have probability 3/4 for their true class
    ce = -math.log(0.75)
    assert ce_dice_loss(logits, target).item() == pytest.approx(ce + want, abs=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_against_independent_computation_with_ignored_pixels(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(0, 2, (2, k, 5, 6)).astype(np.float32)
    target = rng.integers(0, k, (2, 5, 6))
    target[0, 0, :4] = IGNORE_INDEX
    target[1, 3, 2] = IGNORE_INDEX
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target).long()
    dice = np_dice_loss(logits, target)
    assert soft_dice_loss(lt, tt).item() == pytest.approx(dice, abs=1e-5)
    assert soft_dice_loss(lt, tt, eps=0.01).item() == pytest.approx(
        np_dice_loss(logits, target, eps=0.01), abs=1e-5)
    total = np_cross_entropy(logits, target) + dice
    assert ce_dice_loss(lt, tt).item() == pytest.approx(total, abs=1e-5)
    # a custom ignore id excludes exactly its pixels
    t2 = np.where(target == IGNORE_INDEX, 1, target)
    t2[1, 0, 0] = 7
    got = soft_dice_loss(lt, torch.from_numpy(t2).long(), ignore_index=7).item()
    assert got == pytest.approx(np_dice_loss(logits, t2, ignore=7), abs=1e-5)
    got = ce_dice_loss(lt, torch.from_numpy(t2).long(), ignore_index=7).item()
    assert got == pytest.approx(
        np_cross_entropy(logits, t2, ignore=7) + np_dice_loss(logits, t2, ignore=7), abs=1e-5)


def test_255_is_ignored_by_default():
    assert IGNORE_INDEX == 255
    logits = torch.tensor([[[[0.0, 2.0, -1.0]], [[1.0, 0.0, 3.0]]]])
    full = torch.tensor([[[1, 0, 255]]])
    part = logits[..., :2]
    assert soft_dice_loss(logits, full).item() == pytest.approx(
        soft_dice_loss(part, full[..., :2]).item(), abs=1e-7)
    assert ce_dice_loss(logits, full).item() == pytest.approx(
        ce_dice_loss(part, full[..., :2]).item(), abs=1e-7)


def test_a_negative_ignore_id_works_like_any_other():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)
    target = rng.integers(0, 3, (1, 4, 4))
    target[0, 1, :3] = -100  # torch's own default ignore id for cross-entropy
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target).long()
    want = np_dice_loss(logits, target, ignore=-100)
    assert soft_dice_loss(lt, tt, ignore_index=-100).item() == pytest.approx(want, abs=1e-5)
    want += np_cross_entropy(logits, target, ignore=-100)
    assert ce_dice_loss(lt, tt, ignore_index=-100).item() == pytest.approx(want, abs=1e-5)


def test_single_class_uses_that_class():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    # p = 1 everywhere: I = 4, |P| = |G| = 4 -> dice = 9 / 9
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-7)
    target[0, 0, 0] = IGNORE_INDEX
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-7)


def test_background_is_left_out_of_the_mean():
    # 3 classes: the loss is the mean over classes 1 and 2 only (class 0's Dice does not count)
    logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 0.0]], [[0.0, 5.0]]]])
    target = torch.tensor([[[0, 2]]])
    p = torch.softmax(logits, 1)[0, :, 0]  # (3, 2)
    d1 = (0 + 1) / (p[1].sum() + 0 + 1)
    d2 = (2 * p[2, 1] + 1) / (p[2].sum() + 1 + 1)
    want = 1 - (d1 + d2) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(want.item(), abs=1e-6)


def test_perfect_prediction_gives_near_zero_dice_and_ce():
    target = torch.tensor([[[0, 1, 1], [2, 0, 1]]])
    logits = 30.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(logits, target).item() < 1e-6
    assert ce_dice_loss(logits, target).item() < 1e-6
    wrong = 30.0 * torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    # all wrong: each foreground class has I ~ 0, so dice = 1 / (|P| + |G| + 1)
    assert soft_dice_loss(wrong, target).item() > 0.7
    assert ce_dice_loss(wrong, target).item() > 25


def test_gradients_are_finite_and_reach_every_logit():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(0, 3, (2, 3, 4, 4)), dtype=torch.float32, requires_grad=True)
    target = torch.tensor(rng.integers(0, 3, (2, 4, 4)))
    target[0, 0, 0] = IGNORE_INDEX
    ce_dice_loss(logits, target).backward()
    g = logits.grad
    assert torch.isfinite(g).all()
    assert torch.count_nonzero(g[0, :, 0, 0]) == 0  # an ignored pixel gets no gradient
    assert torch.count_nonzero(g.abs().sum(1)) == 2 * 16 - 1
    # empty foreground (all background) keeps the Dice term finite thanks to eps
    zeros = torch.zeros(1, 2, 3, 3, requires_grad=True)
    loss = soft_dice_loss(zeros, torch.zeros(1, 3, 3, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()
    assert loss.item() == pytest.approx(1 - 1 / (4.5 + 1), abs=1e-6)
