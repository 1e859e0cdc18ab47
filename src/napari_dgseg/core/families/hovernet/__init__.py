"""The ``hovernet`` family: HoVer-Net nucleus instances, adaptable with MaNi.

One folder: the network (:mod:`.model`), the NP/HV targets derived from instance labels
(:mod:`.targets`), the HoVer-Net loss (:mod:`.loss`) and the watershed post-processing
(:mod:`.postprocess`). Training batches carry instance ids (``target_kind="instance"``);
predictions are instances (``output="instances"``); MaNi pools the NP branch's features.
"""

from __future__ import annotations

from napari_dgseg.core.families.hovernet.model import (
    HoVerNet,
    HoVerNetConfig,
    adaptation_loss,
    features_and_infer,
    features_and_outputs,
    postprocess,
    training_loss,
)
from napari_dgseg.core.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="hovernet",
    config_cls=HoVerNetConfig,
    build=HoVerNet,
    description="HoVer-Net nucleus instances (NP + HV maps, watershed post-processing)",
    output="instances",
    infer_outputs={"logits": "dense", "np": "dense", "hv": "dense", "tp": "dense"},
    capabilities=frozenset({"mani"}),
    features_and_outputs=features_and_outputs,
    features_and_infer=features_and_infer,
    loss_from_outputs=adaptation_loss,
    training_loss=training_loss,
    target_kind="instance",
    postprocess=postprocess,
    flip_signs={"hv": ("x", "y")},  # horizontal and vertical distances to the nucleus centre
)
