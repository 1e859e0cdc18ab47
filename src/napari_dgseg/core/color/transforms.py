"""Colour-space transforms in torch: RGB <-> Reinhard l-alpha-beta and RGB <-> CIELAB.

All functions take float RGB in ``[0, 1]`` with the channel axis third from the end, so both a
single image ``(3, H, W)`` and a batch ``(B, 3, H, W)`` work (any leading dimensions do). They run
on every device torch supports, keep the input's floating dtype (``float32`` in, ``float32`` out;
``float64`` for ``gradcheck``) and are differentiable. The inverse transforms clip to ``[0, 1]``.

Reinhard l-alpha-beta (Reinhard, Ashikhmin, Gooch & Shirley, "Color Transfer between Images", 2001; Shah et al. 2025 section II-A)::

    LMS = M_lms @ RGB,     M_lms = [[.3811, .5783, .0402], [.1967, .7244, .0782], [.0241, .1288, .8444]]
    lab = diag(1/sqrt3, 1/sqrt6, 1/sqrt2) @ [[1, 1, 1], [1, 1, -2], [1, -1, 0]] @ log10(max(LMS, eps))

and back with the inverse matrices and ``10 ** x``. ``M_lms`` has only positive entries, so an LMS
value reaches zero only for pure black; the ``eps`` guard (``1e-6``, far below the smallest non-zero
LMS value of an 8-bit colour, ``9.5e-5``) turns ``log10(0)`` into a finite number and black comes
back as black to within ``1e-6``.

CIELAB uses the sRGB transfer curve and the D65 white point; ``L`` is in ``[0, 100]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from napari_dgseg.core.errors import InputError

__all__ = [
    "STD_FLOOR",
    "color_stats",
    "SPACES",
    "CielabToRgb",
    "LabReinhardToRgb",
    "RgbToCielab",
    "RgbToLabReinhard",
    "cielab_to_rgb",
    "from_space",
    "lab_reinhard_to_rgb",
    "rgb_to_cielab",
    "rgb_to_lab_reinhard",
    "to_space",
]

#: Colour spaces understood by :func:`to_space` / :func:`from_space`.
SPACES: tuple[str, ...] = ("lab-reinhard", "cielab")

#: Default guard added before ``log10`` in the Reinhard transform.
LOG_EPS: float = 1e-6

_RGB_TO_LMS = (
    (0.3811, 0.5783, 0.0402),
    (0.1967, 0.7244, 0.0782),
    (0.0241, 0.1288, 0.8444),
)
_S3, _S6, _S2 = 1.0 / math.sqrt(3.0), 1.0 / math.sqrt(6.0), 1.0 / math.sqrt(2.0)
_LOGLMS_TO_LAB = (
    (_S3, _S3, _S3),
    (_S6, _S6, -2.0 * _S6),
    (_S2, -_S2, 0.0),
)
# sRGB (linear) -> CIE XYZ, D65 (IEC 61966-2-1), and the D65 reference white.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def _matrices() -> dict[str, torch.Tensor]:
    """Forward and inverse matrices in float64 (inverted once, cast per call)."""
    m_lms = torch.tensor(_RGB_TO_LMS, dtype=torch.float64)
    m_lab = torch.tensor(_LOGLMS_TO_LAB, dtype=torch.float64)
    m_xyz = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    return {
        "rgb_to_lms": m_lms,
        "lms_to_rgb": torch.linalg.inv(m_lms),
        "loglms_to_lab": m_lab,
        "lab_to_loglms": torch.linalg.inv(m_lab),
        "rgb_to_xyz": m_xyz,
        "xyz_to_rgb": torch.linalg.inv(m_xyz),
    }


_MATS = _matrices()


def _check(image: Tensor, name: str) -> None:
    """Validate a colour tensor: floating point, channel axis of size 3 third from the end."""
    if not isinstance(image, torch.Tensor):
        raise InputError(
            f"{name} must be a torch.Tensor of shape (3, H, W) or (B, 3, H, W), got "
            f"{type(image).__name__}; convert with torch.from_numpy(array).permute(2, 0, 1)."
        )
    if image.ndim < 3 or image.shape[-3] != 3:
        raise InputError(
            f"{name} must have shape (3, H, W) or (B, 3, H, W) (channels first, 3 channels), got "
            f"{tuple(image.shape)}; move the channel axis with .permute(...) and drop alpha."
        )
    if not image.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor (RGB in [0, 1]), got {image.dtype}; "
            "convert uint8 images with .float() / 255."
        )


def _apply(matrix: Tensor, image: Tensor) -> Tensor:
    """Multiply every pixel's 3-vector by ``matrix``: ``(..., 3, H, W) -> (..., 3, H, W)``."""
    m = matrix.to(device=image.device, dtype=image.dtype)
    return torch.einsum("ij,...jhw->...ihw", m, image)


