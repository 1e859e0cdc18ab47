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

__all__ = ["CODEBOOK", "CodebookResult", "codebook_colormap", "compute", "score_text"]

#: The family capability the Codebook widget needs (declared by the sqvae family).
CODEBOOK = "codebook"


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


def score_text(report: Any) -> str:
    """The score line of the widget (and its warning)."""
    used = f"{report.codes_used} of {report.usage.size} codes used"
    if report.score is None:
        return f"{used}. This model stores no training code usage, so no shift score."
    head = f"Domain-shift score {report.score:.3f} (warning above {report.threshold:.3f}); {used}."
    if report.out_of_domain:
        return (
            "⚠ Out of domain: this image uses codes unlike the training data; check the "
            "segmentation carefully. " + head
        )
    return "In domain. " + head


def compute(
    bundle: Any,
    plane: Any,
    *,
    image_name: str,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> CodebookResult:
    """Worker side: predict, analyse, build the colour table and the layer kwargs."""
    from napari_dgseg.core.codebook import analyse_prediction, group_colors

    pred = bundle.predict(plane, progress=progress, cancel=cancel)
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
    return CodebookResult(
        indices=np.asarray(pred.codebook_indices, np.int32),
        colors=colors,
        report=report,
        kwargs=kwargs,
    )
