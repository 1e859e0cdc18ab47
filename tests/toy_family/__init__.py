"""A toy model family living outside the package: proof that a family needs only its folder.

Register it without installing anything with ``DGSEG_FAMILIES=toy=toy_family:FAMILY`` (this
folder's parent on ``PYTHONPATH``), or from a distribution's entry point::

    [project.entry-points."napari_dgseg.families"]
    toy = "toy_family:FAMILY"

The network is one 3x3 convolution, ReLU and a 1x1 head: a "U-Net-like" model for the
:class:`~napari_dgseg.core.family.Family` defaults (loss, post-processing, MaNi features), with
its own config dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_dgseg.core.family import Family
from napari_dgseg.core.models.base import SegModel


@dataclass(frozen=True)
class ToyConfig:
    """Architecture of the toy network: classes, feature channels, input channels."""

    num_classes: int = 2
    width: int = 8
    in_channels: int = 3


class ToyNet(SegModel):
    """3x3 convolution + ReLU (the features) and a 1x1 head; any input size (divisor 1)."""

    divisor = 1

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, config.width, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(config.width, config.num_classes, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature map (the only stage)."""
        return [self.body(x)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The map the head classifies (MaNi's projection input)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


FAMILY = Family(
    name="toy",
    config_cls=ToyConfig,
    build=ToyNet,
    description="toy family for the registry tests (one convolution)",
    capabilities=frozenset({"mani"}),
)
