"""The U-Net family's network: a configurable U-Net, the "source only" baseline of every paper."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_dgseg.core.models.base import SegModel
from napari_dgseg.core.models.blocks import init_unet_backbone


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
