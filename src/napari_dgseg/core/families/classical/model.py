"""Configs and whole-image segmenters of the classical baselines (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.models.base import SegModel


@dataclass(frozen=True)
class ClassicalHEConfig:
    """Parameters of the H&E nuclei baseline (see :func:`napari_dgseg.core.classical.classical_nuclei`).

    Attributes
    ----------
    num_classes : int
        Background + nucleus (2).
    min_size : int, optional
        Nuclei smaller than this many pixels are dropped (None: the method's default).
    """

    num_classes: int = 2
    min_size: int | None = None


@dataclass(frozen=True)
class ClassicalFundusConfig:
    """Parameters of the fundus vessel baseline (see :func:`napari_dgseg.core.classical.classical_vessels`).

    Attributes
    ----------
    num_classes : int
        Background + vessel (2).
    min_size : int, optional
        Vessel fragments smaller than this many pixels are dropped (None: the method's default,
        which follows the image size).
    """

    num_classes: int = 2
    min_size: int | None = None


class NoNetwork(SegModel):
    """The empty network of a family that segments whole images without one.

    It has no parameters (its bundle's weights file is empty) and refuses to run tile by tile:
    inference calls the family's ``segment_image`` instead.
    """

    divisor = 1

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.num_classes = int(config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a classical baseline has no network; it segments whole images")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a classical baseline has no network and no image embedding")


def segment_he(rgb8: np.ndarray, config: Any) -> dict[str, np.ndarray]:
    """Nuclei instances and a foreground probability-like map of a uint8 RGB image."""
    from napari_dgseg.core.classical import classical_nuclei

    mask, instances = classical_nuclei(rgb8, **_given(config, "min_size"))
    return {"labels": np.asarray(instances, dtype=np.int32),
            "probabilities": _two_class(np.asarray(mask, bool))}


def segment_fundus(rgb8: np.ndarray, config: Any) -> dict[str, np.ndarray]:
    """Vessel class map (0/1) of a uint8 RGB fundus image."""
    from napari_dgseg.core.classical import classical_vessels

    mask = np.asarray(classical_vessels(rgb8, **_given(config, "min_size")), bool)
    return {"labels": mask.astype(np.int32), "probabilities": _two_class(mask)}


def _given(config: Any, *keys: str) -> dict[str, int]:
    """The parameters ``keys`` the bundle's config (a mapping or config object) sets (not None)."""
    out = {}
    for key in keys:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            out[key] = int(value)
    return out


def _two_class(mask: np.ndarray) -> np.ndarray:
    fg = mask.astype(np.float32)
    return np.stack([1.0 - fg, fg])