def rgb_to_lab_reinhard(rgb: Tensor, eps: float = LOG_EPS) -> Tensor:
    """Convert RGB to Reinhard's l-alpha-beta space.

    Parameters
    ----------
    rgb : Tensor, shape (..., 3, H, W)
        Floating RGB in ``[0, 1]``.
    eps : float
        Lower bound applied to LMS before ``log10`` (guards ``log10(0)`` for black pixels).

    Returns
    -------
    Tensor, shape (..., 3, H, W)
        l, alpha, beta channels, same dtype and device as ``rgb``.
    """
    _check(rgb, "rgb")
    lms = _apply(_MATS["rgb_to_lms"], rgb)
    log_lms = torch.log10(lms.clamp_min(eps))
    return _apply(_MATS["loglms_to_lab"], log_lms)


def lab_reinhard_to_rgb(lab: Tensor) -> Tensor:
    """Convert Reinhard l-alpha-beta back to RGB, clipped to ``[0, 1]``.

    Parameters
    ----------
    lab : Tensor, shape (..., 3, H, W)
        l, alpha, beta channels as produced by :func:`rgb_to_lab_reinhard`.

    Returns
    -------
    Tensor, shape (..., 3, H, W)
        RGB in ``[0, 1]``, same dtype and device as ``lab``.
    """
    _check(lab, "lab")
    log_lms = _apply(_MATS["lab_to_loglms"], lab)
    lms = torch.pow(10.0, log_lms)
    return _apply(_MATS["lms_to_rgb"], lms).clamp(0.0, 1.0)


def _srgb_to_linear(c: Tensor) -> Tensor:
    safe = ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(c > 0.04045, safe, c / 12.92)


def _linear_to_srgb(c: Tensor) -> Tensor:
    safe = 1.055 * c.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(c > 0.0031308, safe, 12.92 * c)


def _lab_f(t: Tensor) -> Tensor:
    cube = t.clamp_min(_DELTA**3) ** (1.0 / 3.0)
    return torch.where(t > _DELTA**3, cube, t / (3.0 * _DELTA**2) + 4.0 / 29.0)


def _lab_f_inv(f: Tensor) -> Tensor:
    return torch.where(f > _DELTA, f**3, 3.0 * _DELTA**2 * (f - 4.0 / 29.0))


def _white(image: Tensor) -> Tensor:
    return torch.tensor(_D65, device=image.device, dtype=image.dtype).view(3, 1, 1)


def rgb_to_cielab(rgb: Tensor) -> Tensor:
    """Convert sRGB to CIELAB (D65 white, 2-degree observer).

    Parameters
    ----------
    rgb : Tensor, shape (..., 3, H, W)
        Floating sRGB in ``[0, 1]`` (gamma encoded).

    Returns
    -------
    Tensor, shape (..., 3, H, W)
        ``L`` in ``[0, 100]``, ``a`` and ``b`` roughly in ``[-128, 127]``.
    """
    _check(rgb, "rgb")
    xyz = _apply(_MATS["rgb_to_xyz"], _srgb_to_linear(rgb)) / _white(rgb)
    f = _lab_f(xyz)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def cielab_to_rgb(lab: Tensor) -> Tensor:
    """Convert CIELAB (D65) back to sRGB, clipped to ``[0, 1]``.

    Parameters
    ----------
    lab : Tensor, shape (..., 3, H, W)
        ``L, a, b`` channels as produced by :func:`rgb_to_cielab`.

    Returns
    -------
    Tensor, shape (..., 3, H, W)
        sRGB in ``[0, 1]``.
    """
    _check(lab, "lab")
    big_l, a, b = lab.unbind(-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-3)
    xyz = _lab_f_inv(f) * _white(lab)
    linear = _apply(_MATS["xyz_to_rgb"], xyz)
    return _linear_to_srgb(linear).clamp(0.0, 1.0)


