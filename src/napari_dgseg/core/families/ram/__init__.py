"""The ``ram`` and ``ram-sgcg`` families: RAM-DSIR multi-source training, optionally with SgCG.

One folder for both: the network (:mod:`.model`), random amplitude mixup (:mod:`.augment`), the
symmetric-KL and restoration losses (:mod:`.loss`) and the SgCG contrastive bound
(:mod:`.sgcg`). Inference is the plain U-Net segmenter, so post-processing and MaNi adaptation
use the :class:`~napari_dgseg.core.family.Family` defaults; adaptation's supervised term is the
full RAM training loss.
"""

from __future__ import annotations

from napari_dgseg.core.families.ram.model import (
    RAMConfig,
    RAMNet,
    RAMSgCGConfig,
    finish_training,
    ram_training_loss,
)
from napari_dgseg.core.family import Family, loss_from_training_loss

__all__ = ["RAM", "RAM_SGCG"]

RAM = Family(
    name="ram",
    config_cls=RAMConfig,
    build=RAMNet,
    description="U-Net trained on several source domains with RAM-DSIR (amplitude mixup + "
    "domain-specific restoration) to generalise to unseen sites",
    output="semantic",
    capabilities=frozenset({"mani"}),
    loss_from_outputs=loss_from_training_loss(ram_training_loss),
    training_loss=ram_training_loss,
    finish_training=finish_training,
)

RAM_SGCG = Family(
    name="ram-sgcg",
    config_cls=RAMSgCGConfig,
    build=RAMNet,
    description="RAM-DSIR plus the SgCG closed-form pixel contrastive loss (SgCG, ICLR 2025 submission)",
    output="semantic",
    capabilities=frozenset({"mani"}),
    loss_from_outputs=loss_from_training_loss(ram_training_loss),
    training_loss=ram_training_loss,
    finish_training=finish_training,
)
