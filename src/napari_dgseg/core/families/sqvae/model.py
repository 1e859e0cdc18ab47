"""The ``sqvae`` family: domain generalisation with a class-grouped SQ-VAE codebook (Saito & Hotta, "Domain Generalization using Category Information Independent of Domain Differences", 2025).

A U-Net (the same :class:`~napari_dgseg.core.models.blocks.Encoder`/``Decoder`` as ``unet``)
produces a feature map ``Z`` which a 1x1 convolution projects to ``latent_channels``; ``Z`` is
split channel-wise into ``Z1`` (class information, ``split`` channels) and ``Z2`` (domain
information). Each half is quantised by a Gaussian (SQ-VAE type-I) quantiser: ``Z1`` by the
codebook ``e_alpha`` whose ``N_alpha`` codes form K contiguous class groups, ``Z2`` by ``e_beta``.

* Code logits ``-||z - e_j||^2 / (2 sigma^2)`` (eq. 5) with ``sigma^2 = 1 + exp(p)``, ``p``
  learnable (initialised so that ``sigma^2 = 21``; the +1 floor is the SQ-VAE reference's choice).
* Training: ``P = softmax((logits + Gumbel) / T)`` (eq. 6), ``Z' = P @ e`` (soft, no straight
  through); ``T = exp(-decay * step) * exp(log_tau)`` with learnable ``log_tau``.
* Inference: the nearest code (eq. 7); ``Z' = e[index]``.
* Segmentation: the class of a pixel is the group of its code. Class logits are the group maximum
  of the code logits at inference (so ``argmax`` of the class logits is exactly the group of the
  argmax code) and the group ``logsumexp`` in training (the log of the group's probability mass).
* A decoder without skips reconstructs the (normalised) image from ``concat(Z1', Z2')`` (eq. 8).

The loss (:func:`sqvae_training_loss`) combines every term of eqs. 1-12 with the weights of
:class:`SQVAEConfig`; :func:`finish_training` stores the training data's code usage and a
calibrated domain-shift threshold in the bundle (``codebook.safetensors``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_dgseg.core.augment_cqg import cqg_loss, cqg_views
from napari_dgseg.core.codebook import code_groups, code_usage, store_training_usage
from napari_dgseg.core.families.sqvae.loss import (
    code_loss,
    code_weights,
    continuous_loss,
    domain_loss,
    log_mse_loss,
    negative_entropy,
    squared_correlation,
)
from napari_dgseg.core.losses.segmentation import ce_dice_loss
from napari_dgseg.core.models.base import SegModel, normalise_input
from napari_dgseg.core.models.blocks import ConvBlock, Decoder, Encoder
from napari_dgseg.core.postprocess import semantic_postprocess

__all__ = [
    "GaussianQuantizer",
    "SQVAE",
    "SQVAEConfig",
    "code_groups",
    "features_and_outputs",
    "finish_training",
    "gumbel_softmax",
    "sqvae_postprocess",
    "sqvae_training_loss",
]


@dataclass(frozen=True)
class SQVAEConfig:
    """Architecture and loss weights of the SQ-VAE family.

    Attributes
    ----------
    num_classes : int
        Classes K (>= 2), set by the trainer from the data.
    widths : tuple of int
        U-Net stages, as in ``unet`` (same backbone for fair comparisons).
    norm : str
        ``batch``, ``instance``, ``group`` or ``none``.
    in_channels : int
        Input channels (3).
    latent_channels : int
        Channels C of the feature map Z (a 1x1 projection of the last decoder map).
    split : int
        Channels of Z1 (the class half); ``0`` means ``latent_channels // 2`` (the paper's C/2).
    codebook_size : int
        Codes N_alpha of ``e_alpha`` (>= num_classes), in K contiguous groups. The paper uses
        512 (use it on GPU); the CPU default is 64.
    codebook_size_beta : int
        Codes of ``e_beta``; ``0`` means ``codebook_size``.
    log_var_init : float
        Initial ``p`` of ``sigma^2 = 1 + exp(p)``. Default 0 (sigma^2 starts at 2). The SQ-VAE
        reference's log 20 (sigma^2 = 21) made the class logits so flat that segmentation did not
        learn in CPU-length runs: on synthetic nuclei, 150 iterations moved the seg loss from 1.26
        to 1.23 with (log 20, learned temperature, w_seg 1, w_code 1) and from 1.21 to 0.56 with
        the defaults below (measured with widths 8-64, 64 px crops, batch 4).
    learn_variance, learn_temperature : bool
        Whether ``p`` and ``log_tau`` are trained (temperature: fixed schedule by default).
    temperature_decay : float
        ``T = exp(-temperature_decay * step)`` (SQ-VAE: 1e-5 per step).
    min_temperature : float
        Lower clamp of the effective temperature.
    recon_width : int
        Channels of the skip-free reconstruction decoder; ``0`` means ``widths[0]``.
    w_seg, w_code, w_domain, w_corr, w_recon, w_entropy, w_continuous : float
        Loss weights: segmentation CE + Dice on the group logits, L_code (eq. 10), L_domain
        (eq. 3), decorrelation (eqs. 1 + 2), log-MSE reconstruction (eq. 9), SQ-VAE negative
        entropy and continuous terms (summed over both quantisers).
    domain_margin : float
        Cap of the squared distance between representatives in L_domain's push term.
    corr_ridge : float
        DeepCCA ridge of the decorrelation loss.
    """

    num_classes: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: str = "batch"
    in_channels: int = 3
    latent_channels: int = 16
    split: int = 0
    codebook_size: int = 64
    codebook_size_beta: int = 0
    log_var_init: float = 0.0
    learn_variance: bool = True
    learn_temperature: bool = False
    temperature_decay: float = 1e-5
    min_temperature: float = 0.05
    recon_width: int = 0
    w_seg: float = 5.0
    w_code: float = 0.2
    w_domain: float = 0.1
    w_corr: float = 1.0
    w_recon: float = 0.5
    w_entropy: float = 0.01
    w_continuous: float = 0.01
    domain_margin: float = 16.0
    corr_ridge: float = 1e-3

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + at least one class)")
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two stages")
        if self.latent_channels < 2:
            raise ValueError("latent_channels must be >= 2 (Z1 and Z2 need one channel each)")
        if not 0 <= self.split < self.latent_channels:
            raise ValueError(
                f"split {self.split} must be between 1 and latent_channels - 1 "
                f"({self.latent_channels - 1}), or 0 for half"
            )
        if self.codebook_size < self.num_classes:
            raise ValueError(
                f"codebook_size {self.codebook_size} must be >= num_classes {self.num_classes} "
                "(each class needs at least one code)"
            )
        if self.codebook_size_beta < 0:
            raise ValueError("codebook_size_beta must be >= 0 (0 = same as codebook_size)")

    @property
    def z1_channels(self) -> int:
        """Channels of Z1."""
        return self.split or self.latent_channels // 2

    @property
    def z2_channels(self) -> int:
        """Channels of Z2."""
        return self.latent_channels - self.z1_channels

    @property
    def beta_size(self) -> int:
        """Codes of ``e_beta``."""
        return self.codebook_size_beta or self.codebook_size


def gumbel_softmax(
    logits: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    dim: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``softmax((logits + g) / T)`` with standard Gumbel noise ``g`` (eq. 6).

    Parameters
    ----------
    logits : Tensor
        Any shape; the categories lie along ``dim``.
    temperature : Tensor or float
        ``T > 0``; as ``T -> 0`` the output becomes one-hot at ``argmax(logits + g)``.
    generator : torch.Generator, optional
        For reproducible noise (CPU generator; the noise is moved to the logits' device).
    """
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    return torch.softmax((logits + g) / temperature, dim=dim)


