"""AdaIN style-transfer auto-encoder conditioned on a domain label, and its patch discriminator.

Stage 1 ("global alignment") of Su, Yao, Yang, Wang, Yan, Sun & Huang, "Mind the Gap:
Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image Segmentation" (2023),
section III-A-1 and appendix B (tables IV-VII):

* a shared encoder ``G_E`` and decoder ``G_D`` whose every convolution is followed by AdaIN
  (adaptive instance normalisation; Huang & Belongie, "Arbitrary Style Transfer in Real-time with
  Adaptive Instance Normalization", 2017) and ReLU;
* the AdaIN parameters are not taken from a style image: one MLP per network (table V:
  ``FC(n_domains, h) - ReLU - FC(h, h) - ReLU - FC(h, n_s)``) maps the one-hot *domain label*
  to all of them, so every domain has one learned, average style (the paper's "unified domain
  style");
* content ``c = G_E(x, d)``, image ``x' = G_D(c, d')``: ``d' = d`` reconstructs, ``d' != d``
  transfers the style;
* a Markovian (patch) discriminator with a shared body and one output branch per domain
  (table VII), ``D(x | d)``.

Choices where the paper is vague (docs/style-transfer.md lists them): AdaIN is eq. (3) of the
appendix with its two parameters in the usual order (``sigma_y * norm(x) + mu_y``; the printed
equation swaps them) and the scale predicted as ``1 + output`` so that a fresh network starts
near plain instance normalisation; the residual blocks hold one convolution each, as table IV
lists; the decoder ends in a 7x7 convolution and ``tanh`` (the table's "ReLU, Tanh" would make
negative intensities unreachable); images are RGB in [-1, 1] instead of the paper's one MRI/CT
channel; encoder and decoder each have their own MLP.

Function first, module second: :func:`adain` is the tensor maths; :class:`AdaIN` wraps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_dgseg.core.errors import InputError

#: Domain labels of a two-domain style model: index 0 is the source, 1 the target.
SOURCE, TARGET = 0, 1


@dataclass(frozen=True)
class StyleConfig:
    """Architecture of a style-transfer model (frozen; travels in the style bundle's JSON).

    Attributes
    ----------
    channels : int
        Width of the first convolution; doubles at each down-sampling (paper: 64).
    n_down : int
        Stride-2 convolutions in the encoder (transposed ones in the decoder; paper: 2).
    n_res : int
        Residual blocks in the encoder bottleneck and again in the decoder (paper: 4).
    mlp_dim : int
        Hidden width of the domain-label MLPs (paper: 256).
    n_domains : int
        Number of domain labels (2: source and target).
    disc_channels : int
        Width of the discriminator's first convolution (paper: 64; then x2, x4, x8).
    in_channels : int
        Image channels (3: RGB).
    """

    channels: int = 16
    n_down: int = 2
    n_res: int = 2
    mlp_dim: int = 64
    n_domains: int = 2
    disc_channels: int = 16
    in_channels: int = 3

    @property
    def divisor(self) -> int:
        """Image sides must be multiples of this (``2 ** n_down``)."""
        return 2 ** self.n_down

    def to_dict(self) -> dict[str, int]:
        """Plain dict (JSON) of the config."""
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "style config") -> StyleConfig:
        """Config from a dict; unknown keys or bad values raise :class:`InputError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{source}: unknown style config keys {unknown}; valid: {sorted(names)}")
        values = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{source}: style config {key!r} must be a whole number (got {value!r})")
            values[key] = value
        cfg = cls(**values)
        limits = {"channels": (1, 512), "n_down": (0, 5), "n_res": (0, 16), "mlp_dim": (1, 2048),
                  "n_domains": (2, 16), "disc_channels": (1, 512), "in_channels": (1, 4)}
        for key, (lo, hi) in limits.items():
            v = getattr(cfg, key)
            if not lo <= v <= hi:
                raise InputError(f"{source}: style config {key}={v} is outside [{lo}, {hi}]")
        return cfg


#: Presets: ``light`` trains on a CPU in minutes (128 px crops); ``full`` is the paper's
#: architecture (tables IV-VII) for GPU users.
PRESETS: dict[str, StyleConfig] = {
    "light": StyleConfig(channels=16, n_down=2, n_res=2, mlp_dim=64, disc_channels=16),
    "full": StyleConfig(channels=64, n_down=2, n_res=4, mlp_dim=256, disc_channels=64),
}


def get_preset(name: str) -> StyleConfig:
    """The preset config called ``name``; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise InputError(f"unknown style preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------- AdaIN
def adain(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation (Mind the Gap, appendix eq. 3; Huang & Belongie 2017).

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` features.
    scale, shift : torch.Tensor
        ``(B, C)`` style parameters (``sigma_y`` and ``mu_y``).
    eps : float
        Added to the variance.

    Returns
    -------
    torch.Tensor
        ``scale * (x - mu(x)) / sigma(x) + shift`` with the per-sample, per-channel spatial mean
        and (biased) standard deviation of eq. 2.
    """
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    normed = (x - mu) * torch.rsqrt(var + eps)
    return normed * scale[:, :, None, None] + shift[:, :, None, None]


class AdaIN(nn.Module):
    """:func:`adain` as a module: ``forward(x, params)`` with ``params`` ``(B, 2C)`` = scale, shift.

    The scale is ``1 + params[:, :C]`` (a zero MLP output is plain instance normalisation).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @property
    def n_params(self) -> int:
        return 2 * self.channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        c = self.channels
        return adain(x, 1.0 + params[:, :c], params[:, c : 2 * c])


class DomainMLP(nn.Sequential):
    """Table V: one-hot domain label -> all AdaIN parameters of one network."""

    def __init__(self, n_domains: int, hidden: int, n_params: int) -> None:
        super().__init__(
            nn.Linear(n_domains, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, n_params),
        )
        self.n_domains = n_domains


class _ConvAdaIN(nn.Module):
    """Convolution (or transposed convolution), AdaIN, ReLU; ``residual`` adds the input."""

    def __init__(self, conv: nn.Module, channels: int, residual: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.norm = AdaIN(channels)
        self.residual = residual

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(x), params))
        return x + y if self.residual else y


