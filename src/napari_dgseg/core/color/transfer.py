"""Reinhard colour transfer: match per-channel mean and std to a reference's statistics.

The transfer of Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025 (and Reinhard et al., "Color Transfer between Images", 2001), applied in l-alpha-beta (default) or
CIELAB, per channel ``c``::

    out_c = (x_c - mu_target_c) / sigma_target_c * sigma_ref_c + mu_ref_c

then back to RGB and clipped to ``[0, 1]``. The target statistics are arguments, not computed
inside :func:`transfer`, so a whole slide is normalized with one set of statistics (computed once
by :func:`napari_dgseg.core.color.tissue.image_color_stats`) and every tile gets the same mapping:
no seams.

:func:`normalize_colors` is the numpy front door (uint8/uint16/float in, same dtype out). uint16
is read by :mod:`napari_dgseg.core.imageprep`'s rule (robust percentiles of the whole image, so a
12-bit image is not read as nearly black) and the result, whose colours are the reference's, is
written over the full uint16 range.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from napari_dgseg.core.color.tissue import (
    colour_to_float,
    decide_colour_scaling,
    float_to_dtype,
    has_tissue,
    image_color_stats,
    prepare_image,
)
from napari_dgseg.core.color.transforms import (
    _MATS,
    LOG_EPS,
    STD_FLOOR,
    _apply,
    _check,
    _check_space,
    color_stats,
    from_space,
    to_space,
)
from napari_dgseg.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from numpy.typing import ArrayLike

__all__ = [
    "STD_FLOOR",
    "NormalizationSkippedWarning",
    "color_stats",
    "normalize_colors",
    "transfer",
]

#: Below this std in every channel a target is treated as flat (blank) and left unchanged.
FLAT_STD: float = 1e-3

#: Pixels processed at once by :func:`normalize_colors` (whole rows; bounds memory, and blocks
#: that stay in cache are faster than one pass over a huge image).
_BLOCK_PIXELS: int = 1 << 18


class NormalizationSkippedWarning(UserWarning):
    """Colour normalization was skipped (no tissue, or a flat image); the input is returned."""


def _as_stats(value: Tensor | ArrayLike, like: Tensor, name: str) -> Tensor:
    """Convert a ``(3,)`` or ``(..., 3)`` statistic to a tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(value, device=like.device).to(like.dtype)
    if t.ndim == 0 or t.shape[-1] != 3:
        raise InputError(
            f"{name} must have 3 values per image (shape (3,) or (B, 3)), got {tuple(t.shape)}."
        )
    return t


def _reinhard_transfer(
    rgb: Tensor, mu_t: Tensor, sd_t: Tensor, mu_r: Tensor, sd_r: Tensor
) -> Tensor:
    """l-alpha-beta transfer folded into one affine map of log-LMS (fewer full-image passes).

    With ``k = sd_r / sd_t``, ``lab' = k (lab - mu_t) + mu_r`` and ``lab = M_lab log10(LMS)``::

        log10(LMS') = A log10(LMS) + c,   A = M_lab^-1 diag(k) M_lab,   c = M_lab^-1 (mu_r - k mu_t)

    evaluated with natural logarithms: ``LMS' = exp(A ln(LMS) + ln(10) c)``. Mathematically
    identical to converting, matching and converting back (the tests compare both).
    """
    m_lab = _MATS["loglms_to_lab"].to(device=rgb.device, dtype=rgb.dtype)
    m_lab_inv = _MATS["lab_to_loglms"].to(device=rgb.device, dtype=rgb.dtype)
    k = sd_r / sd_t  # (..., 3)
    a = m_lab_inv @ (k[..., :, None] * m_lab)  # (..., 3, 3)
    c = (m_lab_inv @ (mu_r - k * mu_t)[..., None])[..., 0] * math.log(10.0)  # (..., 3)
    log_lms = torch.log(_apply(_MATS["rgb_to_lms"], rgb).clamp_min(LOG_EPS))
    mixed = torch.einsum("...ij,...jhw->...ihw", a, log_lms) + c[..., None, None]
    return _apply(_MATS["lms_to_rgb"], torch.exp(mixed)).clamp(0.0, 1.0)