class GaussianQuantizer(nn.Module):
    """Gaussian (SQ-VAE type-I) quantiser with a learnable codebook and variance.

    Parameters
    ----------
    num_codes, dim : int
        Codebook ``(N, D)``, initialised from N(0, 1).
    log_var_init : float
        Initial ``p`` of ``sigma^2 = 1 + exp(p)``.
    learn_variance : bool
        Whether ``p`` is a trained parameter (else a buffer).
    """

    def __init__(self, num_codes: int, dim: int, log_var_init: float, learn_variance: bool) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(num_codes, dim))
        p = torch.tensor(float(log_var_init))
        if learn_variance:
            self.log_var = nn.Parameter(p)
        else:
            self.register_buffer("log_var", p)

    @property
    def variance(self) -> torch.Tensor:
        """``sigma^2 = 1 + exp(p)`` (scalar, >= 1)."""
        return 1.0 + torch.exp(self.log_var)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Code logits ``-||z - e_j||^2 / (2 sigma^2)`` (eq. 5): ``(B, D, H, W)`` -> ``(B, N, H, W)``.

        Computed as ``-(||z||^2 + ||e||^2 - 2 z.e) / (2 sigma^2)`` (no ``N x HW x D`` tensor).
        """
        e = self.codebook
        z2 = z.pow(2).sum(dim=1, keepdim=True)
        e2 = e.pow(2).sum(dim=1).view(1, -1, 1, 1)
        ze = F.conv2d(z, e[:, :, None, None])  # z.e for every code: a 1x1 convolution
        dist = (z2 + e2 - 2.0 * ze).clamp(min=0.0)
        return -dist / (2.0 * self.variance)

    def quantize_soft(self, probs: torch.Tensor) -> torch.Tensor:
        """``Z' = P @ e``: ``(B, N, H, W)`` -> ``(B, D, H, W)``."""
        return F.conv2d(probs, self.codebook.T[:, :, None, None])

    def quantize_hard(self, index: torch.Tensor) -> torch.Tensor:
        """``Z' = e[index]``: ``(B, H, W)`` long -> ``(B, D, H, W)``."""
        return self.codebook[index].permute(0, 3, 1, 2)


