"""Post-processing shared by families: softmax + argmax, semantic masks to instances, cleanup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instance ids covering fewer than ``min_size`` pixels to 0.

    Each id is one object, so a 0/1 mask counts as a single object: split it first with
    :func:`semantic_to_instances` to drop small components.
    """
    if min_size <= 1:
        return labels
    lab = labels.astype(np.int64, copy=False)
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[lab]] = 0
    return out


def semantic_to_instances(
    labels: np.ndarray, foreground: int | None = None, min_size: int = 10
) -> np.ndarray:
    """Instances as 8-connected components of the foreground (class ``foreground`` or any > 0).

    Returns int32 ids 1..n (after removing components smaller than ``min_size`` pixels).
    """
    fg = labels > 0 if foreground is None else labels == foreground
    inst, _ = ndi.label(fg, structure=np.ones((3, 3), dtype=bool))
    inst = remove_small(inst, min_size)
    # relabel contiguously
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(int(inst.max()) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[inst]


def semantic_postprocess(
    maps: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Softmax probabilities and argmax labels from blended ``logits`` ``(K, H, W)``.

    The default :attr:`napari_dgseg.core.family.Family.postprocess`; ``config`` (the bundle's
    config) is accepted for that signature and not used.
    """
    logits = maps["logits"]
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    probabilities = shifted / shifted.sum(axis=0, keepdims=True)
    labels = probabilities.argmax(axis=0).astype(np.int32)
    return {"labels": labels, "probabilities": probabilities.astype(np.float32)}
