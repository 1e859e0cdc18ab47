"""The one record every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One labelled (or unlabelled) image.

    Attributes
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray or None
        ``(H, W)`` int32. Instance ids (0 = background) for nuclei, class ids for semantic data
        (vessels: 0/1). None for unlabelled target images.
    name : str
        A stable identifier (file stem or ``dataset/index``).
    mask : np.ndarray or None
        ``(H, W)`` bool region of interest (fundus field of view), None where everything counts.
    domain : str or None
        The domain (scanner, site, camera) the image comes from, where known.
    meta : dict
        Anything else a loader knows (source path, pixel size, instance types).
    """

    image: np.ndarray
    labels: np.ndarray | None
    name: str
    mask: np.ndarray | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict)
