"""Segmentation losses shared by every family: cross-entropy + soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, eps: float = 1.0
) -> torch.Tensor:
    """Mean over foreground classes of ``1 - 2|P.G| / (|P| + |G|)`` on softmax probabilities.

    Parameters
    ----------
    logits : Tensor
        ``(B, K, H, W)``.
    target : Tensor
        ``(B, H, W)`` long class ids; ``ignore_index`` pixels are excluded.
    eps : float
        Smoothing added to numerator and denominator (keeps empty classes finite).
    """
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = torch.softmax(logits, dim=1) * valid
    onehot = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).to(logits.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[1:].mean() if k > 1 else 1.0 - dice.mean()


def ce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy + soft Dice (the ``Seg`` term of the SQ-VAE, SgCG, DCIN/CQG and MaNi papers; see docs/references.md)."""
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    return ce + soft_dice_loss(logits, target, ignore_index=ignore_index)
