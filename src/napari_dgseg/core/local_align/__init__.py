"""Local feature masks and local alignment (Mind the Gap; Su, Yao, Yang, Wang, Yan, Sun & Huang, 2023).

* :mod:`.discriminators`: D1 (pixel-wise, features), D2 (output space), the mask
  ``m = |D1(f)|``, the reweighting ``f + f * tanh(m)``, the adversarial losses.
* :mod:`.adaptation`: :class:`LocalAligner`, used by ``adapt(..., local_alignment=True,
  output_discriminator=True)`` (:func:`napari_dgseg.core.train.adapt.adapt`).
* :mod:`.bundled`: D1 inside a bundle (``local_align.safetensors`` + manifest entry + the
  ``local_mask`` capability) and the model tiled inference runs.
* :mod:`.gap_map`: the domain-gap map, a D1 fitted to a frozen model on its source replay set
  against one image.

``docs/local-masks.md`` describes the method, the choices and the cost.
"""

from napari_dgseg.core.local_align.bundled import (
    attach_d1,
    has_d1,
    inference_model,
    load_d1,
    supports_local_mask,
)
from napari_dgseg.core.local_align.discriminators import (
    D1Config,
    OutputDiscriminator,
    PixelDiscriminator,
    local_feature_mask,
    reweight_features,
)

__all__ = [
    "D1Config",
    "OutputDiscriminator",
    "PixelDiscriminator",
    "attach_d1",
    "has_d1",
    "inference_model",
    "load_d1",
    "local_feature_mask",
    "reweight_features",
    "supports_local_mask",
]
