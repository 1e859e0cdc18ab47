"""Building blocks shared by the families: conv blocks, the U-Net encoder, decoder and backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name (``batch``, ``instance``, ``group`` or ``none``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: {NORMS}")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """U-Net encoder: ``len(widths)`` stages, max-pool between stages.

    ``forward`` returns the feature map of every stage, shallowest first; the input side must be
    a multiple of ``2 ** (len(widths) - 1)``.
    """

    def __init__(self, in_ch: int, widths: Sequence[int], norm: str = "batch") -> None:
        super().__init__()
        chans = [in_ch, *widths]
        self.stages = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], norm) for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """U-Net decoder with skip connections; returns the full-resolution feature map.

    The output has ``widths[0]`` channels; a 1x1 head turns it into logits.
    """

    def __init__(self, widths: Sequence[int], norm: str = "batch") -> None:
        super().__init__()
        rev = list(widths)[::-1]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(rev[i], rev[i + 1], 2, stride=2) for i in range(len(rev) - 1)
        )
        self.blocks = nn.ModuleList(
            ConvBlock(2 * rev[i + 1], rev[i + 1], norm) for i in range(len(rev) - 1)
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        skips = list(feats[:-1])[::-1]
        for up, block, skip in zip(self.ups, self.blocks, skips, strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


def init_unet_backbone(net: nn.Module, config: Any) -> None:
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
