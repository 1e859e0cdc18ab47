"""Local alignment during adaptation: D1 and D2 trained against the segmenter.

:class:`LocalAligner` is what :func:`napari_dgseg.core.train.adapt.adapt_steps` calls when
``local_alignment`` (D1: local feature mask, target-feature reweighting, feature-space
adversarial loss) and/or ``output_discriminator`` (D2: output-space adversarial loss) are on.
Per iteration (after the warm-up):

1. target flow: ``f_t = S_E(x_t)``, ``m = |D1(f_t)|``, ``p_t = S_P(f_t + f_t * tanh(m))``
   (with D1; ``p_t = S_P(f_t)`` without), through the family's ``features_and_infer``;
2. segmenter loss ``lambda_d1 * BCE(D1(f_t), source) + lambda_d2 * BCE(D2(softmax p_t), source)``
   added to the supervised (and MaNi) loss;
3. discriminator step: D1 on ``f_s`` vs ``f_t``, D2 on ``softmax p_s`` vs ``softmax p_t``
   (Adam, betas 0.9/0.99 as in the paper).

Choices where Mind the Gap (Su et al., 2023) is silent: the mask is detached in the reweighting
(it weights the features, the segmenter is not trained to move it; D1 learns only from its own
loss), D1's and D2's learning rate is 1e-3 (at AdaptSegNet's 1e-4 D1 stayed at chance through
our short runs), and the mixed BatchNorm mode (one pass on source + target) is refused because
the target flow needs its own pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.local_align.bundled import LocalMaskModel, attach_d1, check_family
from napari_dgseg.core.local_align.discriminators import (
    DEFAULT_D1_WEIGHT,
    DEFAULT_D2_WEIGHT,
    D1Config,
    OutputDiscriminator,
    PixelDiscriminator,
    discriminator_loss,
    domain_accuracy,
    fooling_loss,
    local_feature_mask,
    reweight_features,
)

#: Learning rate of D1 and D2 during adaptation.
DISCRIMINATOR_LR = 1e-3
PAPER = ("Mind the Gap (Su, Yao, Yang, Wang, Yan, Sun & Huang, 2023): local alignment with a "
         "pixel-wise feature discriminator D1 (mask m = |D1(f)|, f_hat = f + f * tanh(m)) and an "
         "output-space discriminator D2")


class LocalAligner:
    """D1 and/or D2 with their optimiser, for one adaptation run.

    Parameters
    ----------
    family : Family
        The segmenter's family (its ``features_and_infer`` runs the target flow).
    feature_channels, num_classes : int
        Channels of the feature map and of the logits.
    local_alignment : bool
        D1: mask, reweighting and feature-space adversarial loss.
    output_discriminator : bool
        D2: output-space adversarial loss.
    d1_weight, d2_weight : float
        ``lambda_d1``, ``lambda_d2`` of eq. (9) (paper: 0.01 each).
    device : torch.device
    d1_hidden : int
        Width of D1.
    """

    def __init__(self, family: Any, feature_channels: int, num_classes: int, *,
                 local_alignment: bool, output_discriminator: bool,
                 d1_weight: float = DEFAULT_D1_WEIGHT, d2_weight: float = DEFAULT_D2_WEIGHT,
                 device: Any = "cpu", d1_hidden: int = 32) -> None:
        check_family(family)
        for name, w in (("d1_weight", d1_weight), ("d2_weight", d2_weight)):
            if not (w >= 0.0) or w != w:
                raise InputError(f"{name} must be a number >= 0 (got {w})")
        self.family = family
        self.d1 = (PixelDiscriminator(D1Config(int(feature_channels), int(d1_hidden))).to(device)
                   if local_alignment else None)
        self.d2 = OutputDiscriminator(int(num_classes)).to(device) if output_discriminator else None
        self.d1_weight, self.d2_weight = float(d1_weight), float(d2_weight)
        params = [p for d in (self.d1, self.d2) if d is not None for p in d.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=DISCRIMINATOR_LR, betas=(0.9, 0.99))

    # ------------------------------------------------------------------ per iteration
    def target_flow(self, model: nn.Module, xt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(f_t, infer maps)`` of the target batch, the predictor reading ``f_hat`` with D1."""
        d1 = self.d1

        def hook(f: torch.Tensor) -> torch.Tensor:
            if d1 is None:
                return f
            return reweight_features(f, local_feature_mask(d1, f).detach())

        return self.family.features_and_infer(model, xt, hook)

    def segmenter_loss(self, f_t: torch.Tensor, logits_t: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``lambda_d1 * L_adv^D1 + lambda_d2 * L_adv^D2`` on the segmenter's side (eqs. 7-9)."""
        loss = torch.zeros((), device=f_t.device)
        logs: dict[str, float] = {}
        if self.d1 is not None:
            adv1 = fooling_loss(self.d1, f_t)
            loss = loss + self.d1_weight * adv1
            logs["adv_d1"] = float(adv1.detach())
        if self.d2 is not None:
            adv2 = fooling_loss(self.d2, torch.softmax(logits_t, dim=1))
            loss = loss + self.d2_weight * adv2
            logs["adv_d2"] = float(adv2.detach())
        return loss, logs

    def discriminator_step(self, f_s: torch.Tensor, logits_s: torch.Tensor, f_t: torch.Tensor,
                           logits_t: torch.Tensor) -> dict[str, float]:
        """One Adam step of D1/D2 on detached maps; returns their losses and D1's accuracy."""
        logs: dict[str, float] = {}
        loss = torch.zeros((), device=f_s.device)
        if self.d1 is not None:
            l1 = discriminator_loss(self.d1, f_s, f_t)
            loss = loss + l1
            logs["d1"] = float(l1.detach())
            with torch.no_grad():
                logs["d1_accuracy"] = domain_accuracy(self.d1(f_s), self.d1(f_t))
                logs["mask_mean"] = float(torch.tanh(self.d1(f_t).abs()).mean())
        if self.d2 is not None:
            l2 = discriminator_loss(self.d2, torch.softmax(logits_s.detach(), dim=1),
                                    torch.softmax(logits_t.detach(), dim=1))
            loss = loss + l2
            logs["d2"] = float(l2.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logs

    # ------------------------------------------------------------------ results
    def scored_model(self, model: nn.Module) -> nn.Module:
        """What predictions of the adapted bundle will run (selection and previews score this)."""
        if self.d1 is None:
            return model
        return LocalMaskModel(model, self.d1, self.family.features_and_infer, reweight=True)

    def attach(self, bundle: Any) -> None:
        """Store D1 in the adapted bundle (D2 is a training-only critic and is not kept)."""
        if self.d1 is None:
            return
        attach_d1(bundle, self.d1.cpu().eval(), reweight=True, info={
            "method": PAPER,
            "weights": {"d1": self.d1_weight, "d2": self.d2_weight if self.d2 else None},
            "output_discriminator": self.d2 is not None,
        })

    def provenance(self) -> dict[str, Any]:
        """What goes into the adapted bundle's provenance."""
        return {
            "method": PAPER,
            "d1": self.d1 is not None,
            "d2": self.d2 is not None,
            "d1_weight": self.d1_weight if self.d1 is not None else None,
            "d2_weight": self.d2_weight if self.d2 is not None else None,
            "discriminator_optimizer": f"Adam lr {DISCRIMINATOR_LR}, betas (0.9, 0.99)",
            "d1_config": self.d1.config.as_dict() if self.d1 is not None else None,
        }
