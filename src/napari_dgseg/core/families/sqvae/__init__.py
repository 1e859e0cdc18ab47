"""The ``sqvae`` family: a U-Net with a class-grouped SQ-VAE codebook for domain generalisation.

Its own training loss (every SQ-VAE term, CQG optional), post-processing (code-index maps and
code-usage histograms), ``finish_training`` (the training code usage and shift threshold of
:mod:`napari_dgseg.core.codebook`) and capabilities ``codebook`` and ``mani``.
"""

from __future__ import annotations

from napari_dgseg.core.families.sqvae.model import (
    SQVAE,
    SQVAEConfig,
    features_and_infer,
    features_and_outputs,
    finish_training,
    sqvae_postprocess,
    sqvae_training_loss,
)
from napari_dgseg.core.family import Family, loss_from_training_loss

__all__ = ["FAMILY"]

FAMILY = Family(
    name="sqvae",
    config_cls=SQVAEConfig,
    build=SQVAE,
    description="U-Net + class-grouped SQ-VAE codebook for domain generalisation (Saito & Hotta 2025)",
    output="semantic",
    infer_outputs={
        "logits": "dense",
        "codebook_indices": "discrete",
        "domain_code_indices": "discrete",
    },
    capabilities=frozenset({"codebook", "mani"}),
    features_and_outputs=features_and_outputs,
    features_and_infer=features_and_infer,
    loss_from_outputs=loss_from_training_loss(sqvae_training_loss),
    training_loss=sqvae_training_loss,
    postprocess=sqvae_postprocess,
    finish_training=finish_training,
)
