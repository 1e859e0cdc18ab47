"""The Codebook widget's job and texts: SQ-VAE codebook-index map, code usage, shift score.

:func:`compute` runs in the worker (inference, histograms, the colour table, the layer kwargs);
the GUI thread only adds the layer and draws the plot. The analysis itself is
:mod:`napari_dgseg.core.codebook`; the models are those whose family declares the
:data:`CODEBOOK` capability (the class-grouped SQ-VAE codebook of :mod:`napari_dgseg.core.families.sqvae`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dgseg._napari.layers import provenance_metadata

__all__ = [
    "CODEBOOK",
    "CODEBOOK_DCIN_MODES",
    "THRESHOLD_TIP",
    "CodebookResult",
    "codebook_colormap",
    "compute",
    "input_text",
    "legend_entries",
    "score_text",
]

#: The family capability the Codebook widget needs (declared by the sqvae family).
CODEBOOK = "codebook"

#: What the model may be fed for the score: the image as is, or colour-normalised as Segment
#: would (``reference`` needs a user reference and is left to the Segment widget).
CODEBOOK_DCIN_MODES = ("none", "auto", "gris", "lris", "full")

#: How the warning threshold is set (the score label's tooltip).
THRESHOLD_TIP = (
    "Domain-shift score: Jensen-Shannon divergence (0 = same, 1 = disjoint) between this image's "
    "code usage and the training images' usage, averaged over the class and domain codebooks. "
    "The warning threshold was calibrated on the training images, scored without colour "
    "normalisation, each against the others: max(mean + 3 sd, 1.5 x largest). Above it the image "
    "uses codes unlike anything the model was trained on."
)


def codebook_colormap(colors: dict[int, tuple[float, float, float, float]]) -> Any:
    """napari ``DirectLabelColormap`` from ``{code: rgba}`` (every code opaque, others clear)."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
    for code, rgba in colors.items():
        color_dict[int(code)] = np.asarray(rgba, dtype=np.float32)
    return DirectLabelColormap(color_dict=color_dict)


@dataclass
class CodebookResult:
    """What the worker hands to the GUI thread."""

    indices: np.ndarray
    colors: dict[int, tuple[float, float, float, float]]
    report: Any
    kwargs: dict[str, Any]
    #: The colour normalisation the model was fed with (the prediction's provenance).
    dcin_mode: str = "none"


def input_text(dcin_mode: str | None) -> str:
    """What the model was fed: ``"on the image as is"`` or ``"after DCIN full"``."""
    if not dcin_mode or dcin_mode == "none":
        return "on the image as is (no colour normalisation)"
    return f"after colour normalisation (DCIN {dcin_mode})"


def score_text(report: Any, dcin_mode: str | None = None) -> str:
    """The score line of the widget (and its warning); ``dcin_mode`` says what it was computed on."""
    used = f"{report.codes_used} of {report.usage.size} codes used"
    if report.score is None:
        return f"{used}. This model stores no training code usage, so no shift score."
    head = (
        f"Domain-shift score {report.score:.3f} (warning above {report.threshold:.3f}), "
        f"{input_text(dcin_mode)}; {used}."
    )
    if report.out_of_domain:
        return (
            "⚠ Out of domain: this image uses codes unlike the training data; check the "
            "segmentation carefully. " + head
        )
    return "In domain. " + head


def legend_entries(
    groups: np.ndarray,
    colors: dict[int, tuple[float, float, float, float]],
    class_names: tuple[str, ...] | list[str],
) -> list[tuple[str, list[tuple[float, float, float, float]], str]]:
    """One legend row per class group: ``(class name, the colours of its codes, codes)``.

    The colours, in code order, are the group's hue family (shown as a strip).

    ``codes`` reads ``"codes 0-15"`` (or ``"code 3"``, ``"codes 0, 4, 9"`` when not a run).
    """
    rows = []
    groups = np.asarray(groups)
    for g in range(len(class_names)):
        members = np.flatnonzero(groups == g)
        if members.size == 0:
            continue
        family = [colors.get(int(c), (0.5, 0.5, 0.5, 1.0)) for c in members]
        if members.size == 1:
            codes = f"code {members[0]}"
        elif members[-1] - members[0] + 1 == members.size:
            codes = f"codes {members[0]}-{members[-1]}"
        else:
            codes = "codes " + ", ".join(str(int(c)) for c in members)
        rows.append((str(class_names[g]), family, codes))
    return rows


def compute(
    bundle: Any,
    plane: Any,
    *,
    image_name: str,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    dcin: str = "none",
) -> CodebookResult:
    """Worker side: predict, analyse, build the colour table and the layer kwargs.

    ``dcin`` is the colour normalisation the model is fed (default ``none``: the image as is,
    like the training images the warning threshold was calibrated on).
    """
    from napari_dgseg.core.codebook import analyse_prediction, group_colors

    pred = bundle.predict(plane, dcin=dcin, progress=progress, cancel=cancel)
    report = analyse_prediction(pred, bundle)
    n = int(bundle.config["codebook_size"])
    colors = group_colors(n, len(bundle.class_names), bundle.class_colors)
    prov = dict(pred.provenance)
    meta = provenance_metadata(prov, image_name)
    meta["code_groups"] = report.groups.tolist()
    meta["class_names"] = list(report.class_names)
    kwargs = {
        "name": f"{image_name} codebook ({bundle.name})",
        "scale": list(scale),
        "translate": list(translate),
        "metadata": meta,
        "opacity": 0.7,
    }
    used = (prov.get("dcin") or {}).get("mode", dcin) if isinstance(prov.get("dcin"), dict) else dcin
    return CodebookResult(
        indices=np.asarray(pred.codebook_indices, np.int32),
        colors=colors,
        report=report,
        kwargs=kwargs,
        dcin_mode=str(used),
    )
