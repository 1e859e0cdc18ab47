"""The two discriminators of local alignment and the tensor maths around them.

From "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation" (Z. Su, K. Yao, X. Yang, Q. Wang, Y. Yan, J. Sun and K. Huang, 2023),
Section III-A-2 and III-B (equations numbered in order of appearance; the stage-two ones are
(6) segmentation, (7) the adversarial loss of D1, (8) that of D2, (9) the overall objective):

* **D1** is a pixel-wise domain discriminator on the segmenter's feature map ``f``. Its output
  (a logit per pixel) gives the *local feature mask* ``m = |D1(f)|`` (range ``[0, inf)``; 0 where
  D1 cannot tell the domain, growing with its confidence), and the target feature map is
  reweighted ``f_hat = f + f * expand(tanh(m))`` before the label predictor (``tanh`` maps the mask
  to ``[0, 1)``, so ``f <= f_hat < 2 f`` element-wise in magnitude).
* **D2** is an output-space discriminator on the softmax maps.

Both are trained to say *source* (label 1) for source maps and *target* (label 0) for target maps
(the log terms of eqs. 7 and 8); the segmenter is trained to make target maps look like source
(label 1, the non-saturating form of the min-max of eq. 9, as AdaptSegNet does: Tsai et al.,
"Learning to Adapt Structured Output Space for Semantic Segmentation", CVPR 2018), each with weight
0.01 (``lambda_d1 = lambda_d2 = 0.01`` in the paper's implementation details).

The paper gives no layer table for these two (its Table VII is the style-transfer stage's image
discriminator), so the layers here are our choice, small enough for a CPU: D1 is three
convolutions of ``kernel`` 1 (default: a per-pixel MLP on the feature vector, literally
pixel-wise, and cheap enough to fit in seconds on a CPU; the features it reads already see a
wide context) or 3 (a 5-pixel receptive field, ``D1Config.kernel``), at full resolution so the
mask is per pixel; D2 is three 4x4 stride-2 convolutions (a patch classifier on the prediction's
shape, as AdaptSegNet's output-space discriminator, narrower).

Functions first, modules second: :func:`local_feature_mask`, :func:`reweight_features` and
:func:`adversarial_bce` are the maths; the modules only hold weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Label of source maps for both discriminators (target maps: 0).
SOURCE_LABEL = 1.0
TARGET_LABEL = 0.0
#: Default adversarial weights lambda_d1 and lambda_d2 of eq. (9) (paper: 0.01 each).
DEFAULT_D1_WEIGHT = 0.01
DEFAULT_D2_WEIGHT = 0.01
#: Slope of the leaky ReLUs (as in the paper's image discriminator, Table VII: LReLU).
LEAKY_SLOPE = 0.2
#: Largest hidden width a bundle may ask for (a bundle is data: never let it allocate freely).
MAX_HIDDEN = 512
MAX_FEATURES = 4096


@dataclass(frozen=True)
class D1Config:
    """Architecture of the pixel-wise feature discriminator (stored in the bundle's JSON).

    Attributes
    ----------
    in_channels : int
        Channels F of the feature map the family's ``features_and_infer`` returns.
    hidden : int
        Width of the two hidden layers.
    kernel : int
        1 (per-pixel MLP, default) or 3 (two 3x3 convolutions, then a 1x1).
    """

    in_channels: int
    hidden: int = 32
    kernel: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.in_channels, int) and 1 <= self.in_channels <= MAX_FEATURES):
            raise ValueError(f"D1 in_channels must be an integer in [1, {MAX_FEATURES}]")
        if not (isinstance(self.hidden, int) and 1 <= self.hidden <= MAX_HIDDEN):
            raise ValueError(f"D1 hidden must be an integer in [1, {MAX_HIDDEN}]")
        if self.kernel not in (1, 3):
            raise ValueError("D1 kernel must be 1 or 3")

    def as_dict(self) -> dict[str, int]:
        """JSON-friendly form."""
        return asdict(self)


class PixelDiscriminator(nn.Module):
    """D1: ``(B, F, H, W)`` features -> ``(B, 1, H, W)`` domain logits (source > 0 > target)."""

    def __init__(self, config: D1Config) -> None:
        super().__init__()
        self.config = config
        h, k = config.hidden, config.kernel
        self.net = nn.Sequential(
            nn.Conv2d(config.in_channels, h, k, padding=k // 2),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(h, h, k, padding=k // 2),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(h, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class OutputDiscriminator(nn.Module):
    """D2: ``(B, K, H, W)`` softmax maps -> ``(B, 1, H/8, W/8)`` domain logits per patch."""

    def __init__(self, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(num_classes, hidden, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(hidden, 2 * hidden, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(2 * hidden, 1, 4, stride=2, padding=1),
        )

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return self.net(probabilities)


def local_feature_mask(d1: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The local feature mask ``m = |D1(f)|`` ``(B, 1, H, W)``, in ``[0, inf)``.

    0 where D1 cannot tell the feature's domain; large where it is sure (a large local domain gap
    for a target image). Mind the Gap, Section III-A-2.
    """
    return d1(features).abs()


def reweight_features(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``f_hat = f + f * expand(tanh(m))``: ``mask`` ``(B, 1, H, W)`` broadcast over F channels."""
    return features + features * torch.tanh(mask)


def display_mask(mask: torch.Tensor) -> torch.Tensor:
    """``tanh(m)`` in ``[0, 1)``: the weight the reweighting adds, and what predictions show."""
    return torch.tanh(mask)


def adversarial_bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Mean binary cross-entropy of discriminator ``logits`` against a constant ``label``."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))


def discriminator_loss(d: nn.Module, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The discriminator's side of eqs. (7)/(8): source maps -> 1, target maps -> 0 (inputs detached)."""
    return 0.5 * (adversarial_bce(d(source.detach()), SOURCE_LABEL)
                  + adversarial_bce(d(target.detach()), TARGET_LABEL))


def fooling_loss(d: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """The segmenter's side of eqs. (7)/(8): target maps should be taken for source (label 1).

    ``d``'s parameters get no gradient from this loss (they are excluded for the call), only the
    segmenter through ``target``.
    """
    flags = [p.requires_grad for p in d.parameters()]
    for p in d.parameters():
        p.requires_grad_(False)
    try:
        return adversarial_bce(d(target), SOURCE_LABEL)
    finally:
        for p, flag in zip(d.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def domain_accuracy(logits_source: torch.Tensor, logits_target: torch.Tensor) -> float:
    """Balanced per-pixel accuracy of a discriminator (source > 0, target < 0), in [0, 1]."""
    acc_s = (logits_source > 0).float().mean()
    acc_t = (logits_target < 0).float().mean()
    return float(0.5 * (acc_s + acc_t))
