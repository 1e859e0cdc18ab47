"""Colour normalizers behind one interface: fit statistics, then transform torch batches.

Every method answers the same three questions, so that every DCIN mode (``gris``, ``lris``,
``full``, ``reference``) works with every method:

* :meth:`Normalizer.fit` - statistics of a set of colour samples (the tissue pixels of a target
  image or slide, of a reference image, or the bins of a stored colour histogram with their
  counts as weights). Statistics are a flat float64 vector, so a reference bank can store them
  as one ``(N, D)`` tensor per method;
* :meth:`Normalizer.branch` - a callable that maps a torch batch ``(B, 3, H, W)`` (RGB in
  ``[0, 1]``, any device) from the target's statistics to the reference's. It is built once
  per image or slide and applied to every tile (no seams);
* :attr:`Normalizer.name` - how provenance and the command line call it.

Methods (:data:`METHODS`):

``reinhard``
    Reinhard et al., "Color Transfer between Images", 2001 (as used by Shah, Fukuda & Cap,
    "Color-Quality Invariance for Robust Medical Image Segmentation", 2025): mean and std of all
    tissue pixels in l-alpha-beta. Depends on *how much* of each tissue type is in view: an
    image with few nuclei has a pinker mean and a smaller spread than a dense training tile, so
    matching them darkens the stroma.
``reinhard-bounded``
    The same statistics, but the per-channel std ratio ``sigma_ref / sigma_target`` is clipped
    to ``[1 / STD_RATIO_BOUND, STD_RATIO_BOUND]`` and the mean shift to ``MEAN_SHIFT_BOUND``
    target standard deviations, so a composition difference can move colours only so far.
``balanced``
    Reinhard on composition-balanced statistics: the tissue pixels are split into a dark and a
    light class by Otsu's threshold on the lightness ``l``; the statistics are those of a 50/50
    mixture of the two classes (mean ``(m1 + m2) / 2``, variance ``(v1 + v2) / 2 + ((m1 - m2) /
    2)^2``), which do not change when one class covers 5 % or 60 % of the tissue. With fewer
    than ``MIN_CLASS_FRACTION`` of the tissue in a class it falls back to ``reinhard``.
``macenko``
    Macenko et al., "A method for normalizing histology slides for quantitative analysis",
    2009: two stain vectors from the angular 1st/99th percentiles in the plane of the two main
    optical-density directions, concentrations by least squares, each stain scaled so its 99th
    concentration percentile matches the reference's, re-rendered with the reference's vectors.
    The whole map is one 3 x 3 matrix in optical density (``OD' = V_ref diag(s) V_tgt^+ OD``).
    Percentiles of each stain's own concentration do not depend on how much of the other stain
    is in view. Meant for H&E; a single-stain image falls back to ``reinhard``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from napari_dgseg.core.color.transforms import _MATS, LOG_EPS, STD_FLOOR, _apply
from napari_dgseg.core.errors import InputError

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Normalizer",
    "get_normalizer",
    "histogram_samples",
    "identity",
    "lab_samples",
    "tissue_samples",
]

Branch = Callable[[Tensor], Tensor]

#: Normalization methods, in the order benchmarks list them.
METHODS: tuple[str, ...] = ("reinhard", "reinhard-bounded", "balanced", "macenko")

#: The method ``auto`` uses (chosen on the training renderer's domains, see docs/dcin.md).
DEFAULT_METHOD: str = "reinhard"

#: ``reinhard-bounded``: largest std ratio (and its inverse) a transfer may apply per channel.
STD_RATIO_BOUND: float = 1.25
#: ``reinhard-bounded``: largest mean shift per channel, in target standard deviations.
MEAN_SHIFT_BOUND: float = 1.5
#: ``balanced``: smallest share of the tissue a class needs for the split to be used.
MIN_CLASS_FRACTION: float = 0.005
#: ``macenko``: optical density below which a pixel is too light to estimate stains from.
OD_MIN: float = 0.15
#: ``macenko``: angular and concentration percentiles (Macenko et al. 2009 use 1 and 99).
ALPHA: float = 1.0
CONC_PERCENTILE: float = 99.0


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile ``q`` in ``[0, 1]`` of ``values`` under non-negative ``weights``."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    if cum[-1] <= 0:
        return float(np.median(values))
    return float(np.interp(q * cum[-1], cum - 0.5 * w, v))


def _weighted_otsu(values: np.ndarray, weights: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of weighted 1-D samples."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi), weights=weights)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1e-12)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def lab_samples(rgb: np.ndarray) -> np.ndarray:
    """Reinhard l-alpha-beta of colour samples ``(N, 3)`` in ``[0, 1]`` (float64)."""
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float64).T)[:, :, None]  # (3, N, 1)
    from napari_dgseg.core.color.transforms import rgb_to_lab_reinhard

    return rgb_to_lab_reinhard(t)[:, :, 0].T.numpy()


def tissue_samples(rgb8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue pixels of a uint8 RGB image as colour samples ``(N, 3)`` in ``[0, 1]``, weights 1.

    Uses :func:`napari_dgseg.core.color.tissue.tissue_mask` (with its fall-back to all pixels).
    """
    from napari_dgseg.core.color.tissue import tissue_mask

    mask = tissue_mask(rgb8)
    px = rgb8[mask].reshape(-1, 3).astype(np.float64) / 255.0
    return px, np.ones(len(px))


