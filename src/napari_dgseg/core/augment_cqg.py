"""Batched augmentations and loss of colour-quality generalization (CQG; Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025).

For a batch ``x`` with labels ``y``::

    x1, y1 = geometric(x, y, g)          # flips, 90-degree turns, shear/shift/scale/rotate, elastic
    x2 = photometric(x1, g)              # blur, sharpen, Gaussian noise, brightness/contrast, RGB shift
    loss = 0.3 Seg(y1, S(x1)) + 0.7 Seg(y1, S(x2)) + 1.0 MSE(S(x1), S(x2))

Everything runs on whole batches in torch (one ``grid_sample`` for all geometry, depthwise
convolutions for blur/sharpen, per-image parameters as tensors): there is no Python loop over
images. Randomness comes only from the ``torch.Generator`` passed in, so a seed reproduces a batch
exactly. Draws are made on the generator's device and moved to the batch's device; pass a
generator on the batch's device (``torch.Generator(device="cuda")``) to avoid the copy.

Choices where the paper is silent:

* Geometry is resampled with **reflection padding for both image and labels**: the mirrored image
  content outside the frame keeps its mirrored, correct labels, so no ignore index is needed and
  labels only ever contain values that were in the input. Images are sampled bilinearly, labels
  with nearest neighbour.
* 90-degree turns of non-square batches are limited to 0 and 180 degrees (a 90-degree turn would
  change the shape of the batch).
* The consistency term is the MSE between the raw logits of both views.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_dgseg.core.errors import InputError

__all__ = [
    "CQGWeights",
    "GeometricParams",
    "PhotometricParams",
    "cqg_loss",
    "cqg_views",
    "geometric",
    "photometric",
]


@dataclass(frozen=True)
class GeometricParams:
    """Probabilities and ranges of the geometric augmentation (parameters of the sampling map).

    Attributes
    ----------
    p_hflip, p_vflip : float
        Probability of a horizontal / vertical flip per image.
    p_rot90 : float
        Probability of a random turn by 90, 180 or 270 degrees (180 only for non-square batches).
    p_affine : float
        Probability of the random affine part (rotation, shear, scale, shift) per image.
    max_rotate_deg, max_shear_deg : float
        Rotation and shear angles are drawn uniformly in ``[-max, max]`` degrees.
    scale : tuple of float
        Zoom factor range.
    max_shift : float
        Shift, as a fraction of width/height, drawn uniformly in ``[-max_shift, max_shift]``.
    p_elastic : float
        Probability of the elastic deformation per image.
    elastic_alpha : float
        Largest displacement of a control point, in pixels (mild by default).
    elastic_spacing : int
        Distance between the control points of the smooth displacement field, in pixels.
    """

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.7
    max_rotate_deg: float = 30.0
    max_shear_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.0625
    p_elastic: float = 0.3
    elastic_alpha: float = 3.0
    elastic_spacing: int = 32


@dataclass(frozen=True)
class PhotometricParams:
    """Probabilities and ranges of the photometric (colour and quality) augmentation.

    Attributes
    ----------
    p_blur : float
        Probability of a Gaussian blur; sigma uniform in ``blur_sigma`` (pixels).
    p_sharpen : float
        Probability of unsharp masking ``x + a (x - blur_1(x))``; ``a`` uniform in ``sharpen_amount``.
    p_noise : float
        Probability of additive Gaussian noise; its std uniform in ``noise_std``.
    p_brightness_contrast : float
        Probability of ``(x - m) c + m + b`` with ``m`` the image mean, ``c`` uniform in
        ``[1 - contrast, 1 + contrast]`` and ``b`` uniform in ``[-brightness, brightness]``.
    p_rgb_shift : float
        Probability of adding a per-channel shift uniform in ``[-rgb_shift, rgb_shift]``.
    """

    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    p_sharpen: float = 0.3
    sharpen_amount: tuple[float, float] = (0.2, 1.0)
    p_noise: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.04)
    p_brightness_contrast: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    p_rgb_shift: float = 0.3
    rgb_shift: float = 0.08


@dataclass(frozen=True)
class CQGWeights:
    """Weights of the CQG loss terms (Shah et al. 2025: lambda1 = 0.3, lambda2 = 0.7, lambda3 = 1.0)."""

    seg1: float = 0.3
    seg2: float = 0.7
    consistency: float = 1.0


def _check_batch(x: Tensor, y: Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise InputError(
            "x must be a float tensor of shape (B, C, H, W) with values in [0, 1], got "
            f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}."
        )
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        raise InputError(
            f"labels must be an integer tensor (B, H, W), got {getattr(y, 'dtype', type(y))}."
        )
    if y.ndim not in (3, 4) or y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]:
        raise InputError(
            f"labels must have shape (B, H, W) or (B, K, H, W) matching x {tuple(x.shape)}, got "
            f"{tuple(y.shape)}."
        )


def _uniform(
    g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, like: Tensor
) -> Tensor:
    """Uniform draws in ``[lo, hi)`` made on the generator's device, returned on ``like``'s."""
    u = torch.rand(shape, generator=g, device=g.device, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _chance(g: torch.Generator, n: int, p: float, like: Tensor) -> Tensor:
    """Boolean ``(n,)``: True with probability ``p`` (always False for ``p <= 0``)."""
    return _uniform(g, (n,), 0.0, 1.0, like) < p


def _sampling_grid(x: Tensor, g: torch.Generator, params: GeometricParams) -> Tensor:
    """One ``(B, H, W, 2)`` grid for ``grid_sample`` holding all geometric draws of the batch."""
    b, _, h, w = x.shape
    ones, zeros = (
        torch.ones(b, dtype=x.dtype, device=x.device),
        torch.zeros(b, dtype=x.dtype, device=x.device),
    )
    # Flips.
    fx = torch.where(_chance(g, b, params.p_hflip, x), -ones, ones)
    fy = torch.where(_chance(g, b, params.p_vflip, x), -ones, ones)
    # 90-degree turns (exact integer cos/sin).
    turns = torch.randint(1, 4 if h == w else 2, (b,), generator=g, device=g.device).to(x.device)
    turns = turns * (2 if h != w else 1)
    turns = torch.where(_chance(g, b, params.p_rot90, x), turns, torch.zeros_like(turns))
    cos_k = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=x.dtype, device=x.device)[turns]
    sin_k = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=x.dtype, device=x.device)[turns]
    # Affine part: rotation, shear, scale, shift.
    use_aff = _chance(g, b, params.p_affine, x)
    rot = torch.deg2rad(_uniform(g, (b,), -params.max_rotate_deg, params.max_rotate_deg, x))
    shear = torch.deg2rad(_uniform(g, (b,), -params.max_shear_deg, params.max_shear_deg, x))
    scale = _uniform(g, (b,), params.scale[0], params.scale[1], x)
    shift = _uniform(g, (b, 2), -params.max_shift, params.max_shift, x)
    rot, shear = torch.where(use_aff, rot, zeros), torch.where(use_aff, shear, zeros)
    scale = torch.where(use_aff, scale, ones)
    shift = torch.where(use_aff[:, None], shift, torch.zeros_like(shift))

    def mat(a: Tensor, bb: Tensor, c: Tensor, d: Tensor) -> Tensor:
        return torch.stack((torch.stack((a, bb), -1), torch.stack((c, d), -1)), -2)  # (B, 2, 2)

    flip = mat(fx, zeros, zeros, fy)
    turn = mat(cos_k, -sin_k, sin_k, cos_k)
    rotate = mat(torch.cos(rot), -torch.sin(rot), torch.sin(rot), torch.cos(rot))
    shear_m = mat(ones, torch.tan(shear), zeros, ones)
    zoom = mat(1.0 / scale, zeros, zeros, 1.0 / scale)
    pix = flip @ turn @ rotate @ shear_m @ zoom  # pixel-space (centred) output -> input map
    half = torch.tensor([w / 2.0, h / 2.0], dtype=x.dtype, device=x.device)
    norm = pix * half[None, None, :] / half[None, :, None]  # D^-1 A D with D = diag(w/2, h/2)
    theta = torch.cat((norm, (2.0 * shift)[..., None]), dim=-1)  # shift is a fraction of size
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    # Mild elastic deformation: smooth field from random control points, bicubic upsampling.
    use_el = _chance(g, b, params.p_elastic, x)
    gh = max(2, math.ceil(h / params.elastic_spacing) + 1)
    gw = max(2, math.ceil(w / params.elastic_spacing) + 1)
    coarse = _uniform(g, (b, 2, gh, gw), -1.0, 1.0, x)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    field = field * params.elastic_alpha * use_el.to(x.dtype)[:, None, None, None]
    field = field.permute(0, 2, 3, 1) * (2.0 / torch.tensor([w, h], dtype=x.dtype, device=x.device))
    return grid + field


def geometric(
    x: Tensor,
    y: Tensor | None,
    generator: torch.Generator,
    params: GeometricParams = GeometricParams(),
) -> tuple[Tensor, Tensor | None]:
    """Random flips, 90-degree turns, affine (rotate, shear, scale, shift) and elastic warps.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Float images in ``[0, 1]``.
    y : Tensor, shape (B, H, W) or (B, K, H, W), or None
        Integer labels (any integer dtype; kept). Transformed with the same map as ``x``.
    generator : torch.Generator
        Source of all randomness.
    params : GeometricParams
        Probabilities and ranges.

    Returns
    -------
    x1 : Tensor, shape (B, C, H, W)
        Bilinear resampling, reflection padding.
    y1 : Tensor or None, same shape and dtype as ``y``
        Nearest-neighbour resampling, reflection padding (values are a subset of ``y``'s).
    """
    _check_batch(x, y)
    grid = _sampling_grid(x, generator, params)
    x1 = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x1 = x1.clamp(0.0, 1.0)
    if y is None:
        return x1, None
    y4 = y[:, None] if y.ndim == 3 else y
    # float64 keeps every integer label up to 2**53 exact through the nearest-neighbour sampling.
    # (MPS has no float64; there float32 keeps labels exact up to 2**24.)
    ftype = torch.float32 if x.device.type == "mps" else torch.float64
    yf = F.grid_sample(
        y4.to(ftype), grid.to(ftype), mode="nearest", padding_mode="reflection", align_corners=False
    )
    y1 = yf.round().to(y.dtype)
    return x1, (y1[:, 0] if y.ndim == 3 else y1)


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``(B, 2 radius + 1)``; sigma near 0 gives a delta."""
    pos = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-(pos[None, :] ** 2) / (2.0 * s**2))
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Per-image separable Gaussian blur by depthwise convolution (replicate padding)."""
    b, c, h, w = x.shape
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (B*C, K)
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, k[:, None, :, None], groups=b * c)
    flat = F.conv2d(flat, k[:, None, None, :], groups=b * c)
    return flat.reshape(b, c, h, w)


def photometric(
    x: Tensor, generator: torch.Generator, params: PhotometricParams = PhotometricParams()
) -> Tensor:
    """Random blur, sharpening, Gaussian noise, brightness/contrast and RGB shift, per image.

    Geometry is untouched: every operation is pointwise or a small symmetric blur. With all
    probabilities 0 the output equals the input exactly.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Float images in ``[0, 1]``.
    generator : torch.Generator
        Source of all randomness.
    params : PhotometricParams
        Probabilities and ranges.

    Returns
    -------
    Tensor, shape (B, C, H, W)
        Clipped to ``[0, 1]``.
    """
    _check_batch(x)
    b, c = x.shape[:2]
    g = generator
    radius = max(1, math.ceil(3.0 * max(params.blur_sigma[1], 1.0)))
    out = x
    # Blur.
    use = _chance(g, b, params.p_blur, x)
    sigma = _uniform(g, (b,), params.blur_sigma[0], params.blur_sigma[1], x)
    if bool(use.any()):
        out = torch.where(use[:, None, None, None], _blur(out, sigma, radius), out)
    # Sharpen (unsharp masking with sigma 1).
    use = _chance(g, b, params.p_sharpen, x)
    amount = _uniform(g, (b,), params.sharpen_amount[0], params.sharpen_amount[1], x)
    if bool(use.any()):
        soft = _blur(out, torch.ones_like(amount), radius)
        sharp = out + amount[:, None, None, None] * (out - soft)
        out = torch.where(use[:, None, None, None], sharp, out)
    # Gaussian noise.
    use = _chance(g, b, params.p_noise, x)
    std = _uniform(g, (b,), params.noise_std[0], params.noise_std[1], x)
    if bool(use.any()):
        noise = torch.randn(out.shape, generator=g, device=g.device, dtype=torch.float32)
        noisy = out + std[:, None, None, None] * noise.to(device=x.device, dtype=x.dtype)
        out = torch.where(use[:, None, None, None], noisy, out)
    # Brightness / contrast.
    use = _chance(g, b, params.p_brightness_contrast, x)
    contrast = _uniform(g, (b,), 1.0 - params.contrast, 1.0 + params.contrast, x)
    bright = _uniform(g, (b,), -params.brightness, params.brightness, x)
    if bool(use.any()):
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        bc = (out - mean) * contrast[:, None, None, None] + mean + bright[:, None, None, None]
        out = torch.where(use[:, None, None, None], bc, out)
    # RGB shift.
    use = _chance(g, b, params.p_rgb_shift, x)
    shift = _uniform(g, (b, c), -params.rgb_shift, params.rgb_shift, x)
    if bool(use.any()):
        out = torch.where(use[:, None, None, None], out + shift[:, :, None, None], out)
    return out.clamp(0.0, 1.0)


def cqg_views(
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    geometric_params: GeometricParams = GeometricParams(),
    photometric_params: PhotometricParams = PhotometricParams(),
) -> tuple[Tensor, Tensor, Tensor]:
    """The two CQG inputs: ``x1 = geometric(x)``, ``x2 = photometric(x1)``, and their labels.

    The one place every family's CQG training draws its two views: the random draws use the
    CPU ``generator`` (so a run is reproducible on any device) and the views come back on the
    device of ``x``.

    Returns
    -------
    x1, x2 : Tensor, shape (B, C, H, W)
    y1 : Tensor, shape of ``y``
        Labels of both views (the photometric step does not move pixels).
    """
    device = x.device
    x1, y1 = geometric(x.cpu(), y.cpu(), generator, geometric_params)
    x2 = photometric(x1, generator, photometric_params)
    return x1.to(device), x2.to(device), cast(Tensor, y1).to(device)


def cqg_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    seg_loss_fn: Callable[[Tensor, Tensor], Tensor],
    weights: CQGWeights = CQGWeights(),
) -> tuple[Tensor, dict[str, float]]:
    """CQG loss ``w1 Seg(x1) + w2 Seg(x2) + w3 MSE(logits1, logits2)``.

    Parameters
    ----------
    logits1, logits2 : Tensor, shape (B, K, H, W)
        Raw model outputs for the geometric view and the geometric + photometric view.
    target : Tensor
        Labels of both views, as ``seg_loss_fn`` expects them (e.g. ``(B, H, W)`` long).
    seg_loss_fn : callable
        ``seg_loss_fn(logits, target) -> scalar`` (Shah et al. 2025: Dice + cross-entropy).
    weights : CQGWeights
        ``seg1``, ``seg2``, ``consistency`` (default 0.3, 0.7, 1.0).

    Returns
    -------
    loss : Tensor, scalar
        Differentiable total.
    parts : dict of str to float
        ``seg1``, ``seg2``, ``consistency`` (unweighted) and ``total``.
    """
    if logits1.shape != logits2.shape:
        raise InputError(
            f"logits1 and logits2 must have the same shape, got {tuple(logits1.shape)} and "
            f"{tuple(logits2.shape)}."
        )
    seg1 = seg_loss_fn(logits1, target)
    seg2 = seg_loss_fn(logits2, target)
    consistency = F.mse_loss(logits1, logits2)
    total = weights.seg1 * seg1 + weights.seg2 * seg2 + weights.consistency * consistency
    parts = {
        "seg1": float(seg1.detach()),
        "seg2": float(seg2.detach()),
        "consistency": float(consistency.detach()),
        "total": float(total.detach()),
    }
    return total, parts
