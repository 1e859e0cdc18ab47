"""Small networks that score pairs of feature vectors (MaNi's mutual-information critic).

:class:`ConcatDiscriminator` is the "concat" critic of Hjelm et al. (Deep InfoMax), used by
MaNi (Sharma, Syed & Brown, "MaNi: Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023): an MLP on the concatenation of the two vectors,
``Linear(2F, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 1)``.
:class:`ProjectionHead` is MaNi's projection of the last decoder map before pooling:
1x1 convolution (F -> F) + batch normalisation + ReLU.
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatDiscriminator(nn.Module):
    """Score ``T(a, b)`` of feature pairs: MLP on ``cat(a, b)``.

    Parameters
    ----------
    features : int
        F, the length of each vector.
    hidden : int
        Width of the two hidden layers (512 in the paper).
    """

    def __init__(self, features: int, hidden: int = 512) -> None:
        super().__init__()
        self.features = features
        self.net = nn.Sequential(
            nn.Linear(2 * features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of pairs ``a`` ``(N, F)``, ``b`` ``(N, F)``."""
        if a.shape != b.shape or a.ndim != 2 or a.shape[1] != self.features:
            raise ValueError(
                f"expected two (N, {self.features}) tensors, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return self.net(torch.cat([a, b], dim=1)).squeeze(1)


class ProjectionHead(nn.Sequential):
    """1x1 convolution ``F -> F`` + BatchNorm + ReLU on a ``(B, F, H, W)`` feature map."""

    def __init__(self, features: int) -> None:
        super().__init__(
            nn.Conv2d(features, features, 1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
        )
