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
``rgb+vessel``
    The three RGB channels plus the white top-hat of the inverted green channel (vessels absorb
    green light most; the top-hat removes the slowly varying background: illumination, optic
    disc, macula), scaled by the image's own median and 99th percentile of that top-hat over the
    field of view. This is the per-image adaptive cue of the classical fundus baseline (green
    channel top-hat + Otsu; e.g. Zana & Klein, "Segmentation of vessel-like patterns using
    mathematical morphology and curvature evaluation", 2001), given to the network. The
    structuring element is a square of side ``2 r + 1`` with ``r =`` :data:`VESSEL_RADIUS` model
    pixels (inference resamples images to the model's scale first, so ``r`` is in the training
    images' pixels); grey opening is two max-pools, so the feature is cheap and runs on the GPU.

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
FEATURES = ("rgb", "rgb+stain", "rgb+vessel")
#: Channels the network receives per feature set.
FEATURE_CHANNELS = {"rgb": 3, "rgb+stain": 5, "rgb+vessel": 4}
#: Half-side of the ``rgb+vessel`` top-hat's square structuring element, in model pixels: a
#: little more than half the widest vessel of the training images (about 9 px at 384 px).
VESSEL_RADIUS = 6
#: A pixel belongs to the field of view when its brightest channel exceeds this (in [0, 1]).
FOV_LEVEL = 0.08
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


def vessel_tophat(rgb: torch.Tensor, radius: int = VESSEL_RADIUS) -> torch.Tensor:
    """White top-hat ``(B, 1, H, W)`` of the inverted green channel of RGB ``(B, 3, H, W)``.

    ``x - dilate(erode(x))`` with a square of side ``2 radius + 1`` (edge-replicated borders):
    bright where something thinner than the square is darker in green than its surround.
    """
    x = 1.0 - rgb[:, 1:2].float()
    k = 2 * max(1, int(radius)) + 1
    pad = k // 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    eroded = -torch.nn.functional.max_pool2d(-padded, k, stride=1)
    padded = torch.nn.functional.pad(eroded, (pad, pad, pad, pad), mode="replicate")
    opened = torch.nn.functional.max_pool2d(padded, k, stride=1)
    return (x - opened).clamp_min(0.0).to(rgb.dtype)


def _low_high(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """:data:`LOW_PERCENTILE` and :data:`HIGH_PERCENTILE` of ``values`` over ``mask`` (over every
    pixel when ``mask`` covers under 1 % of the image)."""
    use = mask if float(mask.float().mean()) >= 0.01 else torch.ones_like(mask)
    picked = values[use].float()
    if picked.numel() > 2_000_000:  # torch.quantile's input limit; a stride keeps it exact enough
        picked = picked[:: int(np.ceil(picked.numel() / 2_000_000))]
    qs = torch.tensor([LOW_PERCENTILE / 100.0, HIGH_PERCENTILE / 100.0], device=values.device)
    lo, hi = torch.quantile(picked, qs).tolist()
    return lo, hi


def vessel_stats(rgb: torch.Tensor, radius: int = VESSEL_RADIUS) -> torch.Tensor:
    """Per-image ``rgb+vessel`` statistics ``(B, 2)``: top-hat median and 99th percentile.

    Over field-of-view pixels (brightest channel above :data:`FOV_LEVEL`; all pixels when the
    field of view is under 1 % of the image). For a strided thumbnail, pass ``radius`` divided
    by the stride.
    """
    th = vessel_tophat(rgb, radius)[:, 0]
    fov = rgb.float().amax(dim=1) > FOV_LEVEL
    out = torch.empty((rgb.shape[0], 2), dtype=torch.float32, device=rgb.device)
    for i in range(rgb.shape[0]):
        lo, hi = _low_high(th[i], fov[i])
        out[i, 0] = lo
        out[i, 1] = max(hi, lo + MIN_VESSEL_SPREAD)
    return out


#: Smallest top-hat ``hi - lo`` (green-channel units in [0, 1]).
MIN_VESSEL_SPREAD = 0.01


def image_stats(
    rgb: torch.Tensor, spec: Mapping[str, Any] | None = None, stride: int = 1
) -> torch.Tensor:
    """Per-image statistics of the spec's features (default ``rgb+stain``).

    ``rgb+stain``: ``(B, 4)``, H low/high, E low/high (see the module docstring); at most about
    65 000 pixels per image are used (a regular stride), so this is cheap for any size.
    ``rgb+vessel``: ``(B, 2)`` (:func:`vessel_stats`); ``stride`` is the stride of a thumbnail
    ``rgb`` was taken from, so the top-hat's square shrinks with it.
    """
    if spec is not None and feature_set(spec) == "rgb+vessel":
        return vessel_stats(rgb, max(1, round(VESSEL_RADIUS / max(1, stride))))
    b, _, h, w = rgb.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / 65536.0))))
    small = rgb[:, :, ::step, ::step].float()
    dens = stain_densities(small)
    od_sum = -torch.log10((small * 255.0 + 1.0) / 256.0).sum(dim=1)
    out = torch.empty((b, NUM_STATS), dtype=torch.float32, device=rgb.device)
    for i in range(b):
        tissue = od_sum[i] > TISSUE_OD
        for s in range(2):
            lo, hi = _low_high(dens[i, s], tissue)
            out[i, 2 * s] = lo
            out[i, 2 * s + 1] = max(hi, lo + MIN_SPREAD)
    return out


def thumbnail_stats(
    rgb_uint8: np.ndarray, spec: Mapping[str, Any] | None = None, stride: int = 1
) -> torch.Tensor:
    """:func:`image_stats` of one ``(H, W, 3)`` uint8 image (a whole image's thumbnail)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1)[None].float() / 255.0
    return image_stats(x, spec, stride)


def build_input(
    rgb: torch.Tensor, spec: Mapping[str, Any], stats: torch.Tensor | None = None
) -> torch.Tensor:
    """The network input for RGB ``(B, 3, H, W)`` in [0, 1] under ``spec``.

    ``stats`` ``(B, S)`` or ``(1, S)`` are the images' statistics (:func:`image_stats`); when
    None and the features need them, each batch item's own are used.
    """
    mean = torch.tensor(spec.get("mean", [0.5] * 3), dtype=rgb.dtype, device=rgb.device)
    std = torch.tensor(spec.get("std", [0.25] * 3), dtype=rgb.dtype, device=rgb.device)
    x = (rgb - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if not needs_image_stats(spec):
        return x
    if stats is None:
        stats = image_stats(rgb, spec)
    stats = stats.to(device=rgb.device, dtype=rgb.dtype)
    if feature_set(spec) == "rgb+vessel":
        lo, hi = stats[:, 0].reshape(-1, 1, 1, 1), stats[:, 1].reshape(-1, 1, 1, 1)
        vessel = (vessel_tophat(rgb) - lo) / (hi - lo)
        return torch.cat([x, vessel.clamp(*CLIP)], dim=1)
    lo = stats[:, 0::2].reshape(-1, 2, 1, 1)
    hi = stats[:, 1::2].reshape(-1, 2, 1, 1)
    dens = (stain_densities(rgb) - lo) / (hi - lo)
    return torch.cat([x, dens.clamp(*CLIP)], dim=1)
