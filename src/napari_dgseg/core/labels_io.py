"""Write and read label images with their provenance inside the file.

A mask without its history cannot be trusted later; so every labels file napari-dgseg writes
carries a JSON provenance record (model, parameters, source image, who wrote it and when):

* ``.tif`` / ``.tiff``: a zlib-compressed OME-TIFF (tiled 256 x 256 from 512 px up) whose
  OME-XML holds the JSON object ``{"napari_dgseg_provenance": {...}}`` as the image's
  ``Description``. Any TIFF reader reads the pixels; :func:`read_labels` gets the record back.
* ``.zarr``: an OME-Zarr (NGFF 0.5, Zarr format 3) group with one level ``"0"``, chunks of
  1024 x 1024, with the record in the group's attributes under ``"napari_dgseg_provenance"``.

Where the mask sits in the world travels with it (:class:`Placement`, stored under
``"placement"`` in the record: the size of one pixel and the position of pixel ``(0, 0)``, in
micrometres or in pixels), and in the formats' own metadata for other programs: OME-XML
``PhysicalSizeX/Y`` and the plane's ``PositionX/Y`` (micrometres), the TIFF resolution tags
(ResolutionUnit centimetre, pixels per centimetre: QuPath, Fiji and napari's reader see the
physical size), and the OME-Zarr ``scale`` and ``translation`` transformations with the axes'
unit. :func:`read_placement` gets it back. Labels with more than two axes (N-D) keep the record
only: a JSON ImageDescription, or a plain Zarr array.

Labels are stored in the smallest integer type that holds their ids (:func:`label_dtype`): uint8
for binary and semantic masks with fewer than 256 classes, uint16 or uint32 for instances by
their largest id, int32 only for negative ids.

Writes are atomic: the data go to a temporary file/folder next to the target, which then
replaces the target in one rename, so an interrupted save never leaves half a mask behind.
An existing target is kept unless ``overwrite=True``; even then a ``.zarr`` folder is replaced
only when it is a labels store written by napari-dgseg (it carries the provenance record), so a
folder of the user's is never deleted.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.atomic import atomic_write
from napari_dgseg.core.errors import (
    DgsegError,
    ImageReadError,
    InputError,
    OutputExistsError,
    OutputWriteError,
)
from napari_dgseg.core.outputs import OLD_PREFIX, describe_os_error, refuse_existing, temp_prefix

__all__ = [
    "PROVENANCE_KEY",
    "LABEL_SUFFIXES",
    "PLACEMENT_KEY",
    "Placement",
    "json_safe",
    "label_dtype",
    "read_labels",
    "read_placement",
    "read_provenance",
    "tiff_keywords",
    "tiff_resolution",
    "write_labels",
]

#: Key under which the provenance record is stored (TIFF description JSON, Zarr attributes).
PROVENANCE_KEY = "napari_dgseg_provenance"

#: Key of the placement (pixel size and origin) inside the provenance record.
PLACEMENT_KEY = "placement"

#: The unit names a :class:`Placement` uses.
MICROMETER = "micrometer"
PIXEL = "pixel"

#: File endings :func:`write_labels` accepts.
LABEL_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".zarr")

#: Zarr chunk side for labels.
ZARR_CHUNK = 1024

#: TIFF labels with both sides at least this large are written tiled (256 x 256).
TIFF_TILE_FROM = 512

_UNSIGNED = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


@dataclass(frozen=True)
class Placement:
    """Where a 2-D label image sits in the world (napari's ``scale`` and ``translate``).

    Attributes
    ----------
    scale : (float, float)
        Size of one pixel along rows and columns.
    translate : (float, float)
        World position of the centre of pixel ``(0, 0)``.
    unit : str
        ``"micrometer"`` (physical) or ``"pixel"`` (no physical size known).
    """

    scale: tuple[float, float]
    translate: tuple[float, float] = (0.0, 0.0)
    unit: str = MICROMETER

    def __post_init__(self) -> None:
        sy, sx = (float(v) for v in self.scale)
        ty, tx = (float(v) for v in self.translate)
        if not all(math.isfinite(v) for v in (sy, sx, ty, tx)) or sy <= 0 or sx <= 0:
            raise InputError(
                f"pixel size {self.scale} / origin {self.translate}: the pixel size must be "
                "positive and both finite; check the layer's scale and translate."
            )
        if self.unit not in (MICROMETER, PIXEL):
            raise InputError(f"unit {self.unit!r}: use 'micrometer' or 'pixel'.")
        object.__setattr__(self, "scale", (sy, sx))
        object.__setattr__(self, "translate", (ty, tx))

    @classmethod
    def from_layer(
        cls, scale: Sequence[float], translate: Sequence[float], units: Sequence[Any] | None
    ) -> Placement:
        """From a napari layer's ``scale``, ``translate`` and ``units`` (last two axes)."""
        names = [_unit_name(u) for u in list(units or [])[-2:]]
        unit = MICROMETER if names and all(n == MICROMETER for n in names) else PIXEL
        return cls(
            scale=tuple(float(v) for v in list(scale)[-2:]),  # type: ignore[arg-type]
            translate=tuple(float(v) for v in list(translate)[-2:]),  # type: ignore[arg-type]
            unit=unit,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "translate": list(self.translate), "unit": self.unit}


def _unit_name(unit: Any) -> str:
    """``"micrometer"`` for any spelling of the micrometre (pint units, 'um', 'µm'), else str."""
    text = str(unit).strip().lower()
    if text in ("um", "µm", "\u03bcm", "micron", "microns", "micrometer", "micrometre"):
        return MICROMETER
    return text


def read_placement(record: Mapping[str, Any] | None) -> Placement | None:
    """The :class:`Placement` stored in a provenance record, or None (absent or malformed)."""
    value = (record or {}).get(PLACEMENT_KEY)
    if not isinstance(value, Mapping):
        return None
    try:
        return Placement(
            scale=tuple(float(v) for v in value["scale"]),  # type: ignore[arg-type]
            translate=tuple(float(v) for v in value.get("translate", (0.0, 0.0))),  # type: ignore[arg-type]
            unit=str(value.get("unit", MICROMETER)),
        )
    except (KeyError, TypeError, ValueError, InputError):
        return None


def label_dtype(low: int, high: int) -> np.dtype:
    """The smallest integer type holding ids from ``low`` to ``high``.

    uint8, uint16 or uint32 for non-negative ids (binary and semantic masks with fewer than 256
    classes are uint8; instances by their largest id), int32 when an id is negative.

    Raises
    ------
    InputError
        For ids beyond uint32 (or negative ids beyond int32).
    """
    if low >= 0:
        for dtype in _UNSIGNED:
            if high <= np.iinfo(dtype).max:
                return dtype
        raise InputError(
            f"label ids run up to {high}, beyond uint32. Relabel them sequentially first "
            "(skimage.segmentation.relabel_sequential)."
        )
    info = np.iinfo(np.int32)
    if low < info.min or high > info.max:
        raise InputError(
            f"label ids run from {low} to {high}, beyond int32. Relabel them sequentially first "
            "(skimage.segmentation.relabel_sequential)."
        )
    return np.dtype(np.int32)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def json_safe(value: Any, *, max_list: int = 256) -> Any:
    """Turn ``value`` into something ``json.dumps`` accepts, keeping what is informative.

    Numpy scalars become Python numbers, small arrays (up to ``max_list`` elements) lists, big
    arrays a short ``"<array shape=... dtype=...>"`` string, paths strings, mappings dicts with
    string keys, sets sorted lists, non-finite floats strings; anything else its ``repr``.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item(), max_list=max_list)
    if isinstance(value, np.ndarray):
        if value.size <= max_list:
            return json_safe(value.tolist(), max_list=max_list)
        return f"<array shape={list(value.shape)} dtype={value.dtype}>"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, max_list=max_list) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, max_list=max_list) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((json_safe(v, max_list=max_list) for v in value), key=str)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # dask, torch, zarr arrays
        return f"<array shape={list(value.shape)} dtype={value.dtype}>"
    return repr(value)


def _labels_array(labels: Any, path: Path) -> Any:
    """Check ``labels`` and bring it to the smallest integer type holding its ids."""
    if isinstance(labels, list | tuple) and labels and hasattr(labels[0], "shape"):
        labels = labels[0]  # multiscale labels: level 0
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if labels.ndim < 2:
        raise InputError(
            f"{path.name}: labels of shape {tuple(labels.shape)} cannot be saved; a 2-D "
            "(H, W) or N-D label image is needed."
        )
    dtype = np.dtype(labels.dtype)
    if dtype == np.bool_:
        return labels.astype(np.uint8)
    if dtype.kind not in "ui":
        raise InputError(
            f"{path.name}: labels have dtype {dtype}; label images hold integer ids. Convert "
            "with e.g. `labels.astype('int32')` after checking the values are whole numbers."
        )
    if labels.size == 0 or dtype == np.uint8:
        return labels
    lo, hi = (int(v) for v in (np.asarray(labels.min()), np.asarray(labels.max())))
    try:
        target = label_dtype(lo, hi)
    except InputError as exc:
        raise InputError(f"{path.name}: {exc}") from None
    return labels if target == dtype else labels.astype(target)


def write_labels(
    path: str | Path,
    labels: Any,
    provenance: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    placement: Placement | None = None,
) -> Path:
    """Save a label image with its provenance, atomically.

    Parameters
    ----------
    path : str or Path
        Target ending in ``.tif``, ``.tiff`` or ``.zarr``.
    labels : array-like
        ``(H, W)`` (or N-D) integer or bool labels; numpy or dask (a multiscale list: level 0).
        Stored in the smallest integer type that holds the ids (:func:`label_dtype`).
    provenance : mapping, optional
        Record stored with the labels (made JSON-safe with :func:`json_safe`).
    overwrite : bool
        Replace an existing file (default False: it is kept and :class:`OutputExistsError` is
        raised). A ``.zarr`` folder is replaced only when it is a labels store written by
        napari-dgseg; any other folder is refused. The napari writer passes True (napari's save
        dialog has already asked the user).
    placement : Placement, optional
        Pixel size and origin of the mask (the source image's); stored in the record under
        ``"placement"`` and, for micrometres in a TIFF, in its resolution tags.

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    InputError
        For an unsupported ending, a missing folder, float labels or ids beyond uint32.
    OutputExistsError
        When the target exists and ``overwrite`` is False, or it is not replaceable.
    OutputWriteError
        When the system refuses the write (disk full, permission denied).
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in LABEL_SUFFIXES:
        raise InputError(
            f"{p.name}: cannot save labels with ending {suffix or '(none)'!r}; use .tif or "
            ".tiff (any size, readable everywhere) or .zarr (very large masks)."
        )
    if not p.parent.is_dir():
        raise InputError(f"{p}: the folder {p.parent} does not exist. Create it or pick another.")
    refuse_existing([p], overwrite=overwrite)
    _check_replaceable(p, suffix)
    data = _labels_array(labels, p)
    record = json_safe(dict(provenance or {}))
    if placement is not None:
        record[PLACEMENT_KEY] = placement.as_dict()
    if suffix == ".zarr":
        _write_zarr(p, data, record, placement)
    else:
        _write_tiff(p, data, record, overwrite, placement)
    return p


def _check_replaceable(p: Path, suffix: str) -> None:
    """Refuse to replace anything but a file by a file, or our own labels store by a store."""
    if not os.path.lexists(p):
        return
    if p.is_symlink():
        raise OutputExistsError(f"{p} is a symbolic link; it was kept. Choose another name.")
    if suffix != ".zarr" and p.is_dir():
        raise OutputExistsError(f"{p} is a folder; it was kept. Choose another name.")
    if suffix == ".zarr" and (not p.is_dir() or read_provenance(p) is None):
        raise OutputExistsError(
            f"{p} exists and is not a labels store written by napari-dgseg; it was kept (never "
            "deleted). Remove it yourself or choose another name."
        )


def tiff_resolution(placement: Placement | None) -> dict[str, Any]:
    """tifffile keywords for the resolution tags: pixels per centimetre for micrometres."""
    if placement is None or placement.unit != MICROMETER:
        return {}
    sy, sx = placement.scale
    return {"resolution": (1e4 / sx, 1e4 / sy), "resolutionunit": "CENTIMETER"}


#: OME's spelling of the micrometre.
OME_MICROMETER = "\u00b5m"


def tiff_keywords(
    shape: Sequence[int],
    record: Mapping[str, Any],
    placement: Placement | None = None,
    name: str = "labels",
) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords that store ``record`` and ``placement`` in a TIFF.

    ``(H, W)`` and ``(C, H, W)`` arrays become OME-TIFF: the JSON ``{PROVENANCE_KEY: record}``
    is the OME ``Image/Description``; a placement in micrometres adds ``PhysicalSizeX/Y`` and
    each plane's ``PositionX/Y`` (the world position of pixel ``(0, 0)``) in micrometres. Other
    shapes get the JSON as a plain ImageDescription. A micrometre placement also sets the
    resolution tags (:func:`tiff_resolution`).

    Parameters
    ----------
    shape : sequence of int
        Shape of the array to write.
    record : mapping
        JSON-safe provenance record (with its ``"placement"`` already in it, if any).
    placement : Placement, optional
        Pixel size and origin.
    name : str
        OME image name.

    Returns
    -------
    dict
        ``ome``, ``metadata`` (or ``description``) and resolution keywords.
    """
    text = json.dumps({PROVENANCE_KEY: record}, ensure_ascii=True, sort_keys=True)
    resolution = tiff_resolution(placement)
    if len(shape) not in (2, 3):
        return {"description": text, "metadata": None, **resolution}
    meta: dict[str, Any] = {"axes": "YX" if len(shape) == 2 else "CYX", "Name": name,
                            "Description": text}
    if placement is not None and placement.unit == MICROMETER:
        (sy, sx), (ty, tx) = placement.scale, placement.translate
        planes = 1 if len(shape) == 2 else int(shape[0])
        meta.update(PhysicalSizeX=sx, PhysicalSizeXUnit=OME_MICROMETER, PhysicalSizeY=sy,
                    PhysicalSizeYUnit=OME_MICROMETER)
        meta["Plane"] = {
            "PositionX": [tx] * planes, "PositionXUnit": [OME_MICROMETER] * planes,
            "PositionY": [ty] * planes, "PositionYUnit": [OME_MICROMETER] * planes,
        }
    return {"ome": True, "metadata": meta, **resolution}


def _write_tiff(
    p: Path, data: Any, record: dict, overwrite: bool, placement: Placement | None = None
) -> None:
    import tifffile

    array = np.asarray(data)
    tiled = array.ndim == 2 and min(array.shape) >= TIFF_TILE_FROM
    keywords = tiff_keywords(array.shape, record, placement, name=p.name.split(".")[0])
    atomic_write(
        p,
        lambda tmp: tifffile.imwrite(
            tmp,
            array,
            compression="zlib",
            photometric="minisblack",
            tile=(256, 256) if tiled else None,
            bigtiff=array.nbytes > 2**31,
            **keywords,
        ),
        suffix=".tmp",
        overwrite=overwrite,
    )


def ome_zarr_attributes(placement: Placement | None, name: str) -> dict[str, Any]:
    """NGFF 0.5 ``"ome"`` attributes of a one-level 2-D label image at ``"0"``.

    The placement's pixel size and origin are the ``scale`` and ``translation`` of level 0,
    in micrometres (axes ``unit``) or, for a pixel placement, without a unit.
    """
    place = placement or Placement(scale=(1.0, 1.0), unit=PIXEL)
    unit = {"unit": "micrometer"} if place.unit == MICROMETER else {}
    return {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [{
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(place.scale)},
                    {"type": "translation", "translation": list(place.translate)},
                ],
            }],
        }],
        "image-label": {},
    }


def _write_zarr(p: Path, data: Any, record: dict, placement: Placement | None = None) -> None:
    import zarr

    tmp = p.parent / f"{temp_prefix(p.name)}{uuid.uuid4().hex[:8]}.tmp"
    chunks = tuple(
        min(ZARR_CHUNK, int(s)) if i >= data.ndim - 2 else 1 for i, s in enumerate(data.shape)
    )
    try:
        shape = tuple(int(s) for s in data.shape)
        if data.ndim == 2:  # OME-Zarr: a group with level "0", placement as transformations
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            z = group.create_array("0", shape=shape, dtype=data.dtype, chunks=chunks)
            attrs = group.attrs
        else:  # N-D labels: a plain array (NGFF has no axes for them)
            z = zarr.create_array(store=str(tmp), shape=shape, dtype=data.dtype, chunks=chunks)
            attrs = z.attrs
        if hasattr(data, "dask"):
            import dask.array as da

            da.store(data.rechunk(chunks), z, lock=False)
        else:
            z[...] = np.asarray(data)
        if data.ndim == 2:
            attrs["ome"] = ome_zarr_attributes(placement, p.name.split(".")[0])
        attrs[PROVENANCE_KEY] = record
        _replace_dir(tmp, p)
    except (DgsegError, KeyboardInterrupt, SystemExit):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = OutputWriteError(describe_os_error(exc, p))
        error.errno = exc.errno
        raise error from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; an old ``target`` is moved aside first, then deleted."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.parent / f"{OLD_PREFIX}{os.getpid()}-{target.name}.{uuid.uuid4().hex[:8]}.old"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def read_provenance(path: str | Path) -> dict | None:
    """The provenance record of a labels file, without reading its pixels.

    Returns
    -------
    dict or None
        The record, or None when the file is not a napari-dgseg labels file (or unreadable).
    """
    p = Path(path)
    try:
        if p.is_dir():
            import zarr

            node = zarr.open(str(p), mode="r")
            value = node.attrs.get(PROVENANCE_KEY)
            return dict(value) if isinstance(value, Mapping) else None
        if _suffix(p) in (".tif", ".tiff") and p.stat().st_size > 0:
            import tifffile

            with tifffile.TiffFile(p) as tf:
                return _record_from_description(tf.pages.first.description)
    except Exception:
        return None
    return None


def _record_from_description(description: str | None) -> dict | None:
    """The record in a TIFF ImageDescription: plain JSON, or the OME-XML image Description."""
    text = (description or "").lstrip()
    if text.startswith("<"):
        text = _ome_image_description(text) or ""
    if not text.startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    value = parsed.get(PROVENANCE_KEY) if isinstance(parsed, dict) else None
    return dict(value) if isinstance(value, Mapping) else None


def _ome_image_description(xml: str) -> str | None:
    """Text of the first OME ``Image/Description`` element, or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for image in root:
        if image.tag.rsplit("}", 1)[-1] != "Image":
            continue
        for child in image:
            if child.tag.rsplit("}", 1)[-1] == "Description":
                return (child.text or "").strip()
    return None


def _zarr_labels(node: Any, p: Path) -> Any:
    """The label array of a Zarr node: the node itself, or level 0 of an OME-Zarr group."""
    import zarr

    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    try:
        return node[multiscales[0]["datasets"][0]["path"]]
    except (TypeError, LookupError):
        raise ImageReadError(
            f"{p.name}: is a Zarr group without OME-Zarr 'multiscales' metadata, not a labels "
            "array. Pass the array folder."
        ) from None


def read_labels(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a label image and its provenance.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` file or a ``.zarr`` folder (any labels TIFF, Zarr array or
        OME-Zarr group, whose level 0 is read; files not written by napari-dgseg give an empty
        record).

    Returns
    -------
    labels : np.ndarray
        The label image, dtype as stored.
    provenance : dict
        The stored record, ``{}`` when there is none.

    Raises
    ------
    ImageReadError
        When the path is missing, empty, or not a readable TIFF/Zarr array.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder. Check the path.")
    try:
        if p.is_dir():
            import zarr

            node = zarr.open(str(p), mode="r")
            array = _zarr_labels(node, p)
            value = node.attrs.get(PROVENANCE_KEY)
            return np.asarray(array[...]), dict(value) if isinstance(value, Mapping) else {}
        if p.stat().st_size == 0:
            raise ImageReadError(
                f"{p.name}: the file is empty (0 bytes). The save was interrupted or the copy "
                "failed; save or copy it again."
            )
        import tifffile

        with tifffile.TiffFile(p) as tf:
            record = _record_from_description(tf.pages.first.description) or {}
            return tf.asarray(), record
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{p.name}: cannot be read as a labels TIFF or Zarr array ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Check that it is a complete "
            "label image."
        ) from exc
