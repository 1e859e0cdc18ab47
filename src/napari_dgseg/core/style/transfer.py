"""Applying a trained style model: images and torch batches rendered in the other domain's style.

A :class:`StyleModel` holds the generator of Mind the Gap's stage 1 (Su, Yao, Yang, Wang, Yan,
Sun & Huang, 2023) with its config and provenance. :meth:`StyleModel.transfer` renders a
``(H, W, 3)`` uint8 image of one domain in the style of the other (source -> target by default:
the "target-like source images" ``x_{s->t}`` that stage 2 trains on); :meth:`StyleModel.batch_transform`
gives the callable that :func:`napari_dgseg.core.train.adapt.adapt` applies to every labelled
source batch (``source_transform``), so adaptation replays target-styled source tiles whose labels
still fit (the structure is kept).

Large images go through overlapping tiles blended with a linear ramp; AdaIN normalises with each
tile's own feature statistics, so tiles are large (:data:`TILE`) to keep those statistics close
to the whole image's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.style.model import SOURCE, TARGET, StyleConfig, StyleGenerator

#: Images up to this many pixels go through the network whole.
WHOLE_PIXELS = 2048 * 2048
#: Tile side and overlap for larger images.
TILE, OVERLAP = 1024, 128
DIRECTIONS = ("to-target", "to-source")


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the generator's range)."""
    return x * 2.0 - 1.0


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) * 0.5


def colour_stats(images: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Per-channel RGB mean and standard deviation (0-255) over all pixels of ``images``."""
    total = np.zeros(3)
    sq = np.zeros(3)
    n = 0
    for im in images:
        px = np.asarray(im, dtype=np.float64).reshape(-1, 3)
        total += px.sum(0)
        sq += (px**2).sum(0)
        n += px.shape[0]
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 0.0))
    return {"mean": np.round(mean, 3).tolist(), "std": np.round(std, 3).tolist()}


def _direction(direction: str) -> tuple[int, int]:
    if direction == "to-target":
        return SOURCE, TARGET
    if direction == "to-source":
        return TARGET, SOURCE
    raise InputError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")


class StyleModel:
    """A trained style-transfer generator with its config, provenance and domain names."""

    def __init__(self, generator: StyleGenerator, config: StyleConfig,
                 provenance: dict[str, Any] | None = None,
                 domains: tuple[str, str] = ("source", "target"),
                 path: Any = None, sha256: str | None = None) -> None:
        self.generator = generator.eval()
        self.config = config
        self.provenance = dict(provenance or {})
        self.domains = (str(domains[0]), str(domains[1]))
        self.path = path
        self.sha256 = sha256

    @torch.no_grad()
    def transfer_tensor(self, x: torch.Tensor, direction: str = "to-target") -> torch.Tensor:
        """Style-transfer a ``(B, 3, H, W)`` float batch in [0, 1]; same shape, device and range.

        Sides that are not multiples of the config's divisor are reflect-padded and cropped back.
        """
        src, dst = _direction(direction)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(f"style transfer needs (B, {self.config.in_channels}, H, W) batches "
                             f"(got {tuple(x.shape)})")
        gen = self.generator
        if next(gen.parameters()).device != x.device:
            gen = gen.to(x.device)
        h, w = x.shape[-2:]
        div = self.config.divisor
        ph, pw = (-h) % div, (-w) % div
        xin = from_unit(x.float())
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            xin = F.pad(xin, (0, pw, 0, ph), mode=mode)
        b = x.shape[0]
        out = gen(xin, torch.full((b,), src, device=x.device), torch.full((b,), dst, device=x.device))
        return to_unit(out[..., :h, :w]).clamp(0.0, 1.0).to(x.dtype)

    def transfer(self, image: np.ndarray, direction: str = "to-target", device: str = "cpu") -> np.ndarray:
        """Render a ``(H, W, 3)`` uint8 image in the other domain's style; uint8 of the same shape.

        ``device``: ``cpu`` (default), ``auto``, ``cuda`` or ``mps``.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"style transfer needs (H, W, 3) uint8 RGB images (got {image.dtype} "
                             f"{image.shape})")
        from napari_dgseg.core.device import select_device

        dev = select_device(device)
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0)
        if h * w <= WHOLE_PIXELS:
            out = self.transfer_tensor(x.to(dev), direction).cpu()[0]
        else:
            out = self._tiled(x, direction, dev)
        return (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)

    def _tiled(self, x: torch.Tensor, direction: str, dev: torch.device) -> torch.Tensor:
        _, _, h, w = x.shape
        acc = torch.zeros(3, h, w)
        weight = torch.zeros(1, h, w)
        step = TILE - OVERLAP
        ys = sorted({min(y, max(0, h - TILE)) for y in range(0, h, step)})
        xs = sorted({min(v, max(0, w - TILE)) for v in range(0, w, step)})
        for y in ys:
            for x0 in xs:
                tile = x[..., y : y + TILE, x0 : x0 + TILE]
                out = self.transfer_tensor(tile.to(dev), direction).cpu()[0]
                ramp = _ramp(out.shape[1], OVERLAP)[:, None] * _ramp(out.shape[2], OVERLAP)[None, :]
                acc[:, y : y + out.shape[1], x0 : x0 + out.shape[2]] += out * ramp
                weight[:, y : y + out.shape[1], x0 : x0 + out.shape[2]] += ramp
        return acc / weight.clamp_min(1e-8)

    def batch_transform(self, direction: str = "to-target") -> StyleBatchTransform:
        """The callable adaptation applies to source batches (``(B, 3, H, W)`` in [0, 1])."""
        _direction(direction)
        return StyleBatchTransform(self, direction)

    def describe(self) -> str:
        """One line for provenance: what was trained on what."""
        where = f" ({self.path}, sha256 {self.sha256[:12]})" if self.path and self.sha256 else ""
        return (f"Mind the Gap stage-1 style transfer {self.domains[0]} -> {self.domains[1]}{where}")


class StyleBatchTransform:
    """``transform(batch) -> batch``: source crops rendered in the target style (no gradients)."""

    def __init__(self, model: StyleModel, direction: str) -> None:
        self.model = model
        self.direction = direction
        self.description = model.describe()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.transfer_tensor(x, self.direction)


def _ramp(n: int, overlap: int) -> torch.Tensor:
    """Weights rising linearly over ``overlap`` pixels at both ends (never zero)."""
    i = torch.arange(n, dtype=torch.float32)
    edge = torch.minimum(i + 1, n - i) / max(1, overlap)
    return edge.clamp(max=1.0)