class ReconDecoder(nn.Sequential):
    """Encoder-decoder CNN without skips: ``concat(Z1', Z2')`` -> image ``(B, 3, H, W)``."""

    def __init__(self, in_ch: int, width: int, out_ch: int, norm: str) -> None:
        super().__init__(
            ConvBlock(in_ch, width, norm),
            nn.MaxPool2d(2),
            ConvBlock(width, 2 * width, norm),
            nn.ConvTranspose2d(2 * width, width, 2, stride=2),
            ConvBlock(width, width, norm),
            nn.Conv2d(width, out_ch, 1),
        )


class SQVAE(SegModel):
    """U-Net features, split Z1/Z2, two Gaussian quantisers, class-grouped segmentation.

    ``forward(x)`` returns class logits ``(B, K, H, W)`` (group maxima of the code logits);
    ``infer(x)`` adds ``codebook_indices`` ``(B, H, W)`` (``e_alpha`` code per pixel) and
    ``domain_code_indices`` (``e_beta``); :meth:`training_outputs` returns everything the loss
    needs.
    """

    discrete_outputs = ("codebook_indices", "domain_code_indices")

    def __init__(self, config: SQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.divisor = max(2 ** (len(config.widths) - 1), 2)
        self.encoder = Encoder(config.in_channels, config.widths, config.norm)
        self.decoder = Decoder(config.widths, config.norm)
        self.to_latent = nn.Conv2d(config.widths[0], config.latent_channels, 1)
        self.quant_alpha = GaussianQuantizer(
            config.codebook_size, config.z1_channels, config.log_var_init, config.learn_variance
        )
        self.quant_beta = GaussianQuantizer(
            config.beta_size, config.z2_channels, config.log_var_init, config.learn_variance
        )
        self.representatives = nn.Parameter(torch.randn(config.num_classes, config.z1_channels))
        tau = torch.tensor(0.0)
        if config.learn_temperature:
            self.log_tau = nn.Parameter(tau)
        else:
            self.register_buffer("log_tau", tau)
        self.register_buffer("groups", code_groups(config.codebook_size, config.num_classes))
        width = config.recon_width or config.widths[0]
        self.recon = ReconDecoder(config.latent_channels, width, config.in_channels, config.norm)

    # ------------------------------------------------------------------ pieces
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder feature map ``(B, widths[0], H, W)`` (as ``UNet.features``)."""
        return self.decoder(self.encoder(x))

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Z1`` ``(B, C1, H, W)`` and ``Z2`` ``(B, C2, H, W)``."""
        z = self.to_latent(self.features(x))
        c1 = self.config.z1_channels
        return z[:, :c1], z[:, c1:]

    def temperature(self, step: int = 0) -> torch.Tensor:
        """Effective temperature ``max(min_T, exp(-decay * step) * exp(log_tau))``."""
        sched = math.exp(-self.config.temperature_decay * float(step))
        return (sched * torch.exp(self.log_tau)).clamp(min=self.config.min_temperature)

    def class_logits(self, code_logits: torch.Tensor, reduce: str = "max") -> torch.Tensor:
        """Per-class logits from code logits ``(B, N, H, W)`` -> ``(B, K, H, W)``.

        ``reduce="max"``: the best code of each group (argmax over classes == group of the argmax
        code); ``"logsumexp"``: the log of the group's probability mass (up to a constant).
        """
        k = self.num_classes
        parts = []
        for g in range(k):
            sel = code_logits[:, self.groups == g]
            parts.append(sel.amax(dim=1) if reduce == "max" else torch.logsumexp(sel, dim=1))
        return torch.stack(parts, dim=1)

    # ------------------------------------------------------------------ contract
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, _ = self.latent(x)
        return self.class_logits(self.quant_alpha.logits(z1), "max")

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class logits and the nearest ``e_alpha``/``e_beta`` code per pixel (eq. 7)."""
        return self.features_and_infer(x)[1]

    def features_and_infer(
        self, x: torch.Tensor, reweight: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Decoder features and :meth:`infer`'s maps, the latent read from ``reweight(features)``."""
        feats = self.features(x)
        z = self.to_latent(feats if reweight is None else reweight(feats))
        c1 = self.config.z1_channels
        z1, z2 = z[:, :c1], z[:, c1:]
        la = self.quant_alpha.logits(z1)
        lb = self.quant_beta.logits(z2)
        return feats, {
            "logits": self.class_logits(la, "max"),
            "codebook_indices": la.argmax(dim=1),
            "domain_code_indices": lb.argmax(dim=1),
        }

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the nearest codes ``(B, 3, H, W)`` (normalised)."""
        z1, z2 = self.latent(x)
        ia = self.quant_alpha.logits(z1).argmax(dim=1)
        ib = self.quant_beta.logits(z2).argmax(dim=1)
        zq = torch.cat([self.quant_alpha.quantize_hard(ia), self.quant_beta.quantize_hard(ib)], 1)
        return self.recon(zq)

    def training_outputs(
        self, x: torch.Tensor, step: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Everything the loss needs, with the Gumbel-softmax quantisation of training.

        Returns
        -------
        dict
            ``z1``, ``z2`` (features), ``z1q``, ``z2q`` (soft quantisations), ``logits_alpha``,
            ``logits_beta`` (code logits), ``probs_alpha``, ``probs_beta`` (Gumbel-softmax P),
            ``class_logits`` ``(B, K, H, W)`` (group logsumexp of logits / T), ``recon``
            ``(B, 3, H, W)`` and ``temperature``.
        """
        z1, z2 = self.latent(x)
        t = self.temperature(step)
        la = self.quant_alpha.logits(z1)
        lb = self.quant_beta.logits(z2)
        pa = gumbel_softmax(la, t, generator=generator)
        pb = gumbel_softmax(lb, t, generator=generator)
        z1q = self.quant_alpha.quantize_soft(pa)
        z2q = self.quant_beta.quantize_soft(pb)
        recon = self.recon(torch.cat([z1q, z2q], dim=1))
        return {
            "z1": z1,
            "z2": z2,
            "z1q": z1q,
            "z2q": z2q,
            "logits_alpha": la,
            "logits_beta": lb,
            "probs_alpha": pa,
            "probs_beta": pb,
            "class_logits": self.class_logits(la / t, "logsumexp"),
            "recon": recon,
            "temperature": t,
        }


# ---------------------------------------------------------------------- family hooks
def _own_terms(
    model: SQVAE, x: torch.Tensor, y: torch.Tensor, state: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Every loss term except segmentation on normalised ``x``; returns (loss, logs, logits)."""
    cfg = model.config
    out = model.training_outputs(x, int(state.get("iteration", 0)), state.get("generator"))
    groups, k = model.groups, model.num_classes
    w = code_weights(out["probs_alpha"], groups, k)
    l_code = code_loss(out["probs_alpha"], y, groups, k, weights=w)
    l_domain = domain_loss(out["z1"], y, model.representatives, margin=cfg.domain_margin)
    l_corr = squared_correlation(out["z1"], out["z2"], ridge=cfg.corr_ridge)
    l_corr_q = squared_correlation(out["z1q"], out["z2q"], ridge=cfg.corr_ridge)
    l_rec = log_mse_loss(x, out["recon"])
    l_ent = negative_entropy(out["logits_alpha"]) + negative_entropy(out["logits_beta"])
    l_cont = continuous_loss(out["z1"], out["z1q"], model.quant_alpha.variance) + continuous_loss(
        out["z2"], out["z2q"], model.quant_beta.variance
    )
    loss = (
        cfg.w_code * l_code
        + cfg.w_domain * l_domain
        + cfg.w_corr * (l_corr + l_corr_q)
        + cfg.w_recon * l_rec
        + cfg.w_entropy * l_ent
        + cfg.w_continuous * l_cont
    )
    logs = {
        "code": float(l_code.detach()),
        "domain": float(l_domain.detach()),
        "corr_z": float(l_corr.detach()),
        "corr_zq": float(l_corr_q.detach()),
        "recon": float(l_rec.detach()),
        "entropy": float(l_ent.detach()),
        "continuous": float(l_cont.detach()),
        "temperature": float(out["temperature"].detach()),
        "variance_alpha": float(model.quant_alpha.variance.detach()),
        "variance_beta": float(model.quant_beta.variance.detach()),
        "codes_used": float(out["logits_alpha"].argmax(1).unique().numel()),
    }
    return loss, logs, out["class_logits"]


def sqvae_training_loss(
    model: SQVAE, batch: dict[str, torch.Tensor], state: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total SQ-VAE DG loss of one batch (the family's ``training_loss``).

    ``w_seg * Seg + w_code * L_code + w_domain * L_domain + w_corr * (corr(Z1,Z2)^2 +
    corr(Z1',Z2')^2) + w_recon * L_mse + w_entropy * (sum p log p) + w_continuous * KL_cont``,
    where ``Seg`` is cross-entropy + Dice on the group logits. With ``state["cqg"]`` the
    segmentation part is the CQG loss of Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025 (``0.3 Seg(x1) + 0.7 Seg(x2) + MSE``) and the
    family's own terms are computed on the geometric view ``x1``.

    Parameters
    ----------
    model : SQVAE
    batch : dict
        ``image`` ``(B, 3, s, s)`` RGB in [0, 1], ``target`` ``(B, s, s)`` long.
    state : dict
        ``iteration`` (temperature schedule), ``generator``, ``cqg``, ``input_spec``.

    Returns
    -------
    loss : Tensor
        Scalar.
    logs : dict of str to float
        Every term (unweighted), the temperature, variances and the number of codes used.
    """
    spec = state.get("input_spec") or {}
    x, y = batch["image"], batch["target"]
    cfg = model.config
    if state.get("cqg"):
        x1, x2, y1 = cqg_views(x, y, state["generator"])
        own, logs, logits1 = _own_terms(model, normalise_input(x1, spec), y1, state)
        out2 = model.training_outputs(
            normalise_input(x2, spec), int(state.get("iteration", 0)), state.get("generator")
        )
        seg, parts = cqg_loss(logits1, out2["class_logits"], y1, ce_dice_loss)
        logs = {**logs, **{f"cqg_{k}": v for k, v in parts.items()}}
    else:
        own, logs, logits = _own_terms(model, normalise_input(x, spec), y, state)
        seg = ce_dice_loss(logits, y)
    logs["seg"] = float(seg.detach())
    return cfg.w_seg * seg + own, logs


def sqvae_postprocess(maps: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, Any]:
    """Labels, probabilities, code-index maps and per-image code-usage histograms.

    Parameters
    ----------
    maps : dict
        From tiled inference: ``logits`` ``(K, H, W)``, ``codebook_indices`` and
        ``domain_code_indices`` ``(H, W)``.
    config : dict
        The bundle's config (``codebook_size``, ...).

    Returns
    -------
    dict
        ``labels`` ``(H, W)`` int32 (argmax of the blended class logits; within a tile this is the
        group of the nearest code), ``probabilities`` ``(K, H, W)``, ``codebook_indices``
        ``(H, W)`` int32, and extras ``code_usage`` ``(N_alpha,)``, ``domain_code_indices`` and
        ``domain_code_usage`` ``(N_beta,)`` (fractions of pixels, summing to 1).
    """
    cfg = SQVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    out: dict[str, Any] = dict(semantic_postprocess(maps))
    idx = np.asarray(maps["codebook_indices"], dtype=np.int32)
    out["codebook_indices"] = idx
    out["code_usage"] = code_usage(idx, cfg.codebook_size)
    if "domain_code_indices" in maps:
        dom = np.asarray(maps["domain_code_indices"], dtype=np.int32)
        out["domain_code_indices"] = dom
        out["domain_code_usage"] = code_usage(dom, cfg.beta_size)
    return out


def finish_training(bundle: Any, domains: Any, state: dict[str, Any]) -> None:
    """Store the training data's code usage and the shift threshold (``Family.finish_training``)."""
    store_training_usage(bundle, domains)


def features_and_infer(
    model: SQVAE, x: torch.Tensor, reweight: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Family.features_and_infer``: :meth:`SQVAE.features_and_infer`."""
    return model.features_and_infer(x, reweight)


def features_and_outputs(
    model: SQVAE, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MaNi's features (the last decoder map) and the class logits (``Family.features_and_outputs``).

    Two passes: the class logits come from the quantised ``Z1``, not from a head on the features.
    """
    return model.features(x), {"logits": model(x)}
