"""napari reader contribution: slides, tiles and OME-Zarr through :mod:`napari_dgseg.core.slide`.

``get_reader(path)`` answers quickly from the path alone (ending, or Zarr markers for folders)
and never raises. The returned function opens each path:

* images become one image layer: a multiscale layer (list of lazy dask levels) for pyramids,
  ``rgb=True`` for RGB/RGBA, contrast limits from :mod:`napari_dgseg.core.imageprep`'s scaling
  for non-8-bit data (what the network is fed), the
  physical ``scale`` (micrometres) where the file records a pixel size;
* labels files written by napari-dgseg (provenance inside) become a labels layer whose metadata
  holds the stored provenance, placed where it was saved: the stored placement (pixel size and
  origin, see :class:`~napari_dgseg.core.labels_io.Placement`) becomes the layer's ``scale``,
  ``translate`` and ``units``, so a saved mask reopens exactly on its slide, with the opacity
  and colours it was saved with (the record's ``"display"``);
* a file that cannot be read gives a one-line notification naming the file and the reason, and
  adds no layer (other paths in the same drop still open).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.errors import DgsegError
from napari_dgseg.core.imageprep import decide_scaling
from napari_dgseg.core.slide import (
    OpenedImage,
    is_zarr_dir,
    open_image,
    supported_suffix,
)

__all__ = ["get_reader", "read_paths"]

LayerData = tuple
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]

#: Returned when nothing could be opened: napari's "accepted, but no layers" value, which adds
#: nothing and raises nothing (an empty list would make napari report a reader failure on top of
#: our notification).
NO_LAYERS: list[tuple] = [(None,)]


def _as_paths(path: Any) -> list[str] | None:
    if isinstance(path, str | os.PathLike):
        return [os.fspath(path)]
    if isinstance(path, list | tuple) and path:
        if all(isinstance(p, str | os.PathLike) for p in path):
            return [os.fspath(p) for p in path]
    return None


def _accepts(path: str) -> bool:
    p = Path(path)
    if p.is_dir():
        return is_zarr_dir(p)
    suffix = supported_suffix(p)
    return suffix is not None and not suffix.endswith(".zarr")


def get_reader(path: Any) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_paths` when every path is something napari-dgseg reads, else None.

    Parameters
    ----------
    path : str, PathLike or list of them
        What napari was asked to open.

    Returns
    -------
    callable or None
        None for unsupported endings, folders that are not Zarr stores, empty or mixed lists.
        Never raises.
    """
    try:
        paths = _as_paths(path)
        if paths is None or not all(_accepts(p) for p in paths):
            return None
        return read_paths
    except Exception:
        return None


def read_paths(path: PathOrPaths) -> list[LayerData]:
    """Open each path as layer data tuples; unreadable ones are notified and skipped.

    Parameters
    ----------
    path : str, PathLike or list of them

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` per opened path; ``[(None,)]`` when none opened.
    """
    from napari_dgseg._napari.notify import notify
    from napari_dgseg._napari.writer import prefer_own_writers

    prefer_own_writers()  # the layers opened here are saved with their placement by default
    paths = _as_paths(path) or []
    layers: list[LayerData] = []
    for p in paths:
        try:
            layers.append(read_one(p))
        except DgsegError as exc:
            notify(exc)
        except Exception as exc:  # a reader must not crash the viewer
            notify(f"{Path(p).name}: could not be opened ({type(exc).__name__}: {exc}).")
    return layers or NO_LAYERS


def read_one(path: str | os.PathLike) -> LayerData:
    """One layer data tuple for ``path`` (labels layer for napari-dgseg labels files).

    Raises
    ------
    ImageReadError
        When the file cannot be read.
    """
    from napari_dgseg.core.labels_io import read_provenance

    p = Path(path)
    record = read_provenance(p) if p.exists() else None
    opened = open_image(p)
    if record is not None:
        return _labels_layer(opened, record)
    return _image_layer(opened)


def _layer_name(p: Path) -> str:
    name = p.name.rstrip("/\\")
    suffix = supported_suffix(name)
    return name[: -len(suffix)] if suffix else p.stem


