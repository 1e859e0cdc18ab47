"""Random amplitude mixup (RAM; Zhou, Qi & Shi, "Generalizable Medical Image Segmentation via Random Amplitude Mixup and Domain-Specific Image Restoration", ECCV 2022; used by SgCG) on torch batches.

Each image keeps its Fourier *phase* (where the structures are) and takes part of its
low-frequency *amplitude* (the "style": colour cast, illumination, contrast) from a partner image
of another source domain:

1. FFT of every channel, ``fftshift`` so that the zero frequency sits at ``(H // 2, W // 2)``;
2. in the centred window ``[c - b, c + b + 1)`` on both axes, with ``b = floor(ratio * min(H, W))``
   (``ratio = 0.1`` in the reference), the amplitude becomes
   ``lam * A_source + (1 - lam) * A_partner``; outside it the source amplitude is kept;
3. recombine with the source phase, inverse FFT, keep the real part, clip to ``[lo, hi]``.

``lam`` is drawn per image from ``{0.1, 0.2, ..., 1.0}``; ``lam = 1`` returns the source image.
The window is symmetric about the zero frequency, so the mixed spectrum stays Hermitian and the
inverse transform is real up to rounding. Everything runs on the batch's device (GPU friendly);
random draws come from a CPU :class:`torch.Generator` for reproducibility.

Partners
--------
The partner of image ``i`` is drawn uniformly among the batch images of a *different* source
domain. When the batch holds a single domain (the trainer samples domains at random, so with 3
domains and batch 4 this happens in about 1 batch in 27), the partner falls back to another image
of the same domain, and with a batch of one image to the image itself (then RAM is the identity).
:func:`pick_partners` reports which images got a cross-domain partner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from napari_dgseg.core.errors import InputError

#: The reference's mixing weights: lambda in {0.1, 0.2, ..., 1.0}.
LAMBDAS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))


def window_bounds(h: int, w: int, ratio: float = 0.1) -> tuple[int, int, int, int]:
    """Low-frequency window ``(h1, h2, w1, w2)`` in the fftshifted spectrum.

    ``h1 = H // 2 - b``, ``h2 = H // 2 + b + 1`` (same for W) with ``b = floor(ratio * min(H, W))``.
    """
    if not 0.0 <= ratio <= 0.5:
        raise InputError(f"RAM window ratio must be in [0, 0.5] (got {ratio})")
    b = int(ratio * min(h, w))
    ch, cw = h // 2, w // 2
    return ch - b, ch + b + 1, cw - b, cw + b + 1


def amplitude_mix(
    x: Tensor,
    partner: Tensor,
    lam: Tensor | float,
    *,
    ratio: float = 0.1,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Mix the low-frequency Fourier amplitude of ``x`` with that of ``partner``.

    Parameters
    ----------
    x, partner : Tensor, shape (B, C, H, W)
        Source images and their partners (float, any range).
    lam : Tensor of shape (B,) or float
        Weight of the *source* amplitude inside the window (1 = unchanged).
    ratio : float
        Window half-size as a fraction of ``min(H, W)`` (reference: 0.1).
    clip : (lo, hi) or None
        Clip the result to this range (None: no clipping, used by the tests).

    Returns
    -------
    Tensor, shape (B, C, H, W)
        Augmented images, same dtype as ``x``.
    """
    if x.ndim != 4 or partner.shape != x.shape:
        raise InputError(
            f"amplitude_mix needs two (B, C, H, W) batches of the same shape, got "
            f"{tuple(x.shape)} and {tuple(partner.shape)}"
        )
    b, _, h, w = x.shape
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=x.device).reshape(-1)
    if lam_t.numel() == 1:
        lam_t = lam_t.expand(b)
    if lam_t.numel() != b:
        raise InputError(f"lam needs one value per image ({b}), got {lam_t.numel()}")
    lam_t = lam_t.view(b, 1, 1, 1)
    xf = x.float()
    spec = torch.fft.fftshift(torch.fft.fft2(xf), dim=(-2, -1))
    spec_p = torch.fft.fftshift(torch.fft.fft2(partner.float()), dim=(-2, -1))
    amp, phase = spec.abs(), spec.angle()
    amp_p = spec_p.abs()
    h1, h2, w1, w2 = window_bounds(h, w, ratio)
    mixed = amp.clone()
    mixed[..., h1:h2, w1:w2] = (
        lam_t * amp[..., h1:h2, w1:w2] + (1.0 - lam_t) * amp_p[..., h1:h2, w1:w2]
    )
    out_spec = torch.polar(mixed, phase)
    out = torch.fft.ifft2(torch.fft.ifftshift(out_spec, dim=(-2, -1))).real
    if clip is not None:
        out = out.clamp(clip[0], clip[1])
    return out.to(x.dtype)


