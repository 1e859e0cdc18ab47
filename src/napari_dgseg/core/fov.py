"""The field of view of fundus photographs: no vessels in the dark surround or on its rim.

A fundus camera images a bright disc inside a black surround. Networks trained on synthetic fundi
see the rim (a sharp bright-to-dark edge) as a vessel wall and mark fragments along it. For vessel
models, :func:`field_of_view` finds the disc on a thumbnail (brightest channel above
:data:`FOV_LEVEL`, largest connected region, holes filled), shrinks it by a rim margin of
:data:`RIM_FRACTION` of its radius (at least :data:`MIN_RIM_PX` pixels), and
:func:`apply_field_of_view` sets labels outside to background. An image without a dark surround
(a crop inside the eye, a non-fundus image) is left alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "FOV_LEVEL",
    "MIN_RIM_PX",
    "RIM_FRACTION",
    "apply_field_of_view",
    "field_of_view",
    "find_disc",
]

#: Inside the field of view: brightest channel above this (RGB scaled to [0, 1]).
FOV_LEVEL = 0.1
#: Rim margin as a fraction of the field-of-view radius.
RIM_FRACTION = 0.03
#: Smallest rim margin (pixels).
MIN_RIM_PX = 3
#: Thumbnail side used to find the field of view.
_THUMB = 1024


def field_of_view(adapter: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Field of view (minus its rim) of an image, or None when it has no dark surround.

    Parameters
    ----------
    adapter : ImageAdapter
        The image (read through a strided thumbnail of at most ``_THUMB`` pixels a side).

    Returns
    -------
    mask : np.ndarray or None
        ``(H, W)`` bool at the image's size, True inside (rim removed).
    info : dict
        ``found``, ``fraction`` (of the image inside), ``radius_px`` and ``rim_px``.
    """
    h, w = adapter.height, adapter.width
    step = max(1, int(math.ceil(max(h, w) / _THUMB)))
    thumb = adapter.to_rgb_float(np.asarray(adapter.image[::step, ::step]))
    fov, extent, fraction = find_disc(thumb)
    if fov is None:
        return None, {"found": False, "fraction": round(fraction, 4)}
    radius = 0.5 * extent * step
    rim = max(MIN_RIM_PX, int(round(RIM_FRACTION * radius)))
    # the rim is measured from the dark surround only (not from the image border)
    inside = ndi.distance_transform_edt(np.pad(fov, 1, mode="edge"))[1:-1, 1:-1] * step > rim
    ys = np.minimum(np.arange(h) // step, inside.shape[0] - 1)
    xs = np.minimum(np.arange(w) // step, inside.shape[1] - 1)
    mask = inside[ys[:, None], xs[None, :]]
    info = {"found": True, "fraction": round(fraction, 4), "radius_px": round(float(radius), 1),
            "rim_px": rim}
    return mask, info


def find_disc(rgb: np.ndarray) -> tuple[np.ndarray | None, float, float]:
    """The bright disc of a fundus photograph in a float RGB ``(h, w, 3)`` image in [0, 1].

    Returns ``(mask, extent, fraction)``: the disc (largest bright region, holes filled) or None
    when there is no dark surround (the disc must cover 30-97 % of the image and at least 3 % of
    the image must be dark), its larger extent in pixels (a disc cut by the image's top and
    bottom keeps its width) and the fraction of the image it covers.
    """
    bright = rgb.max(axis=2) > FOV_LEVEL
    lab, n = ndi.label(bright)
    if n == 0:
        return None, 0.0, 0.0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    fov = ndi.binary_fill_holes(lab == int(np.argmax(sizes)))
    fraction = float(fov.mean())
    if not 0.3 <= fraction <= 0.97 or float((~bright).mean()) < 0.03:
        return None, 0.0, fraction
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    extent = float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    return fov, extent, fraction


def apply_field_of_view(fields: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """Labels 0 and probabilities "background" outside ``mask`` (in place, returned)."""
    outside = ~mask
    labels = fields.get("labels")
    if isinstance(labels, np.ndarray) and labels.shape == mask.shape:
        labels[outside] = 0
    probs = fields.get("probabilities")
    if isinstance(probs, np.ndarray) and probs.shape[-2:] == mask.shape and probs.ndim == 3:
        probs[:, outside] = 0.0
        probs[0, outside] = 1.0
    return fields
