"""The classical baselines as selectable models: ``classical-he`` and ``classical-fundus``.

No network and no weights: the methods of :mod:`napari_dgseg.core.classical` (haematoxylin colour
deconvolution + Otsu + distance-transform watershed for nuclei; green-channel top-hat + Otsu in
the field of view for vessels) behind the family contract, so an annotator can put the
baseline beside a learned model in the same widget, CLI command and benchmark table. They
segment a whole image at once (:attr:`~napari_dgseg.core.family.Family.segment_image`): their
thresholds are statistics of the whole image, which tiles cannot share.
"""

from __future__ import annotations

from napari_dgseg.core.families.classical.model import (
    ClassicalFundusConfig,
    ClassicalHEConfig,
    NoNetwork,
    segment_fundus,
    segment_he,
)
from napari_dgseg.core.family import Family

__all__ = ["FUNDUS", "HE", "ClassicalFundusConfig", "ClassicalHEConfig"]

HE = Family(
    name="classical-he",
    config_cls=ClassicalHEConfig,
    build=NoNetwork,
    description="classical baseline: haematoxylin colour deconvolution + Otsu, watershed "
    "split of touching nuclei (no training, no weights)",
    output="instances",
    segment_image=segment_he,
    features_and_infer=None,  # no network, no features: no local alignment
)

FUNDUS = Family(
    name="classical-fundus",
    config_cls=ClassicalFundusConfig,
    build=NoNetwork,
    description="classical baseline: green-channel top-hat + Otsu inside the field of view "
    "(no training, no weights)",
    output="semantic",
    segment_image=segment_fundus,
    features_and_infer=None,  # no network, no features: no local alignment
)
