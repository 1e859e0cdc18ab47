"""Re-derive masks from kept probabilities: a foreground threshold and a minimum object size.

A segmentation's labels come from its probabilities by a fixed rule (argmax for semantic models,
the family's instance post-processing for instance models). Tuning that rule away from the
default removes false positives the model is unsure of (keratin, stroma) without running the
network again: :func:`relabel` is a pure function of the kept probabilities.

The rule is the same for every family:

* a pixel is foreground when its foreground probability ``1 - p(background)`` is at least
  ``threshold`` (for two classes that is ``p(class 1) >= threshold``, so ``0.5`` gives the argmax);
* a foreground pixel of a semantic model takes the most probable non-background class;
* of an instance model, it keeps its instance id from the model's own instance map (instances are
  not re-split, only trimmed);
* objects (8-connected components of each class, or instances) smaller than ``min_size`` pixels
  become background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.postprocess import remove_small

__all__ = ["foreground_probability", "relabel"]

_EIGHT = np.ones((3, 3), dtype=bool)


def foreground_probability(probabilities: np.ndarray) -> np.ndarray:
    """``1 - p(background)`` of ``(K, H, W)`` class probabilities (class 0 is background).

    Parameters
    ----------
    probabilities : np.ndarray
        ``(K, H, W)`` with ``K >= 2``, or ``(H, W)`` already the foreground probability.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in ``[0, 1]``.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim == 2:
        return p
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"probabilities must be (K, H, W) with K >= 2 or (H, W), got {p.shape}")
    return np.clip(1.0 - p[0], 0.0, 1.0) if p.shape[0] > 2 else p[1]


def _drop_small_components(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the 8-connected components of each class smaller than ``min_size`` pixels."""
    out = labels.copy()
    for cls in np.unique(labels):
        if cls == 0:
            continue
        comp, n = ndi.label(labels == cls, structure=_EIGHT)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[comp]] = 0
    return out


def relabel(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 0,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Labels from probabilities with a foreground ``threshold`` and a minimum object size.

    Parameters
    ----------
    probabilities : np.ndarray
        ``(K, H, W)`` class probabilities (class 0 background), as in
        :attr:`napari_dgseg.core.predict.Prediction.probabilities`; for an instance model its
        foreground map (HoVer-Net's NP probabilities ``(2, H, W)``).
    threshold : float
        Smallest foreground probability ``1 - p(background)`` of a foreground pixel, in
        ``(0, 1]``.
    min_size : int
        Objects (connected components of one class, or instances) with fewer pixels become
        background; ``0`` or ``1`` keeps all.
    instances : np.ndarray, optional
        ``(H, W)`` instance ids of an instance model; when given, the result keeps these ids on
        the foreground instead of class ids.

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 class ids (semantic) or instance ids (``instances`` given).

    Raises
    ------
    ValueError
        If ``threshold`` is outside ``(0, 1]``, ``min_size`` is negative or shapes differ.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold {threshold} must be in (0, 1]")
    if int(min_size) < 0:
        raise ValueError(f"min_size {min_size} must be >= 0")
    p = np.asarray(probabilities, dtype=np.float32)
    fg = foreground_probability(p) >= float(threshold)
    if instances is not None:
        inst = np.asarray(instances)
        if inst.shape != fg.shape:
            raise ValueError(f"instances {inst.shape} and probabilities {fg.shape} differ in shape")
        labels = np.where(fg, inst, 0).astype(np.int32)
        return remove_small(labels, int(min_size))
    if p.ndim == 2 or p.shape[0] == 2:
        labels = fg.astype(np.int32)
    else:
        labels = np.where(fg, p[1:].argmax(axis=0) + 1, 0).astype(np.int32)
    return _drop_small_components(labels, int(min_size)) if min_size > 1 else labels