def _split_params(layers: nn.ModuleList, params: torch.Tensor) -> list[torch.Tensor]:
    sizes = [layer.norm.n_params for layer in layers]
    return list(torch.split(params, sizes, dim=1))


class _AdaINStack(nn.Module):
    """Layers that all read their AdaIN parameters from one domain MLP."""

    layers: nn.ModuleList
    mlp: DomainMLP

    def _style(self, domain: torch.Tensor) -> list[torch.Tensor]:
        onehot = F.one_hot(domain.long(), self.mlp.n_domains).to(self.mlp[0].weight.dtype)
        return _split_params(self.layers, self.mlp(onehot))


class StyleEncoder(_AdaINStack):
    """``G_E``: 7x7 conv, ``n_down`` stride-2 3x3 convs, ``n_res`` residual blocks (table IV)."""

    def __init__(self, cfg: StyleConfig) -> None:
        super().__init__()
        ch = cfg.channels
        layers = [_ConvAdaIN(nn.Conv2d(cfg.in_channels, ch, 7, 1, 3), ch)]
        for _ in range(cfg.n_down):
            layers.append(_ConvAdaIN(nn.Conv2d(ch, 2 * ch, 3, 2, 1), 2 * ch))
            ch *= 2
        layers += [_ConvAdaIN(nn.Conv2d(ch, ch, 3, 1, 1), ch, residual=True) for _ in range(cfg.n_res)]
        self.layers = nn.ModuleList(layers)
        self.out_channels = ch
        self.mlp = DomainMLP(cfg.n_domains, cfg.mlp_dim, sum(m.norm.n_params for m in layers))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Content ``(B, C', H / 2**n_down, W / 2**n_down)`` of images ``x`` of domains ``domain``."""
        for layer, p in zip(self.layers, self._style(domain), strict=True):
            x = layer(x, p)
        return x


class StyleDecoder(_AdaINStack):
    """``G_D``: ``n_res`` residual blocks, ``n_down`` transposed convs, 7x7 conv + tanh (table VI)."""

    def __init__(self, cfg: StyleConfig) -> None:
        super().__init__()
        ch = cfg.channels * 2 ** cfg.n_down
        layers = [_ConvAdaIN(nn.Conv2d(ch, ch, 3, 1, 1), ch, residual=True) for _ in range(cfg.n_res)]
        for _ in range(cfg.n_down):
            layers.append(_ConvAdaIN(nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1), ch // 2))
            ch //= 2
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv2d(ch, cfg.in_channels, 7, 1, 3)
        self.mlp = DomainMLP(cfg.n_domains, cfg.mlp_dim, sum(m.norm.n_params for m in layers))

    def forward(self, c: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] from content ``c`` rendered in the style of ``domain``."""
        for layer, p in zip(self.layers, self._style(domain), strict=True):
            c = layer(c, p)
        return torch.tanh(self.head(c))


class StyleGenerator(nn.Module):
    """The synthesis subnet ``G = (G_E, G_D)``; images in [-1, 1], ``divisor`` | H, W."""

    def __init__(self, cfg: StyleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = StyleEncoder(cfg)
        self.decoder = StyleDecoder(cfg)

    def encode(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, domain)

    def decode(self, c: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.decoder(c, domain)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """``x_ij = G_D(G_E(x_i, d_i), d_j)``: images of domains ``src`` rendered as ``dst``."""
        return self.decode(self.encode(x, src), dst)


class PatchDiscriminator(nn.Module):
    """Table VII: shared body of 4x4 convolutions, one 4x4 output branch per domain.

    ``forward(x, domain)`` returns ``(B, 1, h, w)`` real/fake logits of the branch of each
    sample's domain (a Markovian discriminator: each logit judges one patch; Isola et al. 2017).
    """

    def __init__(self, cfg: StyleConfig) -> None:
        super().__init__()
        ch = cfg.disc_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for stride in (2, 2, 1):
            layers += [nn.Conv2d(ch, 2 * ch, 4, stride, 1), nn.InstanceNorm2d(2 * ch),
                       nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.branches = nn.ModuleList(nn.Conv2d(ch, 1, 4, 1, 1) for _ in range(cfg.n_domains))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        outs = torch.stack([branch(h) for branch in self.branches], dim=1)  # (B, D, 1, h, w)
        return outs[torch.arange(x.shape[0], device=x.device), domain.long()]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Gaussian N(0, 0.02) convolution and linear weights, zero biases (the usual GAN start)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