def _common_kwargs(opened: OpenedImage) -> dict[str, Any]:
    p = Path(opened.path)
    kwargs: dict[str, Any] = {"name": _layer_name(p)}
    if opened.pixel_size_um is not None:
        kwargs["scale"] = tuple(float(s) for s in opened.pixel_size_um)
        if _layers_accept_units():
            kwargs["units"] = ("um", "um")
    return kwargs


@functools.lru_cache(maxsize=1)
def _layers_accept_units() -> bool:
    """napari >= 0.6 layers take ``units``; older ones would reject the keyword."""
    import inspect

    from napari.layers import Image

    return "units" in inspect.signature(Image.__init__).parameters


def _image_layer(opened: OpenedImage) -> LayerData:
    kwargs = _common_kwargs(opened)
    metadata = dict(opened.metadata)
    metadata["source_path"] = opened.path
    metadata["pixel_size_um"] = (
        list(opened.pixel_size_um) if opened.pixel_size_um is not None else None
    )
    kwargs["metadata"] = metadata
    kwargs["rgb"] = opened.rgb
    kwargs["multiscale"] = opened.multiscale
    limits = _contrast_limits(opened)
    if limits is not None:
        kwargs["contrast_limits"] = limits
    data = list(opened.levels) if opened.multiscale else opened.full
    return (data, kwargs, "image")


def _labels_layer(opened: OpenedImage, record: dict) -> LayerData:
    from napari_dgseg.core.labels_io import MICROMETER, read_placement

    kwargs = _common_kwargs(opened)
    placement = read_placement(record)
    if placement is not None:
        lead = max(0, len(opened.full.shape) - 2)  # N-D labels: leading axes keep unit steps
        kwargs["scale"] = (1.0,) * lead + placement.scale
        kwargs["translate"] = (0.0,) * lead + placement.translate
        kwargs.pop("units", None)
        if placement.unit == MICROMETER and _layers_accept_units():
            kwargs["units"] = ("pixel",) * lead + ("um", "um")
    kwargs.update(_display_kwargs(record.get("display")))
    metadata = dict(record)
    metadata["provenance"] = dict(record)
    metadata["source_path"] = opened.path
    metadata["format"] = opened.metadata.get("format")
    kwargs["metadata"] = metadata
    kwargs["multiscale"] = opened.multiscale
    data = list(opened.levels) if opened.multiscale else opened.full
    return (data, kwargs, "labels")


def _display_kwargs(display: Any) -> dict[str, Any]:
    """``opacity`` and ``colormap`` kwargs from a stored ``"display"`` entry (see the writer);
    whatever is missing or malformed is left to napari's defaults."""
    out: dict[str, Any] = {}
    if not isinstance(display, dict):
        return out
    opacity = display.get("opacity")
    if isinstance(opacity, int | float) and 0.0 <= float(opacity) <= 1.0:
        out["opacity"] = float(opacity)
    colors = display.get("colors")
    if isinstance(colors, dict) and colors:
        try:
            from napari.utils.colormaps import DirectLabelColormap

            color_dict: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
            for key, value in colors.items():
                rgba = np.asarray(value, dtype=np.float32)
                if rgba.shape != (4,) or not np.isfinite(rgba).all():
                    raise ValueError(f"colour {value!r}")
                color_dict[None if key == "default" else int(key)] = np.clip(rgba, 0.0, 1.0)
            out["colormap"] = DirectLabelColormap(color_dict=color_dict)
        except (TypeError, ValueError):
            pass
    return out


def _contrast_limits(opened: OpenedImage) -> list[float] | None:
    """Contrast limits of non-uint8 images: the network's own scaling (imageprep), so what the
    user sees is what the model is fed (decided on the smallest level, strided, for speed)."""
    smallest = opened.levels[-1]
    dtype = np.dtype(smallest.dtype)
    if dtype == np.uint8 or dtype == np.bool_:
        return None
    try:
        low, high = decide_scaling(smallest)
    except DgsegError:
        return None
    return [low, high]
