"""MaNi: mutual-information loss between source and target nucleus features (Sharma, Syed & Brown, "MaNi: Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023).

Per image, the projected decoder features are mean-pooled over the foreground and over the
background. Source masks come from the ground truth; target masks from the model's own
prediction in the same iteration (foreground probability >= 0.5, detached: pseudo-labels).
A critic ``T`` scores pairs; with the Jensen-Shannon bound the loss is::

    L = softplus(T(z_t_fg, z_s_bg)).mean() + softplus(-T(z_t_fg, z_s_fg)).mean()

(positive pair: target foreground with source foreground; negative pair: target foreground with
source background). Network, projection head and critic all minimise ``L``. Pairs whose masks
are empty (a crop without nuclei, or a target crop where the model sees none) are left out; when
no pair is left the loss is an exact zero that still carries gradients' graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_dgseg.core.losses.segmentation import IGNORE_INDEX
from napari_dgseg.core.models.discriminators import ConcatDiscriminator, ProjectionHead


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of ``features`` ``(B, F, H, W)`` over ``mask`` ``(B, H, W)``.

    Returns
    -------
    (Tensor, Tensor)
        Means ``(B, F)`` (zeros where the mask is empty) and pixel counts ``(B,)``.
    """
    m = mask.to(features.dtype).unsqueeze(1)
    count = m.sum(dim=(1, 2, 3))
    total = (features * m).sum(dim=(2, 3))
    return total / count.clamp_min(1.0).unsqueeze(1), count


def jsd_mi_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI loss ``softplus(neg).mean() + softplus(-pos).mean()`` of critic scores."""
    return F.softplus(neg).mean() + F.softplus(-pos).mean()


def pseudo_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Foreground pseudo-labels ``(B, H, W)`` bool: ``1 - p(background) >= threshold`` (detached)."""
    with torch.no_grad():
        fg = 1.0 - torch.softmax(logits.detach().float(), dim=1)[:, 0]
    return fg >= threshold


def source_masks(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background masks ``(B, H, W)`` of class-id targets (255 = ignore)."""
    valid = target != IGNORE_INDEX
    return valid & (target > 0), valid & (target == 0)


def mani_loss(
    critic: nn.Module,
    source_features: torch.Tensor,
    source_fg: torch.Tensor,
    source_bg: torch.Tensor,
    target_features: torch.Tensor,
    target_fg: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MaNi loss of projected features.

    Parameters
    ----------
    critic : nn.Module
        ``critic(a, b) -> (N,)`` scores, e.g. :class:`ConcatDiscriminator`.
    source_features, target_features : Tensor
        Projected features ``(B, F, H, W)`` of paired source and target crops (pair ``i`` is
        source ``i`` with target ``i``).
    source_fg, source_bg, target_fg : Tensor
        ``(B, H, W)`` bool masks.

    Returns
    -------
    (Tensor, dict)
        Loss and ``{"mi", "pairs", "pos", "neg"}`` (mean critic scores).
    """
    z_s_fg, n_s_fg = masked_mean(source_features, source_fg)
    z_s_bg, n_s_bg = masked_mean(source_features, source_bg)
    z_t_fg, n_t_fg = masked_mean(target_features, target_fg)
    keep = (n_s_fg > 0) & (n_s_bg > 0) & (n_t_fg > 0)
    if not bool(keep.any()):
        zero = (source_features.sum() + target_features.sum()) * 0.0
        return zero, {"mi": 0.0, "pairs": 0.0, "pos": 0.0, "neg": 0.0}
    pos = critic(z_t_fg[keep], z_s_fg[keep])
    neg = critic(z_t_fg[keep], z_s_bg[keep])
    loss = jsd_mi_loss(pos, neg)
    return loss, {
        "mi": float(loss.detach()),
        "pairs": float(keep.sum()),
        "pos": float(pos.detach().mean()),
        "neg": float(neg.detach().mean()),
    }


class ManiModule(nn.Module):
    """Projection head + concat critic; ``forward`` computes :func:`mani_loss` from raw features.

    Parameters
    ----------
    features : int
        Channels F of the decoder map the projection reads.
    hidden : int
        Critic width (512).
    threshold : float
        Pseudo-label threshold on the target foreground probability (0.5).
    """

    def __init__(self, features: int, hidden: int = 512, threshold: float = 0.5) -> None:
        super().__init__()
        self.projection = ProjectionHead(features)
        self.critic = ConcatDiscriminator(features, hidden)
        self.threshold = threshold

    def forward(
        self,
        source_features: torch.Tensor,
        source_target: torch.Tensor,
        target_features: torch.Tensor,
        target_logits: torch.Tensor,
        target_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """MI loss of raw decoder maps ``(B, F, H, W)``.

        ``source_target`` ``(B, H, W)`` class ids (255 = ignore); the target foreground is the
        model's own prediction from ``target_logits`` ``(B, K, H, W)``, except for images with
        known labels: ``target_labels`` ``(B, H, W)`` with 255 where unknown (rows entirely 255
        use the pseudo-labels).
        """
        fg_s, bg_s = source_masks(source_target)
        fg_t = pseudo_labels(target_logits, self.threshold)
        if target_labels is not None:
            known = (target_labels != IGNORE_INDEX).flatten(1).any(dim=1)
            fg_t = torch.where(
                known.view(-1, 1, 1), (target_labels > 0) & (target_labels != IGNORE_INDEX), fg_t
            )
        n = source_features.shape[0]
        proj = self.projection(torch.cat([source_features, target_features], dim=0))
        return mani_loss(self.critic, proj[:n], fg_s, bg_s, proj[n:], fg_t)
