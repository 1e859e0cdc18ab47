"""Stage-1 losses of Mind the Gap (Su, Yao, Yang, Wang, Yan, Sun & Huang, 2023), section III-B.

With ``x_i`` an image of domain ``d_i``, ``d_j`` the other domain, ``c_i = G_E(x_i, d_i)``:

* image reconstruction ``L_rec_im = |G_D(c_i, d_i) - x_i|_1``;
* content reconstruction ("content loss") ``L_rec_c = |G_E(G_D(c_i, d_j), d_j) - c_i|_1``;
* cycle consistency ``L_cyc = |G_D(G_E(x_ij, d_j), d_i) - x_i|_1`` with ``x_ij = G_D(c_i, d_j)``;
* adversarial ``L_adv = E log D(x_j | d_j) + E log(1 - D(x_ij | d_j))``;

the generator minimises ``20 L_rec_im + 1 L_rec_c + 20 L_cyc + 1 L_adv`` (the paper's weights,
section IV-A-1) and the discriminator maximises ``L_adv``. The paper's equations carry no numbers;
they are cited by name. Both directions (source -> target and target -> source) are trained in one
batch, as the paper's ``i, j`` notation implies. The adversarial terms are written as binary
cross-entropy on logits; the generator uses the non-saturating form ``-log D(x_ij | d_j)``
(Goodfellow et al. 2014), the usual way to minimise the paper's objective without vanishing
gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_dgseg.core.style.model import PatchDiscriminator, StyleGenerator


@dataclass(frozen=True)
class LossWeights:
    """The lambdas of the stage-1 objective (defaults: the paper's 20, 1, 20, 1)."""

    rec_im: float = 20.0
    rec_c: float = 1.0
    cyc: float = 20.0
    adv: float = 1.0


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference."""
    return (a - b).abs().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-L_adv`` for the discriminator: BCE(real -> 1) + BCE(fake -> 0), patch means."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator term ``-log D(x_ij | d_j)`` (BCE(fake -> 1))."""
    return F.softplus(-fake_logits).mean()


@dataclass
class GeneratorPass:
    """Everything one generator pass computed (images in [-1, 1])."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    transferred: torch.Tensor
    other: torch.Tensor


def generator_pass(
    gen: StyleGenerator,
    disc: PatchDiscriminator,
    x: torch.Tensor,
    domain: torch.Tensor,
    weights: LossWeights = LossWeights(),
) -> GeneratorPass:
    """Generator objective on images ``x`` ``(B, C, H, W)`` in [-1, 1] of domains ``domain`` ``(B,)``.

    Every image is reconstructed in its own style and transferred to the other domain
    (``1 - domain``; two domains). Returns the weighted total, each term (``rec_im``, ``rec_c``,
    ``cyc``, ``adv``) and the transferred images ``x_ij`` with their domains (for the
    discriminator step).
    """
    other = 1 - domain
    n = x.shape[0]
    content = gen.encode(x, domain)
    both = gen.decode(torch.cat([content, content]), torch.cat([domain, other]))
    rec, transferred = both[:n], both[n:]
    content_back = gen.encode(transferred, other)
    cycled = gen.decode(content_back, domain)
    terms = {
        "rec_im": l1(rec, x),
        "rec_c": l1(content_back, content),
        "cyc": l1(cycled, x),
        "adv": generator_adversarial_loss(disc(transferred, other)),
    }
    total = (weights.rec_im * terms["rec_im"] + weights.rec_c * terms["rec_c"]
             + weights.cyc * terms["cyc"] + weights.adv * terms["adv"])
    return GeneratorPass(total, terms, transferred, other)