def pick_partners(domain: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Partner index for every image: uniformly among images of another domain when possible.

    Parameters
    ----------
    domain : Tensor, shape (B,)
        Source-domain index of every image.
    generator : torch.Generator
        CPU generator for the draws.

    Returns
    -------
    partners : Tensor, shape (B,), long (on CPU)
        Index of each image's partner.
    cross : Tensor, shape (B,), bool (on CPU)
        True where the partner is from another domain; False where the batch held no other
        domain (fallback: another image of the same domain, or the image itself when B = 1).
    """
    dom = domain.detach().cpu().long().reshape(-1)
    n = dom.numel()
    partners = torch.empty(n, dtype=torch.long)
    cross = torch.zeros(n, dtype=torch.bool)
    idx = torch.arange(n)
    for i in range(n):
        pool = idx[dom != dom[i]]
        if pool.numel() > 0:
            cross[i] = True
        else:
            pool = idx[idx != i]
            if pool.numel() == 0:
                pool = idx[i : i + 1]
        k = int(torch.randint(0, pool.numel(), (1,), generator=generator))
        partners[i] = pool[k]
    return partners, cross


def draw_lambdas(
    n: int, generator: torch.Generator, choices: tuple[float, ...] = LAMBDAS
) -> Tensor:
    """``n`` mixing weights drawn uniformly from ``choices`` (CPU float32 tensor ``(n,)``)."""
    table = torch.tensor(choices, dtype=torch.float32)
    return table[torch.randint(0, len(choices), (n,), generator=generator)]


@dataclass(frozen=True)
class RAMResult:
    """What :func:`random_amplitude_mixup` returns.

    Attributes
    ----------
    images : Tensor, shape (B, C, H, W)
        Augmented batch.
    partners : Tensor, shape (B,)
        Partner index of every image.
    lambdas : Tensor, shape (B,)
        Source-amplitude weight of every image.
    cross_domain : Tensor, shape (B,), bool
        Whether the partner came from another domain.
    """

    images: Tensor
    partners: Tensor
    lambdas: Tensor
    cross_domain: Tensor


def random_amplitude_mixup(
    x: Tensor,
    domain: Tensor,
    generator: torch.Generator,
    *,
    ratio: float = 0.1,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> RAMResult:
    """RAM on a batch: every image mixed with a partner of another source domain.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Images in ``[0, 1]`` (the trainer's un-normalised batch).
    domain : Tensor, shape (B,)
        Source-domain index of every image.
    generator : torch.Generator
        CPU generator (partners and lambdas).
    ratio, clip : see :func:`amplitude_mix`.
    """
    if domain.numel() != x.shape[0]:
        raise InputError(f"domain has {domain.numel()} entries for a batch of {x.shape[0]} images")
    partners, cross = pick_partners(domain, generator)
    lam = draw_lambdas(x.shape[0], generator)
    out = amplitude_mix(x, x[partners.to(x.device)], lam.to(x.device), ratio=ratio, clip=clip)
    return RAMResult(images=out, partners=partners, lambdas=lam, cross_domain=cross)
