"""Target images for adaptation, brought to the scale the model segments them at.

Inference resamples an image to the model's recorded scale before the network sees it
(:mod:`napari_dgseg.core.scale_inference`: the user's or the file's pixel size, else an
estimate from the image, checked by the model's own pass). An adapted model is used the same
way, so the target crops it adapts on should show the nuclei at the size it will see them at,
not at the image's own size: MaNi's mutual-information term (Sharma, Syed & Brown, "MaNi:
Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023)
pools features over the predicted foreground, and those features depend on the nucleus size the
network was trained at. ``target_scale="model"`` asks the parent what factor its inference would
apply to each target image (one pass per image, no flips) and resamples the image by it (as
inference does: anti-aliased bilinear; corrected labels by nearest neighbour); ``"native"``
keeps the images as they are (the behaviour before). A resampled image smaller than the crop is
mirrored at its far edges up to the crop size (mirrored tissue, not blank glass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError

__all__ = ["TARGET_SCALES", "check_target_scale", "targets_at_scale"]

#: ``--target-scale`` choices and what each does (recorded in the adapted bundle's provenance).
TARGET_SCALES = {
    "model": "each target resampled by the factor the parent's inference applies to it",
    "native": "targets used at their own pixel size",
}


def check_target_scale(mode: str) -> None:
    """One clear line for an unknown mode."""
    if mode not in TARGET_SCALES:
        raise InputError(f"unknown target scale {mode!r}; valid: {', '.join(TARGET_SCALES)}")


def inference_factor(bundle: Any, image: np.ndarray, device: Any) -> dict[str, Any]:
    """The scale decision the parent's inference makes for ``image`` (factor, applied, reason)."""
    pred = bundle.predict(image, device=device, tta=False)
    scale = pred.provenance.get("scale", {})
    return {"factor": float(scale.get("factor", 1.0)), "applied": bool(scale.get("applied", False)),
            "reason": str(scale.get("reason", ""))}


def _mirror_to(array: np.ndarray, min_side: int) -> np.ndarray:
    ph, pw = max(0, min_side - array.shape[0]), max(0, min_side - array.shape[1])
    if not (ph or pw):
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    # "symmetric" repeats the edge row; np.pad mirrors again when the pad exceeds the side
    return np.pad(array, pad, mode="symmetric")


def targets_at_scale(
    bundle: Any, samples: Sequence[Sample], *, mode: str, min_side: int, device: Any = "cpu"
) -> tuple[list[Sample], dict[str, Any]]:
    """``samples`` at the scale ``mode`` asks for, and a report for the provenance.

    Parameters
    ----------
    bundle : Bundle
        The parent; its inference decides each image's factor.
    samples : sequence of Sample
        Target images (uint8 RGB), labels optional.
    mode : str
        ``"model"`` or ``"native"`` (:data:`TARGET_SCALES`).
    min_side : int
        The crop size: a smaller resampled image is mirrored up to it.
    """
    from napari_dgseg.core.resample import _nearest, zoom_image

    check_target_scale(mode)
    if mode == "native":
        return list(samples), {"mode": mode, "what": TARGET_SCALES[mode]}
    out: list[Sample] = []
    factors: list[float] = []
    padded = 0
    for s in samples:
        decision = inference_factor(bundle, s.image, device)
        f = decision["factor"] if decision["applied"] else 1.0
        factors.append(round(f, 4))
        if f == 1.0:
            out.append(s)
            continue
        image = np.clip(np.rint(zoom_image(s.image, f)), 0, 255).astype(np.uint8)
        labels = None if s.labels is None else _nearest(np.asarray(s.labels), image.shape[:2])
        if min(image.shape[:2]) < min_side:
            padded += 1
            image = _mirror_to(image, min_side)
            labels = None if labels is None else _mirror_to(labels, min_side)
        meta = dict(s.meta or {})
        meta["target_scale_factor"] = f
        out.append(Sample(image, labels, s.name, mask=s.mask, domain=s.domain, meta=meta))
    return out, {
        "mode": mode,
        "what": TARGET_SCALES[mode],
        "factors": factors,
        "resampled": int(sum(f != 1.0 for f in factors)),
        "median_factor": float(np.median(factors)) if factors else 1.0,
        "mirrored_to_crop": padded,
    }