def transfer(
    rgb: Tensor,
    target_mean: Tensor | ArrayLike,
    target_std: Tensor | ArrayLike,
    ref_mean: Tensor | ArrayLike,
    ref_std: Tensor | ArrayLike,
    space: str = "lab-reinhard",
) -> Tensor:
    """Map the colour statistics of ``rgb`` from the target's to the reference's.

    Parameters
    ----------
    rgb : Tensor, shape (..., 3, H, W)
        Floating RGB in ``[0, 1]`` (one tile, a batch, or a whole image).
    target_mean, target_std : Tensor or array, shape (3,) or (B, 3)
        Statistics of the image being normalized in ``space`` (for a slide: of the whole slide).
        ``target_std`` is floored at :data:`STD_FLOOR`.
    ref_mean, ref_std : Tensor or array, shape (3,) or (B, 3)
        Statistics of the reference in ``space``.
    space : str
        ``"lab-reinhard"`` or ``"cielab"``.

    Returns
    -------
    Tensor, shape (..., 3, H, W)
        Normalized RGB, clipped to ``[0, 1]``; same dtype and device as ``rgb``.
    """
    _check(rgb, "rgb")
    _check_space(space)
    mu_t = _as_stats(target_mean, rgb, "target_mean")
    sd_t = _as_stats(target_std, rgb, "target_std").clamp_min(STD_FLOOR)
    mu_r = _as_stats(ref_mean, rgb, "ref_mean")
    sd_r = _as_stats(ref_std, rgb, "ref_std")
    if space == "lab-reinhard":
        return _reinhard_transfer(rgb, mu_t, sd_t, mu_r, sd_r)
    lab = to_space(rgb, space)
    scaled = (lab - mu_t[..., None, None]) / sd_t[..., None, None]
    return from_space(scaled * sd_r[..., None, None] + mu_r[..., None, None], space)


def _reference_stats(
    reference: Any, space: str, tissue_only: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of ``reference``: an image array (tissue pixels only when ``tissue_only``), or
    a ``(mean, std)`` pair of 3 values each."""
    if isinstance(reference, (tuple, list)) and len(reference) == 2:
        try:
            mean = np.asarray(reference[0], dtype=np.float64)
            std = np.asarray(reference[1], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                "reference pair must be (mean, std) with 3 numbers each; "
                f"could not read it as numbers ({exc})."
            ) from None
        if mean.shape != (3,) or std.shape != (3,):
            raise InputError(
                "reference given as a pair must be (mean, std) with 3 values each, got shapes "
                f"{mean.shape} and {std.shape}; pass an image array instead if that is what you meant."
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
            raise InputError("reference (mean, std) must be finite with std > 0.")
        return mean, std
    if isinstance(reference, np.ndarray) or hasattr(reference, "__array__"):
        return image_color_stats(reference, space=space, tissue_only=tissue_only, name="reference")
    raise InputError(
        f"reference must be an image array (H, W, 3) or a (mean, std) pair, got "
        f"{type(reference).__name__}; read the file first (e.g. skimage.io.imread) or use "
        "`dgseg normalize INPUT --reference FILE`."
    )


def normalize_colors(
    image: np.ndarray,
    reference: np.ndarray | Sequence[ArrayLike],
    *,
    space: str = "lab-reinhard",
    tissue_only: bool = True,
) -> np.ndarray:
    """Transfer the colours of ``image`` to those of ``reference`` (Reinhard transfer).

    Statistics of both images are computed once on a downsampled copy (longer side <= 1024),
    from tissue pixels only when ``tissue_only`` (white background and black outside a fundus
    field of view are left out). An image without tissue, or a flat image, is returned unchanged
    with a :class:`NormalizationSkippedWarning`.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W)
        uint8, uint16 or float in ``[0, 1]``. Grey images are treated as RGB with equal channels
        (the output is RGB); an alpha channel is passed through unchanged.
    reference : ndarray or (mean, std)
        A reference image (same kinds as ``image``), or its statistics in ``space``: two
        sequences of 3 numbers.
    space : str
        ``"lab-reinhard"`` (default) or ``"cielab"``.
    tissue_only : bool
        Compute statistics on tissue pixels only (recommended for slides and fundus images).

    Returns
    -------
    ndarray, shape (H, W, 3) or (H, W, 4)
        The normalized image, same dtype and value range as ``image``.
    """
    _check_space(space)
    ref_mean, ref_std = _reference_stats(reference, space, tissue_only)
    colour, alpha = prepare_image(image, name="image")
    h, w = colour.shape[:2]
    skip = None
    if tissue_only and not has_tissue(colour):
        skip = "no tissue found in the image (blank or white background only)"
    else:
        tgt_mean, tgt_std = image_color_stats(
            colour, space=space, tissue_only=tissue_only, name="image"
        )
        if (tgt_std < FLAT_STD).all():
            skip = "the image is flat (one colour)"
    if skip is not None:
        warnings.warn(
            f"{skip}; colour normalization skipped, the image is returned unchanged.",
            NormalizationSkippedWarning,
            stacklevel=2,
        )
        out = np.array(np.broadcast_to(colour, (h, w, 3)))
    else:
        out = np.empty((h, w, 3), dtype=colour.dtype)
        scaling = decide_colour_scaling(colour)  # once per image: every block maps the same way
        rows = max(1, _BLOCK_PIXELS // w)
        for r0 in range(0, h, rows):
            block = colour_to_float(colour[r0 : r0 + rows], scaling)
            block = torch.from_numpy(block).permute(2, 0, 1)
            with torch.no_grad():
                res = transfer(block, tgt_mean, tgt_std, ref_mean, ref_std, space=space)
            out[r0 : r0 + rows] = float_to_dtype(res.permute(1, 2, 0).numpy(), colour.dtype)
    if alpha is not None:
        out = np.concatenate([out, alpha[..., None]], axis=-1)
    return out
