"""The contract every model family's network follows.

A segmentation network takes a normalised RGB batch ``(B, 3, H, W)`` (H and W multiples of
:attr:`SegModel.divisor`) and

* ``forward(x)`` returns class logits ``(B, K, H, W)`` (used by training and the default loss);
* ``infer(x)`` returns the *dense, blendable* maps inference needs, as a dict of
  ``(B, C, H, W)`` float tensors (``"logits"`` at least), plus optionally integer maps
  ``(B, H, W)`` under keys listed in :attr:`SegModel.discrete_outputs` (for example codebook
  indices), which tiling does not average but takes from the tile whose centre is nearest;
* ``encode(x)`` returns the encoder's feature maps, shallowest first; :meth:`embed` pools the
  deepest one into a global image embedding ``(B, C)`` (L2-normalised), which DCIN's LRIS uses to
  find the nearest training image.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SegModel(nn.Module):
    """Base class: subclasses set ``divisor`` and ``num_classes``, implement ``forward``/``encode``."""

    divisor: int = 16
    num_classes: int = 2
    discrete_outputs: tuple[str, ...] = ()

    def training_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates (training and adaptation); default: all of them."""
        return self.parameters()

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, shallowest first (the last is the bottleneck)."""
        return self.encoder(x)

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense maps for tiled inference; default: the logits only."""
        return {"logits": self(x)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global image embedding ``(B, C)``: the pooled bottleneck, L2-normalised."""
        deepest = self.encode(x)[-1]
        return F.normalize(deepest.mean(dim=(2, 3)), dim=1)


def normalise_input(
    rgb: torch.Tensor, input_spec: Mapping[str, Any], stats: torch.Tensor | None = None
) -> torch.Tensor:
    """The network input for ``(B, 3, H, W)`` RGB in [0, 1] under the bundle's ``input_spec``.

    ``(rgb - mean) / std`` (3 values each; defaults 0.5 and 0.25), plus the per-image scaled stain
    densities when the spec's ``features`` ask for them (:mod:`napari_dgseg.core.input_features`;
    ``stats`` are the whole image's statistics, else each item's own). Every network input goes
    through this, in training and at inference.
    """
    from napari_dgseg.core.input_features import build_input

    return build_input(rgb, input_spec, stats)
