"""Turn a core :class:`~napari_dgseg.core.predict.Prediction` into napari layers.

:func:`prediction_layer_data` builds napari *layer data tuples* ``(data, kwargs, layer_type)``
without touching a viewer (safe to call in a worker thread);
:func:`add_or_replace` puts them in a viewer, replacing a layer of the same name and type (so
re-running a model on the same image updates its result instead of piling up copies).

Layer names follow ``"<image> <what> (<model>)"``, e.g. ``"slide labels (nuclei-unet)"``.
Every layer carries ``metadata = {"provenance": ..., "source_layer": <image name>}`` and the
source image's ``scale``; its ``translate`` is the source's plus the segmented region's offset,
so masks line up with the image whatever region was segmented. :func:`add_or_replace` gives each
layer its source layer's ``units`` too (a micrometre image with pixel-unit outputs would make
napari drop units altogether, with an "Inconsistent units" warning on every redraw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_dgseg.core.predict import Prediction

__all__ = [
    "add_or_replace",
    "source_units",
    "labels_colormap",
    "layer_name",
    "local_mask_layer_data",
    "normalized_layer_data",
    "prediction_layer_data",
    "provenance_metadata",
    "summarize",
    "with_source_units",
]

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Colormaps of the continuous maps.
PROBABILITY_COLORMAP = "inferno"
UNCERTAINTY_COLORMAP = "magma"
#: The local feature mask (domain gap per pixel, in [0, 1)): perceptual, dark at 0, bright at 1.
LOCAL_MASK_COLORMAP = "inferno"
#: Its blending and opacity over the image: translucent, because additive blending over a bright
#: H&E or fundus image saturates to white and hides the map (seen on the real H&E screenshot).
LOCAL_MASK_BLENDING = "translucent"
LOCAL_MASK_OPACITY = 0.85


def layer_name(image_name: str, model_name: str, what: str = "labels") -> str:
    """``"<image> <what> (<model>)"``."""
    return f"{image_name} {what} ({model_name})"


def labels_colormap(class_colors: Mapping[int, Sequence[int]]) -> Any:
    """A napari ``DirectLabelColormap`` from the bundle's ``{class id: (r, g, b)}``.

    Class 0 (background) and ids without a colour are transparent.
    """
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
    for cid, rgb in class_colors.items():
        if int(cid) == 0:
            color_dict[0] = np.zeros(4, np.float32)
            continue
        r, g, b = (float(v) / 255.0 for v in list(rgb)[:3])
        color_dict[int(cid)] = np.array([r, g, b, 1.0], np.float32)
    color_dict.setdefault(0, np.zeros(4, np.float32))
    return DirectLabelColormap(color_dict=color_dict)


def _placement(
    scale: Sequence[float], translate: Sequence[float], offset: Sequence[int], ndim: int
) -> tuple[list[float], list[float]]:
    """Scale and translate of an output with ``ndim`` axes whose last two are image rows/cols."""
    sy, sx = (float(v) for v in scale[-2:])
    ty, tx = (float(v) for v in translate[-2:])
    oy, ox = (int(v) for v in offset[-2:])
    lead = ndim - 2
    return [1.0] * lead + [sy, sx], [0.0] * lead + [ty + oy * sy, tx + ox * sx]


def prediction_layer_data(
    pred: Prediction,
    *,
    image_name: str,
    model_name: str,
    output: str = "semantic",
    class_colors: Mapping[int, Sequence[int]] | None = None,
    scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
    offset: Sequence[int] = (0, 0),
    provenance: Mapping[str, Any] | None = None,
    probabilities: bool = True,
    uncertainty: bool = True,
    uncertainty_visible: bool = False,
) -> list[LayerDataTuple]:
    """Layer data tuples for everything a prediction holds.

    Parameters
    ----------
    pred : Prediction
        ``labels`` ``(H, W)``; optional ``probabilities`` ``(K, H, W)``, ``uncertainty``,
        ``local_mask`` ``(H, W)`` float and ``codebook_indices`` ``(H, W)`` int.
    image_name, model_name : str
        Used in the layer names and ``metadata["source_layer"]``.
    output : {"semantic", "instances"}
        Semantic labels get the bundle's class colours; instance ids napari's random colours.
    class_colors : mapping
        ``{class id: (r, g, b)}`` (0-255) of the bundle.
    scale, translate : sequence of float
        Of the source image layer (only the last two axes are used).
    offset : (int, int)
        Top-left pixel ``(y, x)`` of the segmented region in the source image.
    provenance : mapping
        Stored in every layer's ``metadata["provenance"]`` (the prediction's own provenance is
        used when None).
    probabilities : bool
        Add the class probabilities as an Image layer: the foreground class for two classes,
        else the ``(K, H, W)`` stack.
    uncertainty : bool
        Add ``pred.uncertainty`` (DCIN GRIS/LRIS disagreement, in ``[0, 1]``) as an Image layer
        when the prediction has one.
    uncertainty_visible : bool
        Show that layer at once (the user asked for it) instead of adding it hidden.

    Returns
    -------
    list of (data, kwargs, layer_type)
        Labels first, then probabilities, uncertainty, local mask and codebook indices, each
        only when present.
    """
    prov = dict(provenance if provenance is not None else pred.provenance)
    meta = {"provenance": prov, "source_layer": str(image_name)}
    sc2, tr2 = _placement(scale, translate, offset, 2)
    out: list[LayerDataTuple] = []

    labels_kwargs: dict[str, Any] = {
        "name": layer_name(image_name, model_name, "labels"),
        "scale": sc2,
        "translate": tr2,
        "metadata": dict(meta),
        "opacity": 0.6,
    }
    if output != "instances" and class_colors:
        labels_kwargs["colormap"] = labels_colormap(class_colors)
    out.append((np.asarray(pred.labels, dtype=np.int32), labels_kwargs, "labels"))

    if probabilities and pred.probabilities is not None:
        probs = np.asarray(pred.probabilities, dtype=np.float32)
        names = list(pred.class_names) or [str(i) for i in range(probs.shape[0])]
        if probs.shape[0] == 2:
            data, what = probs[1], f"probability {names[1] if len(names) > 1 else '1'}"
            sc, tr = sc2, tr2
        else:
            data, what = probs, "probabilities"
            sc, tr = _placement(scale, translate, offset, 3)
        out.append(
            (
                data,
                {
                    "name": layer_name(image_name, model_name, what),
                    "scale": sc,
                    "translate": tr,
                    "metadata": dict(meta) | {"class_names": names},
                    "colormap": PROBABILITY_COLORMAP,
                    "contrast_limits": (0.0, 1.0),
                    "blending": "additive",
                    "opacity": 0.7,
                    "visible": False,
                },
                "image",
            )
        )
    if uncertainty and pred.uncertainty is not None:
        arr = np.asarray(pred.uncertainty, dtype=np.float32)
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        out.append(
            (
                arr,
                {
                    "name": layer_name(image_name, model_name, "uncertainty"),
                    "scale": sc2,
                    "translate": tr2,
                    "metadata": dict(meta),
                    "colormap": UNCERTAINTY_COLORMAP,
                    "contrast_limits": (0.0, hi if hi > 0 else 1.0),
                    "blending": "additive",
                    "opacity": 0.7,
                    "visible": uncertainty_visible,
                },
                "image",
            )
        )
    if pred.local_mask is not None:
        out.append(local_mask_layer_data(pred.local_mask, image_name=image_name,
                                         model_name=model_name, scale=scale, translate=translate,
                                         offset=offset, provenance=prov))
    if pred.codebook_indices is not None:
        out.append(
            (
                np.asarray(pred.codebook_indices, dtype=np.int32),
                {
                    "name": layer_name(image_name, model_name, "codebook"),
                    "scale": sc2,
                    "translate": tr2,
                    "metadata": dict(meta),
                    "opacity": 0.5,
                    "visible": False,
                },
                "labels",
            )
        )
    return out


def local_mask_layer_data(
    mask: np.ndarray,
    *,
    image_name: str,
    model_name: str,
    scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
    offset: Sequence[int] = (0, 0),
    provenance: Mapping[str, Any] | None = None,
    what: str = "local mask",
) -> LayerDataTuple:
    """The Image layer of a local feature mask (domain gap per pixel, Mind the Gap's D1).

    ``mask`` ``(H, W)`` in ``[0, 1)`` (``tanh(|D1(f)|)``) is shown with the perceptual
    :data:`LOCAL_MASK_COLORMAP` (black at 0), fixed contrast limits 0..1 (maps of different images
    and models compare), translucent over the image (:data:`LOCAL_MASK_OPACITY`; hide the layer
    to compare) and the image layer's placement (``scale``, ``translate``, plus the region
    ``offset``).
    """
    sc2, tr2 = _placement(scale, translate, offset, 2)
    meta = {"provenance": dict(provenance or {}), "source_layer": str(image_name),
            "reading": "0 = the model's features look like its training (source) domain; "
                       "1 = clearly out of that domain"}
    return (
        np.asarray(mask, dtype=np.float32),
        {
            "name": layer_name(image_name, model_name, what),
            "scale": sc2,
            "translate": tr2,
            "metadata": meta,
            "colormap": LOCAL_MASK_COLORMAP,
            "contrast_limits": (0.0, 1.0),
            "blending": LOCAL_MASK_BLENDING,
            "opacity": LOCAL_MASK_OPACITY,
            "visible": True,
        },
        "image",
    )


def normalized_layer_data(
    normalized: Mapping[str, np.ndarray],
    *,
    image_name: str,
    scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
    offset: Sequence[int] = (0, 0),
    provenance: Mapping[str, Any] | None = None,
) -> list[LayerDataTuple]:
    """Layer data tuples for the DCIN colour-normalised images (the "after" of before/after).

    Parameters
    ----------
    normalized : mapping
        ``{branch: image}`` as in ``Prediction.extras["normalized"]``; ``branch`` is ``"gris"``,
        ``"lris"`` or ``"reference"``, ``image`` uint8 RGB ``(H, W, 3)``.
    image_name : str
        The source image layer; layers are called ``"<image> normalized (<branch>)"``.
    scale, translate : sequence of float
        Of the source image layer (only the last two axes are used).
    offset : (int, int)
        Top-left pixel ``(y, x)`` of the segmented region in the source image.
    provenance : mapping
        Stored in each layer's ``metadata["provenance"]``.

    Returns
    -------
    list of (data, kwargs, "image")
        One RGB layer per branch, in the order of ``normalized``, placed over the source region.
    """
    sc2, tr2 = _placement(scale, translate, offset, 2)
    meta = {"provenance": dict(provenance or {}), "source_layer": str(image_name)}
    out: list[LayerDataTuple] = []
    for branch, image in normalized.items():
        data = np.asarray(image)
        if data.ndim != 3 or data.shape[-1] != 3:
            raise ValueError(
                f"normalized image of branch {branch!r} must be (H, W, 3), got {data.shape}"
            )
        out.append(
            (
                data,
                {
                    "name": f"{image_name} normalized ({branch})",
                    "rgb": True,
                    "scale": sc2,
                    "translate": tr2,
                    "metadata": dict(meta) | {"dcin_branch": str(branch)},
                },
                "image",
            )
        )
    return out


def provenance_metadata(provenance: dict[str, Any], source_layer: str) -> dict[str, Any]:
    """The ``layer.metadata`` of an output layer.

    Parameters
    ----------
    provenance : dict
        What made the layer (model, sha256, tile, overlap, device, region, source path, ...).
    source_layer : str
        Name of the image layer the output was computed from.

    Returns
    -------
    dict
        ``{"provenance": provenance, "source_layer": source_layer}`` (``provenance`` copied).
    """
    return {"provenance": dict(provenance), "source_layer": str(source_layer)}


def summarize(pred: Prediction, output: str = "semantic") -> str:
    """One line: time, and class fractions (semantic) or the instance count."""
    labels = np.asarray(pred.labels)
    seconds = pred.provenance.get("seconds")
    head = f"{labels.shape[0]} x {labels.shape[1]} px"
    if seconds is not None:
        head += f" in {float(seconds):.1f} s"
    if output == "instances":
        n = int(np.unique(labels[labels > 0]).size)
        return f"{head}: {n} instance{'s' if n != 1 else ''}"
    counts = np.bincount(labels.ravel().clip(min=0), minlength=len(pred.class_names))
    total = max(int(counts.sum()), 1)
    names = list(pred.class_names) or [str(i) for i in range(counts.size)]
    parts = [
        f"{names[i] if i < len(names) else i} {100.0 * counts[i] / total:.1f} %"
        for i in range(counts.size)
        if i > 0
    ]
    return f"{head}: " + (", ".join(parts) if parts else "background only")


def source_units(source: Any, ndim: int) -> tuple[str, ...] | None:
    """Units for an ``ndim``-axis output of layer ``source``: its last two, pixels before.

    None when ``source`` has no ``units`` (older napari).
    """
    units = getattr(source, "units", None)
    if units is None or len(units) < 2:
        return None
    lead = max(0, int(ndim) - 2)
    return ("pixel",) * lead + tuple(str(u) for u in list(units)[-2:])


def with_source_units(viewer: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of layer ``kwargs`` given the units of its source layer (``metadata``'s
    ``source_layer``) when it has a ``scale`` and no ``units`` of its own."""
    kwargs = dict(kwargs)
    source_name = (kwargs.get("metadata") or {}).get("source_layer")
    if "units" not in kwargs and "scale" in kwargs and source_name in viewer.layers:
        units = source_units(viewer.layers[source_name], len(kwargs["scale"]))
        if units is not None:
            kwargs["units"] = units
    return kwargs


def add_or_replace(viewer: Any, layer_data: Sequence[LayerDataTuple]) -> list[Any]:
    """Add layers to ``viewer``; a layer of the same name and type is replaced in place.

    The replaced layer's position in the layer list and its ``visible``/``opacity`` settings are
    kept, so re-running a model refreshes what the user is looking at.

    Returns
    -------
    list of napari layers
        The layers now in the viewer, in the order of ``layer_data``.
    """
    from napari.layers import Layer

    from napari_dgseg._napari.writer import prefer_own_writers

    prefer_own_writers()  # the save dialog then offers these layers the writer with placement
    added = []
    for data, layer_kwargs, layer_type in layer_data:
        kwargs = with_source_units(viewer, layer_kwargs)
        name = kwargs["name"]
        old = viewer.layers[name] if name in viewer.layers else None
        if old is not None and old._type_string == layer_type:
            kwargs["visible"] = old.visible
            kwargs["opacity"] = old.opacity
            index = viewer.layers.index(old)
            viewer.layers.remove(old)
            new = Layer.create(data, kwargs, layer_type)
            viewer.layers.insert(index, new)
        else:
            new = Layer.create(data, kwargs, layer_type)
            viewer.add_layer(new)
        added.append(new)
    return added
