"""RAM-DSIR loss terms (Zhou, Qi & Shi, "Generalizable Medical Image Segmentation via Random Amplitude Mixup and Domain-Specific Image Restoration", ECCV 2022; the baseline of SgCG): consistency and domain-specific restoration.

``L_ram = Seg(x) + Seg(x_RAM) + w_kl * SymKL(p(x), p(x_RAM)) + w_rest * sum_d MSE_d``
(reference weights ``w_kl = 0.5``, ``w_rest = 0.1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX


def symmetric_kl(
    logits_a: Tensor,
    logits_b: Tensor,
    target: Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Symmetric KL divergence ``KL(p_a || p_b) + KL(p_b || p_a)`` per pixel, averaged.

    Parameters
    ----------
    logits_a, logits_b : Tensor, shape (B, K, H, W)
        Two predictions of the same pixels (original and RAM-augmented image).
    target : Tensor, shape (B, H, W), optional
        Pixels equal to ``ignore_index`` (padding) are left out of the mean.

    Returns
    -------
    Tensor, scalar
        Mean over pixels of the sum over classes (a Jeffreys divergence, >= 0, 0 iff equal).
    """
    if logits_a.shape != logits_b.shape:
        raise InputError(
            f"symmetric_kl needs two predictions of the same shape, got {tuple(logits_a.shape)} "
            f"and {tuple(logits_b.shape)}"
        )
    la = F.log_softmax(logits_a, dim=1)
    lb = F.log_softmax(logits_b, dim=1)
    per_pixel = ((la.exp() - lb.exp()) * (la - lb)).sum(dim=1)  # (B, H, W)
    if target is None:
        return per_pixel.mean()
    valid = (target != ignore_index).to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0)


def image_to_tanh_range(x: Tensor) -> Tensor:
    """Map images in ``[0, 1]`` to the restoration decoder's tanh range ``[-1, 1]``."""
    return x * 2.0 - 1.0


def restoration_loss(
    restored: Tensor, image: Tensor, domain: Tensor
) -> tuple[Tensor, dict[int, float]]:
    """Sum over source domains of the restoration MSE of that domain's images.

    Parameters
    ----------
    restored : Tensor, shape (B, 3, H, W)
        Decoder output in ``[-1, 1]`` (tanh).
    image : Tensor, shape (B, 3, H, W)
        Target images in ``[0, 1]`` (mapped to ``[-1, 1]`` here).
    domain : Tensor, shape (B,)
        Source-domain index of every image.

    Returns
    -------
    total : Tensor, scalar
        ``sum_d MSE(restored[domain == d], image[domain == d])``.
    per_domain : dict of int to float
        The MSE of every domain present in the batch.
    """
    if restored.shape != image.shape:
        raise InputError(
            f"restored and image must have the same shape, got {tuple(restored.shape)} and "
            f"{tuple(image.shape)}"
        )
    target = image_to_tanh_range(image)
    total = restored.sum() * 0.0
    per_domain: dict[int, float] = {}
    for d in torch.unique(domain).tolist():
        sel = domain == d
        mse = F.mse_loss(restored[sel], target[sel])
        total = total + mse
        per_domain[int(d)] = float(mse.detach())
    return total, per_domain
