"""What the network sees: RGB, optionally beside stain optical densities scaled per image.

A bundle's ``input`` spec names its input ``features``:

``rgb`` (every bundle before 0.4, and the default)
    ``(rgb - mean) / std``, three channels.
``rgb+stain``
    The three RGB channels plus the haematoxylin and eosin optical densities from colour
    deconvolution (Ruifrok & Johnston, "Quantification of histochemical staining by color
    deconvolution", 2001), each scaled by *the image's own* statistics: ``(od - lo) / (hi - lo)``
    with ``lo`` the median and ``hi`` the 99th percentile of that stain over the image's tissue
    pixels. This carries the per-image adaptivity of the classical stain threshold (a pale and
    a dark slide both map their nuclei near 1 and their stroma near 0) into the network, which
    can then learn what the threshold cannot: shapes, touching nuclei, dark non-nuclear objects.

The statistics are per *image*, not per tile: :func:`image_stats` is computed once on a strided
thumbnail of the whole image or slide (:func:`thumbnail_stats`) and reused for every tile, so
there are no seams; when none are given (training crops, adaptation batches) each batch item's
own statistics are used. Percentiles over *tissue* pixels (optical density above
:data:`TISSUE_OD`) keep blank glass from diluting them; an image with less than 1 % tissue uses
all its pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: Valid values of ``input_spec["features"]``.
FEATURES = ("rgb", "rgb+stain")
#: Channels the network receives per feature set.
FEATURE_CHANNELS = {"rgb": 3, "rgb+stain": 5}
#: Summed RGB optical density above which a pixel counts as tissue for the statistics.
TISSUE_OD = 0.15
#: Percentiles (of tissue pixels) that map to 0 and 1.
LOW_PERCENTILE, HIGH_PERCENTILE = 50.0, 99.0
#: Smallest ``hi - lo`` in optical-density units (keeps an empty image from being stretched).
MIN_SPREAD = 0.05
#: Scaled densities are clipped to this range (dark debris stays finite).
CLIP = (-2.0, 4.0)
#: Number of statistics per image: H low, H high, E low, E high.
NUM_STATS = 4

# Ruifrok & Johnston (2001) H&E(+DAB) stain matrix, rows = stains, columns = R, G, B optical
# density; its inverse turns RGB optical density into stain concentrations (as in
# scikit-image's ``rgb2hed``, whose published values these are).
STAINS = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
OD_TO_STAIN = np.linalg.inv(STAINS)


def feature_set(spec: Mapping[str, Any]) -> str:
    """The spec's feature set (``rgb`` when the spec predates features)."""
    name = str(spec.get("features", "rgb"))
    if name not in FEATURES:
        raise ValueError(f"unknown input features {name!r}; valid: {', '.join(FEATURES)}")
    return name


def input_channels(spec: Mapping[str, Any]) -> int:
    """Channels a network with this input spec takes."""
    return FEATURE_CHANNELS[feature_set(spec)]


def needs_image_stats(spec: Mapping[str, Any]) -> bool:
    """True when the features depend on per-image statistics."""
    return feature_set(spec) != "rgb"


def stain_densities(rgb: torch.Tensor) -> torch.Tensor:
    """Haematoxylin and eosin densities ``(B, 2, H, W)`` of RGB ``(B, 3, H, W)`` in [0, 1].

    Optical density ``-log10((255 x + 1) / 256)`` per channel (so white is 0 and black finite),
    then the inverse stain matrix.
    """
    od = -torch.log10((rgb * 255.0 + 1.0) / 256.0)
    m = torch.as_tensor(OD_TO_STAIN[:, :2], dtype=rgb.dtype, device=rgb.device)  # (3, 2)
    return torch.einsum("bchw,cs->bshw", od, m)


def image_stats(rgb: torch.Tensor) -> torch.Tensor:
    """Per-image statistics ``(B, 4)``: H low/high, E low/high (see the module docstring).

    ``rgb`` is ``(B, 3, H, W)`` in [0, 1]; at most about 65 000 pixels per image are used
    (a regular stride), so this is cheap for any size.
    """
    b, _, h, w = rgb.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / 65536.0))))
    small = rgb[:, :, ::step, ::step].float()
    dens = stain_densities(small)
    od_sum = -torch.log10((small * 255.0 + 1.0) / 256.0).sum(dim=1)
    out = torch.empty((b, NUM_STATS), dtype=torch.float32, device=rgb.device)
    qs = torch.tensor([LOW_PERCENTILE / 100.0, HIGH_PERCENTILE / 100.0], device=rgb.device)
    for i in range(b):
        tissue = od_sum[i] > TISSUE_OD
        use = tissue if float(tissue.float().mean()) >= 0.01 else torch.ones_like(tissue)
        for s in range(2):
            values = dens[i, s][use]
            lo, hi = torch.quantile(values, qs).tolist()
            out[i, 2 * s] = lo
            out[i, 2 * s + 1] = max(hi, lo + MIN_SPREAD)
    return out


def thumbnail_stats(rgb_uint8: np.ndarray) -> torch.Tensor:
    """:func:`image_stats` of one ``(H, W, 3)`` uint8 image (a whole image's thumbnail) ``(1, 4)``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1)[None].float() / 255.0
    return image_stats(x)


def build_input(
    rgb: torch.Tensor, spec: Mapping[str, Any], stats: torch.Tensor | None = None
) -> torch.Tensor:
    """The network input for RGB ``(B, 3, H, W)`` in [0, 1] under ``spec``.

    ``stats`` ``(B, 4)`` or ``(1, 4)`` are the images' statistics (:func:`image_stats`); when
    None and the features need them, each batch item's own are used.
    """
    mean = torch.tensor(spec.get("mean", [0.5] * 3), dtype=rgb.dtype, device=rgb.device)
    std = torch.tensor(spec.get("std", [0.25] * 3), dtype=rgb.dtype, device=rgb.device)
    x = (rgb - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if not needs_image_stats(spec):
        return x
    if stats is None:
        stats = image_stats(rgb)
    stats = stats.to(device=rgb.device, dtype=rgb.dtype)
    lo = stats[:, 0::2].reshape(-1, 2, 1, 1)
    hi = stats[:, 1::2].reshape(-1, 2, 1, 1)
    dens = (stain_densities(rgb) - lo) / (hi - lo)
    return torch.cat([x, dens.clamp(*CLIP)], dim=1)
