"""The ``ram`` and ``ram-sgcg`` families: RAM-DSIR multi-source training, optionally with SgCG.

Segmenter
    The same U-Net as the ``unet`` family (:class:`~napari_dgseg.core.models.blocks.Encoder`,
    :class:`~napari_dgseg.core.models.blocks.Decoder`, 1x1 head), so tables compare like with like.
    Inference uses only this part.
Domain-specific image restoration (DSIR, training only)
    A decoder from the deepest encoder map, without skips: per stage a 2x transposed convolution,
    a shared 3x3 convolution, one BatchNorm *per source domain* and ReLU; a 1x1 convolution and
    ``tanh`` give an RGB image in ``[-1, 1]``. Images of domain ``d`` go through BatchNorm ``d``
    only. It restores the original image from the features of its RAM-augmented version (MSE).
SgCG (``ram-sgcg``, training only)
    A 1x1-conv projection of the penultimate (last decoder) features to ``sgcg_dim`` channels,
    L2-normalised, with per-class online statistics and the closed-form bound of
    :mod:`napari_dgseg.core.families.ram.sgcg`.

Loss (per iteration, ``x`` the batch in ``[0, 1]``, ``y`` its labels, ``d`` its domains)::

    Seg(x) + Seg(x_RAM) + kl_weight * SymKL(p(x), p(x_RAM)) + restoration_weight * sum_d MSE_d
      [+ sgcg_weight * (mean_i L(q_i(x)) + mean_i L(q_i(x_RAM)))]     (ram-sgcg, eqs. 12-13)

With ``--cqg``, ``Seg(x)`` is replaced by the CQG loss and the RAM terms use the geometric view.

Training-only parts are moved out of ``weights.safetensors`` when training ends
(:func:`finish_training`): ``restoration.safetensors`` (DSIR decoder) and ``sgcg.safetensors``
(projection + class statistics); the bundle's config gets ``training_heads = false`` so that
loading it for inference builds the segmenter only. :func:`training_model_from_bundle` rebuilds
the full training model from a bundle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_dgseg.core.augment_cqg import cqg_loss, cqg_views
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.families.ram.augment import random_amplitude_mixup
from napari_dgseg.core.families.ram.loss import restoration_loss, symmetric_kl
from napari_dgseg.core.families.ram.sgcg import COVARIANCES, SgCGLoss, downsample_labels
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX, ce_dice_loss
from napari_dgseg.core.models.base import SegModel, normalise_input
from napari_dgseg.core.models.blocks import NORMS, init_unet_backbone

#: Most source domains a default config accepts (one BatchNorm each in the DSIR decoder).
DEFAULT_NUM_DOMAINS = 8


@dataclass(frozen=True)
class RAMConfig:
    """Architecture and loss weights of the ``ram`` family.

    Attributes
    ----------
    num_classes : int
        Output classes K (background included), set by the trainer from the data.
    widths : tuple of int
        Encoder widths, as in ``unet`` (same backbone).
    norm : str
        Normalisation of the segmenter (``batch``, ``instance``, ``group``, ``none``).
    in_channels : int
        Input channels (3).
    num_domains : int
        BatchNorms in the restoration decoder: the most source domains training accepts. Unused
        ones never receive gradients; training with more domains fails with a message saying
        which value to pass (``--config '{"num_domains": N}'``).
    training_heads : bool
        Build the training-only parts (restoration decoder, SgCG projection and statistics).
        Bundles store ``false``: inference builds the segmenter only.
    mix_ratio : float
        RAM window half-size as a fraction of ``min(H, W)`` (reference 0.1).
    kl_weight : float
        Weight of the symmetric KL between the predictions of ``x`` and ``x_RAM`` (0.5).
    restoration_weight : float
        Weight of the summed per-domain restoration MSE (0.1).
    """

    num_classes: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: str = "batch"
    in_channels: int = 3
    num_domains: int = DEFAULT_NUM_DOMAINS
    training_heads: bool = True
    mix_ratio: float = 0.1
    kl_weight: float = 0.5
    restoration_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + at least one class)")
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two stages")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS} (got {self.norm!r})")
        if self.num_domains < 1:
            raise ValueError("num_domains must be >= 1")
        if not 0.0 <= self.mix_ratio <= 0.5:
            raise ValueError("mix_ratio must be in [0, 0.5]")


@dataclass(frozen=True)
class RAMSgCGConfig(RAMConfig):
    """``ram`` plus the SgCG loss ("SgCG: Semantic-Guided Contrastive Generalization for Medical Image Segmentation", anonymous ICLR 2025 submission, 2024).

    Attributes
    ----------
    sgcg_weight : float
        lambda of eq. 13 (total = L_ram + lambda L_feat).
    sgcg_tau : float
        Temperature tau of eqs. 10-11 (features are L2-normalised).
    sgcg_dim : int
        Projection dimension D.
    sgcg_covariance : str
        ``"diag"`` or ``"full"`` class covariances (see docs/ram-sgcg.md for the measurement).
    sgcg_stride : int
        Features and labels are average-pooled by this factor before the loss; cells whose
        majority class covers < 75 % are ignored. 1 keeps thin vessels.
    sgcg_max_pixels : int
        At most this many labelled pixels per view enter the statistics and the loss (random
        subset, bounds the cost on CPU).
    """

    sgcg_weight: float = 0.1
    sgcg_tau: float = 0.1
    sgcg_dim: int = 32
    sgcg_covariance: str = "diag"
    sgcg_stride: int = 1
    sgcg_max_pixels: int = 16384

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sgcg_covariance not in COVARIANCES:
            raise ValueError(f"sgcg_covariance must be one of {COVARIANCES}")
        if self.sgcg_tau <= 0 or self.sgcg_dim < 1 or self.sgcg_stride < 1:
            raise ValueError("sgcg_tau must be > 0, sgcg_dim and sgcg_stride >= 1")
        if self.sgcg_max_pixels < 1:
            raise ValueError("sgcg_max_pixels must be >= 1")


class DomainBatchNorm2d(nn.Module):
    """One :class:`~torch.nn.BatchNorm2d` per source domain; ``forward(x, d)`` uses BN ``d``."""

    def __init__(self, channels: int, num_domains: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_domains))

    def forward(self, x: Tensor, domain: int) -> Tensor:
        if not 0 <= domain < len(self.bns):
            raise InputError(
                f"domain index {domain} has no BatchNorm (this model has {len(self.bns)}); "
                f"train with --config '{{\"num_domains\": {domain + 1}}}' or more"
            )
        return self.bns[domain](x)


class RestorationDecoder(nn.Module):
    """DSIR decoder: deepest encoder map ``(B, widths[-1], h, w)`` -> image ``(B, 3, H, W)``.

    Convolutions are shared by all domains; every stage has one BatchNorm per domain. The
    output is ``tanh`` (range ``[-1, 1]``).
    """

    def __init__(self, widths: Sequence[int], num_domains: int, out_channels: int = 3) -> None:
        super().__init__()
        rev = list(widths)[::-1]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(rev[i], rev[i + 1], 2, stride=2) for i in range(len(rev) - 1)
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(rev[i + 1], rev[i + 1], 3, padding=1, bias=False) for i in range(len(rev) - 1)
        )
        self.norms = nn.ModuleList(
            DomainBatchNorm2d(rev[i + 1], num_domains) for i in range(len(rev) - 1)
        )
        self.out = nn.Conv2d(rev[-1], out_channels, 1)

    def _run(self, x: Tensor, d: int) -> Tensor:
        for up, conv, norm in zip(self.ups, self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(up(x)), d))
        return torch.tanh(self.out(x))

    def forward(self, deepest: Tensor, domain: Tensor) -> Tensor:
        """Restore every image with the BatchNorms of its domain (``domain``: (B,) long)."""
        if domain.numel() != deepest.shape[0]:
            raise InputError(
                f"domain has {domain.numel()} entries for a batch of {deepest.shape[0]}"
            )
        groups = [(int(d), (domain == d).nonzero(as_tuple=True)[0]) for d in torch.unique(domain)]
        if len(groups) == 1:
            return self._run(deepest, groups[0][0])
        parts = [(idx, self._run(deepest[idx], d)) for d, idx in groups]
        out = deepest.new_empty((deepest.shape[0], *parts[0][1].shape[1:]))
        for idx, restored in parts:
            out[idx] = restored
        return out


class RAMNet(SegModel):
    """U-Net segmenter with the optional training-only DSIR decoder and SgCG projection."""

    def __init__(self, config: RAMConfig) -> None:
        super().__init__()
        init_unet_backbone(self, config)
        self.restoration: RestorationDecoder | None = None
        self.projection: nn.Module | None = None
        self.sgcg: SgCGLoss | None = None
        if config.training_heads:
            # DSIR restores the RGB image whatever extra input channels the network reads
            self.restoration = RestorationDecoder(config.widths, config.num_domains, 3)
            if isinstance(config, RAMSgCGConfig):
                w = config.widths[0]
                self.projection = nn.Sequential(
                    nn.Conv2d(w, w, 1), nn.ReLU(inplace=True), nn.Conv2d(w, config.sgcg_dim, 1)
                )
                self.sgcg = SgCGLoss(
                    config.num_classes,
                    config.sgcg_dim,
                    tau=config.sgcg_tau,
                    covariance=config.sgcg_covariance,
                )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate map ``(B, widths[0], H, W)`` (last decoder features)."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_forward(self, x: Tensor) -> dict[str, Tensor]:
        """``logits`` (B,K,H,W), ``features`` (B,w0,H,W) and the ``deepest`` encoder map."""
        feats = self.encoder(x)
        penultimate = self.decoder(feats)
        return {"logits": self.head(penultimate), "features": penultimate, "deepest": feats[-1]}

    def restore(self, deepest: Tensor, domain: Tensor) -> Tensor:
        """DSIR: image in ``[-1, 1]`` from the deepest encoder map, BatchNorm per domain."""
        if self.restoration is None:
            raise InputError(
                "this model was built without its restoration decoder (training_heads=false, the "
                "inference form stored in bundles); rebuild it with training_model_from_bundle()"
            )
        return self.restoration(deepest, domain)

    def project(self, features: Tensor) -> Tensor:
        """SgCG projection: ``(B, D, H', W')`` L2-normalised (H' = H / sgcg_stride)."""
        if self.projection is None:
            raise InputError(
                "this model has no SgCG projection (family 'ram' or training_heads=false)"
            )
        stride = getattr(self.config, "sgcg_stride", 1)
        if stride > 1:
            features = F.avg_pool2d(features, stride)
        return F.normalize(self.projection(features), dim=1)

    def drop_training_heads(self) -> dict[str, dict[str, Tensor]]:
        """Remove the training-only parts in place and return their tensors by extra-file name.

        Returns
        -------
        dict
            ``{"restoration": {...}}`` and, for ``ram-sgcg``, ``{"sgcg": {...}}`` (projection
            weights under ``projection.*``, statistics under ``stats.*``).
        """
        out: dict[str, dict[str, Tensor]] = {}
        if self.restoration is not None:
            out["restoration"] = {
                k: v.detach().cpu() for k, v in self.restoration.state_dict().items()
            }
            self.restoration = None
        if self.projection is not None and self.sgcg is not None:
            sg = {
                f"projection.{k}": v.detach().cpu() for k, v in self.projection.state_dict().items()
            }
            sg.update(
                {f"stats.{k}": v.detach().cpu() for k, v in self.sgcg.stats.state_dict().items()}
            )
            out["sgcg"] = sg
            self.projection = None
            self.sgcg = None
        return out


# ---------------------------------------------------------------------------------------- loss
def _pixels(
    q: Tensor, labels: Tensor, limit: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Flatten ``q`` (B,D,h,w) and ``labels`` (B,h,w) to labelled pixels, at most ``limit``."""
    d = q.shape[1]
    flat_q = q.permute(0, 2, 3, 1).reshape(-1, d)
    flat_y = labels.reshape(-1)
    keep = (flat_y != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    if keep.numel() > limit:
        pick = torch.randperm(keep.numel(), generator=generator)[:limit].to(keep.device)
        keep = keep[pick]
    return flat_q[keep], flat_y[keep]


def _seg(logits: Tensor, target: Tensor) -> Tensor:
    return ce_dice_loss(logits, target)


def ram_training_loss(
    model: RAMNet, batch: Mapping[str, Tensor], state: Mapping[str, Any]
) -> tuple[Tensor, dict]:
    """One iteration's RAM-DSIR (+ SgCG) loss; the trainer's ``Family.training_loss``.

    Parameters
    ----------
    model : RAMNet
        Built with ``training_heads=True``.
    batch : dict
        ``image`` (B,3,s,s) in [0,1], ``target`` (B,s,s) long (255 = ignore), ``domain`` (B,).
    state : dict
        ``generator``, ``domains`` (number of source domains), ``cqg``, ``input_spec``.

    Returns
    -------
    loss : Tensor, scalar
    logs : dict of str to float
        ``seg``, ``seg_ram``, ``kl``, ``restoration`` (+ ``sgcg``, ``cqg_*``), ``cross_domain``
        (fraction of images whose RAM partner came from another domain).
    """
    cfg = model.config
    n_domains = int(state.get("domains", 1))
    if n_domains > cfg.num_domains:
        raise InputError(
            f"the training data has {n_domains} source domains but this {type(cfg).__name__} has "
            f"num_domains={cfg.num_domains}; pass --config '{{\"num_domains\": {n_domains}}}'"
        )
    spec = state["input_spec"]
    gen = state["generator"]
    x, y, dom = batch["image"], batch["target"], batch["domain"]
    logs: dict[str, float] = {}
    if state.get("cqg"):
        x, x2, y = cqg_views(x, y, gen)
        out = model.training_forward(normalise_input(x, spec))
        logits2 = model(normalise_input(x2, spec))
        base, parts = cqg_loss(out["logits"], logits2, y, _seg)
        logs.update({f"cqg_{k}": v for k, v in parts.items()})
    else:
        out = model.training_forward(normalise_input(x, spec))
        base = _seg(out["logits"], y)
    logs["seg"] = float(base.detach())
    ram = random_amplitude_mixup(x, dom, gen, ratio=cfg.mix_ratio)
    out_r = model.training_forward(normalise_input(ram.images, spec))
    seg_r = _seg(out_r["logits"], y)
    kl = symmetric_kl(out["logits"], out_r["logits"], y)
    rest, _ = restoration_loss(model.restore(out_r["deepest"], dom), x, dom)
    loss = base + seg_r + cfg.kl_weight * kl + cfg.restoration_weight * rest
    logs.update(
        {
            "seg_ram": float(seg_r.detach()),
            "kl": float(kl.detach()),
            "restoration": float(rest.detach()),
            "cross_domain": float(ram.cross_domain.float().mean()),
        }
    )
    if isinstance(cfg, RAMSgCGConfig) and model.sgcg is not None:
        labels = downsample_labels(y, cfg.sgcg_stride, cfg.num_classes)
        views = [
            _pixels(model.project(o["features"]), labels, cfg.sgcg_max_pixels, gen)
            for o in (out, out_r)
        ]
        for q, lab in views:  # statistics from detached features, before the loss
            model.sgcg.stats.update(q, lab)
        feat = sum(model.sgcg(q, lab, update=False) for q, lab in views)
        loss = loss + cfg.sgcg_weight * feat
        logs["sgcg"] = float(feat.detach())
    return loss, logs


# ------------------------------------------------------------------------- bundle integration
def finish_training(
    bundle: Any, domains: Sequence[tuple[str, Any]], state: Mapping[str, Any]
) -> None:
    """Move the training-only parts out of the weights (``Family.finish_training``).

    The DSIR decoder goes to ``restoration.safetensors``, the SgCG projection and statistics to
    ``sgcg.safetensors``; the config records ``training_heads = false`` and the provenance the
    domain name of every restoration BatchNorm index (``domain_bn``).
    """
    model = bundle.model
    for name, tensors in model.drop_training_heads().items():
        bundle.set_extra(name, tensors)
    bundle.manifest["config"]["training_heads"] = False
    bundle.manifest.setdefault("provenance", {})["domain_bn"] = [str(n) for n, _ in domains]


def training_model_from_bundle(bundle: Any) -> RAMNet:
    """Rebuild the full training model (segmenter + DSIR + SgCG parts) from a ``ram*`` bundle.

    Raises
    ------
    InputError
        If the bundle is not a ``ram``/``ram-sgcg`` bundle or lacks ``restoration.safetensors``.
    """
    if bundle.family_name not in ("ram", "ram-sgcg"):
        raise InputError(
            f"bundle {bundle.name!r} is a {bundle.family_name!r} model, not ram/ram-sgcg"
        )
    rest = bundle.extra("restoration")
    if rest is None:
        raise InputError(
            f"bundle {bundle.name!r} has no restoration.safetensors; retrain it with dgseg train"
        )
    cfg = bundle.family.make_config({**bundle.config, "training_heads": True})
    model = RAMNet(cfg)
    missing = model.load_state_dict(bundle.state_dict(), strict=False)
    if missing.unexpected_keys:
        raise InputError(
            f"bundle {bundle.name!r}: unexpected weights {missing.unexpected_keys[:3]}"
        )
    restoration = model.restoration
    if restoration is None:  # training_heads=True always builds it
        raise InputError(f"bundle {bundle.name!r}: the training model has no restoration decoder")
    restoration.load_state_dict(rest)
    sg = bundle.extra("sgcg")
    if model.projection is not None and model.sgcg is not None and sg is not None:
        model.projection.load_state_dict(
            {k[11:]: v for k, v in sg.items() if k.startswith("projection.")}
        )
        model.sgcg.stats.load_state_dict(
            {k[6:]: v for k, v in sg.items() if k.startswith("stats.")}
        )
    return model
