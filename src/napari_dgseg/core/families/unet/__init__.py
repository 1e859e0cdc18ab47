"""The ``unet`` family: a U-Net trained on source data only (the baseline of every paper).

Everything is the :class:`~napari_dgseg.core.family.Family` default: cross-entropy + Dice
(optionally CQG), softmax + argmax, MaNi adaptation on the last decoder map.
"""

from __future__ import annotations

from napari_dgseg.core.families.unet.model import UNet, UNetConfig
from napari_dgseg.core.family import Family

__all__ = ["FAMILY", "UNet", "UNetConfig"]

FAMILY = Family(
    name="unet",
    config_cls=UNetConfig,
    build=UNet,
    description="U-Net trained on source data only (the baseline every paper compares to)",
    output="semantic",
    capabilities=frozenset({"mani"}),
)
