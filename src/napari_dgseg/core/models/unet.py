"""The ``unet`` family: a configurable U-Net, the "source only" baseline of every paper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from napari_dgseg.core.models.base import SegModel
from napari_dgseg.core.models.blocks import Decoder, Encoder
from napari_dgseg.core.registry import Family, register_family


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net.

    Attributes
    ----------
    num_classes : int
        Output classes K, background included (K >= 2).
    widths : tuple of int
        Channels per encoder stage; depth = ``len(widths)``, input divisor ``2 ** (depth - 1)``.
        The CPU default (16, 32, 64, 128, 256) has 1.9 M parameters; the paper-size GPU
        configuration is (64, 128, 256, 512, 1024).
    norm : str
        ``batch``, ``instance``, ``group`` or ``none``.
    in_channels : int
        Input channels (3 for RGB).
    """

    num_classes: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: str = "batch"
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + at least one class)")
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two stages")


def init_unet_backbone(net: SegModel, config: Any) -> None:
    """Give ``net`` the U-Net ``encoder``, ``decoder`` and 1x1 ``head`` of ``config``.

    Shared by every family built on the U-Net (same module names, so the same state-dict keys):
    ``config`` needs ``num_classes``, ``widths``, ``norm`` and ``in_channels``.
    """
    net.config = config
    net.num_classes = config.num_classes
    net.divisor = 2 ** (len(config.widths) - 1)
    net.encoder = Encoder(config.in_channels, config.widths, config.norm)
    net.decoder = Decoder(config.widths, config.norm)
    net.head = nn.Conv2d(config.widths[0], config.num_classes, 1)


class UNet(SegModel):
    """Encoder-decoder with skips and a 1x1 classification head."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        init_unet_backbone(self, config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder feature map ``(B, widths[0], H, W)`` (the MaNi projection's input)."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


FAMILY = register_family(
    Family(
        name="unet",
        config_cls=UNetConfig,
        build=UNet,
        description="U-Net trained on source data only (the baseline every paper compares to)",
        output="semantic",
    )
)
