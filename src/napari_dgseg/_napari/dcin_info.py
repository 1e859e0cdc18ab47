"""DCIN helpers of the Segment widget that need no Qt: mode tips, reference summaries, swatch.

DCIN is the dynamic colour image normalisation (GRIS, LRIS, their ensemble) of "Color-Quality
Invariance for Robust Medical Image Segmentation" (R. Shah, A. Fukuda and Q. H. Cap, 2025), computed by
:mod:`napari_dgseg.core.color.dcin`; this module only turns what the core reports
(``Prediction.provenance["dcin"]``) into words and colours for the widget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BANK_HINT",
    "BANK_MODES",
    "BRANCH_LABELS",
    "DCIN_TIPS",
    "describe_guard",
    "describe_references",
    "swatch_colors",
]

#: Plain-words explanation of each DCIN mode (tooltips of the mode box).
DCIN_TIPS: dict[str, str] = {
    "auto": (
        "Automatic: 'full' when the model carries a reference bank of its training colours, "
        "otherwise no normalisation; a quick check on a few crops first, and when "
        "normalising would change the mask in a way nothing in the image supports (e.g. a "
        "sparse image whose pink tissue would turn nucleus-dark), the image is segmented as it "
        "is and the panel says why"
    ),
    "none": "No colour normalisation: the image goes to the model as it is",
    "gris": (
        "GRIS (global reference): recolour the image like the most typical image the model was "
        "trained on; the same reference for every image"
    ),
    "lris": (
        "LRIS (local reference): recolour the image like the training image the model finds "
        "most similar to it"
    ),
    "full": (
        "Full DCIN (recommended): segment both the GRIS- and the LRIS-recoloured image and "
        "average them; where the two disagree is the uncertainty map. About twice the time"
    ),
    "reference": (
        "Your reference: recolour the image like a well-stained image you choose (an open "
        "image layer or a file)"
    ),
}
#: Modes that need the model's reference bank.
BANK_MODES = ("gris", "lris", "full")
BANK_HINT = (
    "{name}: this model has no reference bank of its training colours; add one with "
    "`dgseg bank MODEL --source TRAINING_FOLDER`, or use 'reference' (your own image)"
)
BRANCH_LABELS = {"gris": "GRIS", "lris": "LRIS", "reference": "Reference"}


def _fmt3(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


def describe_references(
    dcin: dict[str, Any] | None, reference_label: str | None = None
) -> tuple[str, str]:
    """A one-line summary of the references DCIN used, and a tooltip with their colour stats.

    Parameters
    ----------
    dcin : dict or None
        ``Prediction.provenance["dcin"]``: ``mode``, ``space``, ``references`` (each with
        ``branch``, ``reference``, ``mean``, ``std``), ``target_mean``, ``target_std``, ``notice``.
    reference_label : str, optional
        How to call the user's reference (layer or file name) instead of the core's description.

    Returns
    -------
    line, tooltip : str
        E.g. ``"GRIS: nuclei_clean_0003\nLRIS: nuclei_clean_0011"`` (one reference a line) and a
        multi-line tooltip.
    """
    if not dcin:
        return "no colour normalisation", ""
    notice = dcin.get("notice")
    refs = list(dcin.get("references") or [])
    guard = dcin.get("guard") or {}
    if notice:
        return f"skipped: {notice}", "The image went to the model as it is."
    if guard.get("action") == "fallback":
        tip = describe_guard(guard)
        return "not applied (guard): image as it is", tip
    if not refs:
        # two short lines: the label does not wrap (a dock does not grow after a run)
        return "none: the image went to\nthe model as it is", str(dcin.get("auto_reason") or "")
    parts = []
    for ref in refs:
        branch = str(ref.get("branch", "?"))
        name = ref.get("reference", "?")
        if branch == "reference" and reference_label:
            name = reference_label
        parts.append(f"{BRANCH_LABELS.get(branch, branch)}: {name}")
    space = dcin.get("space", "lab-reinhard")
    tips = [f"DCIN {dcin.get('mode', '?')}, colour statistics in {space} (mean, std):"]
    if dcin.get("target_mean") is not None:
        tips.append(
            f"target tissue: {_fmt3(dcin['target_mean'])}, {_fmt3(dcin.get('target_std', []))}"
        )
    for ref, part in zip(refs, parts, strict=True):
        tips.append(f"{part}: {_fmt3(ref.get('mean', []))}, {_fmt3(ref.get('std', []))}")
    if dcin.get("method"):
        tips.append(f"method: {dcin['method']}; target statistics from the "
                    f"{dcin.get('stats_from', 'image')}")
    if guard:
        tips.append(describe_guard(guard))
        parts.append("guard: kept")
    return "\n".join(parts), "\n".join(tips)


def describe_guard(guard: dict[str, Any]) -> str:
    """The guard's decision for ``auto`` in words, with the signals it measured."""
    action = {"keep": "normalisation kept", "fallback": "normalisation NOT applied"}.get(
        str(guard.get("action")), str(guard.get("action")))
    text = f"Guard: {action}: {guard.get('reason', '')}"
    sig = guard.get("signals") or {}
    if sig:
        text += (f"\n(pilot on {sig.get('pilot_pixels', 0)} px: foreground "
                 f"{100 * sig.get('fraction_none', 0):.1f} % as is, "
                 f"{100 * sig.get('fraction_normalized', 0):.1f} % normalised, agreement "
                 f"{sig.get('agreement', 0):.2f}, colour shift {sig.get('colour_shift', 0):.2f})")
    if "nearest_training_shift" in guard:
        text += (f"\n(nearest training colours: {guard.get('nearest_training_image')}, distance "
                 f"{float(guard['nearest_training_shift']):.2f})")
    return text


def swatch_colors(dcin: dict[str, Any] | None) -> np.ndarray | None:
    """Mean tissue colours of a DCIN run as ``(N, 3)`` uint8 RGB: the target, then each reference.

    The means are in DCIN's colour space (``dcin["space"]``) and converted back to RGB by the
    core's transforms. None when there is nothing to show (no normalisation, a notice, or a
    space the core cannot convert).
    """
    if not dcin or dcin.get("notice") or dcin.get("target_mean") is None:
        return None
    import torch

    from napari_dgseg.core.color.transforms import from_space

    means = [dcin["target_mean"]] + [r["mean"] for r in dcin.get("references") or []]
    try:
        lab = torch.tensor(means, dtype=torch.float64).T.reshape(3, 1, len(means))
        rgb = from_space(lab, dcin.get("space", "lab-reinhard")).clamp(0, 1)
    except Exception:  # a swatch is decoration; an odd space must not break the result
        return None
    return (rgb.permute(1, 2, 0)[0].numpy() * 255).round().astype(np.uint8)
