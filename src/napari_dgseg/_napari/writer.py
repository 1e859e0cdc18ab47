"""napari writer contributions: labels layers to TIFF or Zarr with provenance inside.

The provenance record is the layer's metadata (model, parameters, source image: whatever the
segmentation widget put there) plus ``layer_name``, ``scale``, ``written_by``
(``"napari-dgseg <version>"``) and ``written_at`` (UTC, ISO 8601). See ``docs/io.md``.

The layer's ``scale``, ``translate`` and ``units`` are stored as the file's placement
(:class:`~napari_dgseg.core.labels_io.Placement`), so the plugin's reader puts the mask back
exactly on its slide; its look (opacity and a direct colormap such as the task colours) is
stored under ``"display"``, so it also comes back looking as it was saved.

napari's save dialog lists the writers in npe2's order and preselects the first; npe2 orders
writers of equal specificity by registration, so napari's builtin labels writer (no provenance,
no pixel size) would come first for ``.tif``, and npe2 has no public setting to change that
(napari's ``extension2writer`` setting exists but is not consulted). :func:`prefer_own_writers`,
called when this plugin reads a file or opens a widget (so before any of its layers exist), moves
this plugin's writers to the front of that order; where npe2's internals differ it does nothing,
and "labels TIFF with provenance" is then picked in the dialog's file-type box (``.zarr`` is only
written by this plugin anyway).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from napari_dgseg.core.labels_io import Placement, json_safe, write_labels

__all__ = [
    "display_from_meta", "prefer_own_writers",
    "placement_from_meta", "provenance_from_meta", "write_labels_tif", "write_labels_zarr"]


def provenance_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Build the provenance record from napari layer attributes.

    Parameters
    ----------
    meta : dict
        The layer attributes napari hands to writers (``name``, ``metadata``, ``scale`` ...).

    Returns
    -------
    dict
        JSON-safe record: the layer metadata with its nested ``provenance`` dict (what the
        Segment widget stores: model, parameters, source image) merged in at the top level,
        plus ``layer_name``, ``scale``, ``written_by`` and ``written_at``.
    """
    from napari_dgseg import __version__

    layer_metadata = dict(meta.get("metadata") or {})
    nested = layer_metadata.pop("provenance", None)
    if isinstance(nested, dict):
        layer_metadata = {**nested, **layer_metadata}
    record = json_safe(layer_metadata)
    record["layer_name"] = str(meta.get("name", ""))
    if meta.get("scale") is not None:
        record["scale"] = json_safe(list(meta["scale"]))
    display = display_from_meta(meta)
    if display:
        record["display"] = display
    record["written_by"] = f"napari-dgseg {__version__}"
    record["written_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return record


#: A direct colormap with more entries than this is not stored (it is per-instance colouring,
#: which napari recreates itself).
MAX_DISPLAY_COLOURS = 64


def display_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """How the layer looks: ``{"opacity": float, "colors": {id: [r, g, b, a]}}``.

    ``colors`` only for a direct colormap of at most :data:`MAX_DISPLAY_COLOURS` entries (the
    task colours the widgets set); the id ``"default"`` is the colour of ids not listed.
    Empty when nothing is known.
    """
    out: dict[str, Any] = {}
    opacity = meta.get("opacity")
    if isinstance(opacity, int | float) and 0.0 <= float(opacity) <= 1.0:
        out["opacity"] = round(float(opacity), 4)
    color_dict = getattr(meta.get("colormap"), "color_dict", None)
    try:
        if color_dict is not None and 0 < len(color_dict) <= MAX_DISPLAY_COLOURS:
            out["colors"] = {
                "default" if key is None else str(int(key)): [
                    round(float(c), 4) for c in list(value)[:4]
                ]
                for key, value in color_dict.items()
            }
    except (TypeError, ValueError):  # an unusual colormap: keep the opacity only
        out.pop("colors", None)
    return out


PLUGIN_NAME = "napari-dgseg"


def prefer_own_writers() -> bool:
    """Put this plugin's writers first in npe2's writer order (napari's save dialog default).

    Returns
    -------
    bool
        True when they are first now; False when npe2's internals are not the known ones (then
        nothing is changed).
    """
    try:
        from npe2 import PluginManager

        contrib = PluginManager.instance()._contrib
        entries = list(contrib._writers)
        ours = [e for e in entries if getattr(e[-1], "plugin_name", "") == PLUGIN_NAME]
        if not ours:
            return False
        contrib._writers = ours + [e for e in entries if e not in ours]
        return True
    except Exception:  # private npe2 state: never break a read or a widget over it
        return False


def placement_from_meta(meta: dict[str, Any]) -> Placement | None:
    """The layer's placement (last two axes of ``scale``/``translate``, ``units``), or None.

    None when the layer attributes hold no usable scale (then the file has no placement and
    reopens at the origin with pixel units, as before).
    """
    scale = meta.get("scale")
    if scale is None or len(scale) < 2:
        return None
    translate = meta.get("translate")
    if translate is None or len(translate) < 2:
        translate = (0.0, 0.0)
    try:
        return Placement.from_layer(scale, translate, meta.get("units"))
    except Exception:
        return None


def _with_suffix(path: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in suffixes else p.with_name(p.name + suffixes[0])


def write_labels_tif(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer to a zlib-compressed TIFF with provenance.

    Parameters
    ----------
    path : str
        Target; ``.tif`` is appended when it ends in neither ``.tif`` nor ``.tiff``.
    data : array-like
        ``(H, W)`` labels (numpy, dask, or a multiscale list: level 0 is written).
    meta : dict
        Layer attributes from napari.

    Returns
    -------
    list of str
        The written path.
    """
    target = _with_suffix(path, (".tif", ".tiff"))
    # napari's save dialog has asked before replacing a file, so the writer may overwrite (a
    # .zarr folder only when it is a labels store napari-dgseg wrote; see write_labels).
    return [
        str(
            write_labels(
                target, data, provenance_from_meta(meta), overwrite=True,
                placement=placement_from_meta(meta),
            )
        )
    ]


def write_labels_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer to a Zarr array (chunks 1024 x 1024) with provenance.

    For masks of whole slides: written chunk by chunk when the layer holds a dask array.

    Parameters
    ----------
    path : str
        Target folder; ``.zarr`` is appended when missing.
    data : array-like
        ``(H, W)`` labels (numpy, dask, or a multiscale list: level 0 is written).
    meta : dict
        Layer attributes from napari.

    Returns
    -------
    list of str
        The written path.
    """
    target = _with_suffix(path, (".zarr",))
    # napari's save dialog has asked before replacing a file, so the writer may overwrite (a
    # .zarr folder only when it is a labels store napari-dgseg wrote; see write_labels).
    return [
        str(
            write_labels(
                target, data, provenance_from_meta(meta), overwrite=True,
                placement=placement_from_meta(meta),
            )
        )
    ]