def _check_space(space: str) -> str:
    if space not in SPACES:
        raise InputError(f"unknown colour space {space!r}; choose one of {', '.join(SPACES)}.")
    return space


def to_space(rgb: Tensor, space: str) -> Tensor:
    """Convert RGB ``(..., 3, H, W)`` to ``space`` (one of :data:`SPACES`)."""
    if _check_space(space) == "lab-reinhard":
        return rgb_to_lab_reinhard(rgb)
    return rgb_to_cielab(rgb)


def from_space(lab: Tensor, space: str) -> Tensor:
    """Convert ``(..., 3, H, W)`` values in ``space`` back to RGB in ``[0, 1]``."""
    if _check_space(space) == "lab-reinhard":
        return lab_reinhard_to_rgb(lab)
    return cielab_to_rgb(lab)


class RgbToLabReinhard(nn.Module):
    """Module form of :func:`rgb_to_lab_reinhard`."""

    def __init__(self, eps: float = LOG_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, rgb: Tensor) -> Tensor:
        return rgb_to_lab_reinhard(rgb, eps=self.eps)


class LabReinhardToRgb(nn.Module):
    """Module form of :func:`lab_reinhard_to_rgb`."""

    def forward(self, lab: Tensor) -> Tensor:
        return lab_reinhard_to_rgb(lab)


class RgbToCielab(nn.Module):
    """Module form of :func:`rgb_to_cielab`."""

    def forward(self, rgb: Tensor) -> Tensor:
        return rgb_to_cielab(rgb)


class CielabToRgb(nn.Module):
    """Module form of :func:`cielab_to_rgb`."""

    def forward(self, lab: Tensor) -> Tensor:
        return cielab_to_rgb(lab)


#: Smallest standard deviation used as a divisor (guards a flat channel against division by zero).
STD_FLOOR: float = 1e-6


def color_stats(
    rgb: Tensor, space: str = "lab-reinhard", mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-image mean and standard deviation of each channel in ``space``.

    Parameters
    ----------
    rgb : Tensor, shape (..., 3, H, W)
        Floating RGB in ``[0, 1]``; e.g. ``(B, 3, H, W)`` or ``(3, H, W)``.
    space : str
        ``"lab-reinhard"`` or ``"cielab"``.
    mask : Tensor, shape (..., H, W), optional
        Pixels to use (bool, or float weights in ``[0, 1]``). An image whose mask is empty falls
        back to all its pixels.

    Returns
    -------
    mean, std : Tensor, shape (..., 3)
        Population statistics (``ddof=0``); ``std`` is floored at :data:`STD_FLOOR`.
    """
    lab = to_space(rgb, space)
    lead = lab.shape[:-3]
    if mask is None:
        mean = lab.mean(dim=(-2, -1))
        var = lab.var(dim=(-2, -1), unbiased=False)
        return mean, var.sqrt().clamp_min(STD_FLOOR)
    if mask.shape != lab.shape[:-3] + lab.shape[-2:]:
        raise InputError(
            f"mask must have shape {tuple(lead) + tuple(lab.shape[-2:])} (one value per pixel), "
            f"got {tuple(mask.shape)}."
        )
    w = mask.to(device=lab.device, dtype=lab.dtype)
    empty = w.sum(dim=(-2, -1), keepdim=True) <= 0
    w = torch.where(empty, torch.ones_like(w), w)
    count = w.sum(dim=(-2, -1)).unsqueeze(-1)  # (..., 1)
    w = w.unsqueeze(-3)  # (..., 1, H, W)
    mean = (lab * w).sum(dim=(-2, -1)) / count
    centred = lab - mean[..., None, None]
    var = (centred.square() * w).sum(dim=(-2, -1)) / count
    return mean, var.sqrt().clamp_min(STD_FLOOR)