def histogram_samples(hist: np.ndarray, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Colour samples from a joint ``bins^3`` RGB histogram: tissue bin centres and their counts.

    The reference bank of older bundles stores only this histogram (and Reinhard statistics);
    the other methods' reference statistics are estimated from it (bins are ``256 / bins``
    grey levels wide, so the estimate is approximate). Bins whose centre is background (white
    glass, black surround) by :func:`~napari_dgseg.core.color.tissue.tissue_mask`'s rule are
    dropped.
    """
    from napari_dgseg.core.color.tissue import _raw_tissue_mask

    idx = np.arange(bins**3)
    r, g, b = idx // (bins * bins), (idx // bins) % bins, idx % bins
    step = 256 // bins
    centres = (np.stack([r, g, b], 1) * step + step // 2).astype(np.uint8)
    # the stored histogram is count / ||count||: proportional to the counts, which is all a
    # weighted statistic needs
    weights = np.abs(np.asarray(hist, dtype=np.float64).reshape(-1))
    keep = _raw_tissue_mask(centres[None], 0.15, 15)[0] & (weights > 0)
    if keep.sum() == 0:
        keep = weights > 0  # may be empty (an all-zero histogram): the caller decides
    return centres[keep].astype(np.float64) / 255.0, weights[keep]


@dataclass(frozen=True)
class Normalizer:
    """One normalization method (see the module docstring)."""

    name: str

    @property
    def size(self) -> int:
        """Length of the statistics vector."""
        return 6 if self.name != "macenko" else 14

    # ------------------------------------------------------------------ fit
    def fit(self, rgb: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Statistics of colour samples.

        Parameters
        ----------
        rgb : ndarray, shape (N, 3)
            Colours in ``[0, 1]`` (tissue pixels, or histogram bin centres).
        weights : ndarray, shape (N,), optional
            Non-negative weight per sample (pixel counts of histogram bins); default 1.

        Returns
        -------
        ndarray, shape (D,), float64
            ``reinhard``, ``reinhard-bounded``, ``balanced``: l-alpha-beta mean (3) and std (3).
            ``macenko``: 6 Reinhard values (the fall-back), then the H and E unit OD vectors
            (3 + 3), then their 99th concentration percentiles (2); NaN for the stain part when
            no two stains could be found.
        """
        rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
        if len(rgb) == 0:
            raise InputError("cannot fit colour statistics on zero pixels; check the tissue mask")
        w = np.ones(len(rgb)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
        lab = lab_samples(rgb)
        plain = _mean_std(lab, w)
        if self.name in ("reinhard", "reinhard-bounded"):
            return plain
        if self.name == "balanced":
            return _balanced(lab, w, plain)
        return np.concatenate([plain, _macenko_fit(rgb, w)])

    # ------------------------------------------------------------------ transform
    def uses_stains(self, target: np.ndarray, reference: np.ndarray) -> bool:
        """True when a ``macenko`` transfer can use both sides' stain vectors."""
        return (self.name == "macenko" and bool(np.isfinite(target[6:]).all())
                and bool(np.isfinite(reference[6:]).all()))

    def branch(self, target: np.ndarray, reference: np.ndarray) -> Branch:
        """The transform from ``target`` statistics to ``reference`` statistics.

        Returns
        -------
        callable
            ``(B, 3, H, W)`` or ``(3, H, W)`` float RGB in ``[0, 1]`` -> the same shape, on the
            input's device and dtype, clipped to ``[0, 1]``.
        """
        if self.name == "macenko" and self.uses_stains(target, reference):
            return _macenko_branch(target[6:], reference[6:])
        mu_t, sd_t = np.asarray(target[:3]), np.maximum(np.asarray(target[3:6]), STD_FLOOR)
        mu_r, sd_r = np.asarray(reference[:3]), np.asarray(reference[3:6])
        k = sd_r / sd_t
        shift = mu_r - k * mu_t
        if self.name == "reinhard-bounded":
            k = np.clip(k, 1.0 / STD_RATIO_BOUND, STD_RATIO_BOUND)
            # lab' = k (lab - mu_t) + mu_t + clip(mu_r - mu_t)
            delta = np.clip(mu_r - mu_t, -MEAN_SHIFT_BOUND * sd_t, MEAN_SHIFT_BOUND * sd_t)
            shift = mu_t + delta - k * mu_t
        return _lab_affine_branch(k, shift)


def _mean_std(lab: np.ndarray, w: np.ndarray) -> np.ndarray:
    ws = w / max(w.sum(), 1e-12)
    mean = (lab * ws[:, None]).sum(0)
    var = ((lab - mean) ** 2 * ws[:, None]).sum(0)
    return np.concatenate([mean, np.sqrt(np.maximum(var, 0.0)).clip(STD_FLOOR)])


def _balanced(lab: np.ndarray, w: np.ndarray, plain: np.ndarray) -> np.ndarray:
    thr = _weighted_otsu(lab[:, 0], w)
    dark = lab[:, 0] <= thr
    share = w[dark].sum() / max(w.sum(), 1e-12)
    if not MIN_CLASS_FRACTION <= share <= 1.0 - MIN_CLASS_FRACTION:
        return plain
    a, b = _mean_std(lab[dark], w[dark]), _mean_std(lab[~dark], w[~dark])
    mean = (a[:3] + b[:3]) / 2.0
    var = (a[3:] ** 2 + b[3:] ** 2) / 2.0 + ((a[:3] - b[:3]) / 2.0) ** 2
    return np.concatenate([mean, np.sqrt(var).clip(STD_FLOOR)])


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density of colours in ``[0, 1]``: ``-ln((255 I + 1) / 256)``."""
    return -np.log((rgb * 255.0 + 1.0) / 256.0)


def _macenko_fit(rgb: np.ndarray, w: np.ndarray) -> np.ndarray:
    nan = np.full(8, np.nan)
    od = _od(rgb)
    keep = (od > OD_MIN).all(axis=1) & (w > 0)
    if keep.sum() < 10:
        return nan
    od, w = od[keep], w[keep]
    ws = w / w.sum()
    mean = (od * ws[:, None]).sum(0)
    cov = ((od - mean).T * ws) @ (od - mean)
    evals, evecs = np.linalg.eigh(cov)
    plane = evecs[:, [2, 1]]  # the two main directions (largest eigenvalues)
    if evals[1] <= 1e-12 * max(evals[2], 1e-30):
        return nan
    plane = plane * np.sign(plane.sum(axis=0, keepdims=True) + 1e-30)  # positive OD directions
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo = _weighted_quantile(phi, w, ALPHA / 100.0)
    hi = _weighted_quantile(phi, w, 1.0 - ALPHA / 100.0)
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    # haematoxylin absorbs more red than eosin: it is the vector with the larger red OD
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    if abs(float(h @ e)) > 0.995 or (h < 0).any() or (e < 0).any():
        return nan
    vmat = np.stack([h, e], axis=1)  # (3, 2)
    conc = np.linalg.lstsq(vmat, od.T, rcond=None)[0]  # (2, N)
    cmax = np.array([_weighted_quantile(c, w, CONC_PERCENTILE / 100.0) for c in conc])
    if not (cmax > 1e-6).all():
        return nan
    return np.concatenate([h, e, cmax])


def _macenko_branch(target: np.ndarray, reference: np.ndarray) -> Branch:
    vt = np.stack([target[0:3], target[3:6]], axis=1)
    vr = np.stack([reference[0:3], reference[3:6]], axis=1)
    scale = reference[6:8] / target[6:8]
    m = torch.tensor(vr @ np.diag(scale) @ np.linalg.pinv(vt), dtype=torch.float64)

    def branch(x: Tensor) -> Tensor:
        od = -torch.log((x * 255.0 + 1.0) * (1.0 / 256.0))
        out = torch.exp(-_apply(m, od)) * (256.0 / 255.0) - 1.0 / 255.0
        return out.clamp(0.0, 1.0)

    return branch


def _lab_affine_branch(k: np.ndarray, shift: np.ndarray) -> Branch:
    """``lab' = k * lab + shift`` per channel, folded into log-LMS (see ``transfer``)."""
    m_lab = _MATS["loglms_to_lab"]
    m_lab_inv = _MATS["lab_to_loglms"]
    kt = torch.tensor(k, dtype=torch.float64)
    a = m_lab_inv @ (kt[:, None] * m_lab)
    c = (m_lab_inv @ torch.tensor(shift, dtype=torch.float64)) * math.log(10.0)

    def branch(x: Tensor) -> Tensor:
        log_lms = torch.log(_apply(_MATS["rgb_to_lms"], x).clamp_min(LOG_EPS))
        mixed = _apply(a, log_lms) + c.to(device=x.device, dtype=x.dtype)[:, None, None]
        return _apply(_MATS["lms_to_rgb"], torch.exp(mixed)).clamp(0.0, 1.0)

    return branch


def identity(x: Tensor) -> Tensor:
    """The branch of DCIN ``none``: the batch as it is."""
    return x


def get_normalizer(name: str) -> Normalizer:
    """The normalizer called ``name``; an unknown name raises :class:`InputError` listing all."""
    if name not in METHODS:
        raise InputError(f"unknown colour normalization method {name!r}; choose one of "
                         f"{', '.join(METHODS)}")
    return Normalizer(name)
