"""Write and read label images with their provenance inside the file.

A mask without its history cannot be trusted later; so every labels file napari-dgseg writes
carries a JSON provenance record (model, parameters, source image, who wrote it and when):

* ``.tif`` / ``.tiff``: zlib-compressed TIFF (tiled 256 x 256 from 512 px up) whose
  ImageDescription is the JSON object ``{"napari_dgseg_provenance": {...}}``. Any TIFF reader
  reads the pixels; :func:`read_labels` gets the record back.
* ``.zarr``: a Zarr (format 3) array, chunks of 1024 x 1024, with the record in its attributes
  under ``"napari_dgseg_provenance"``.

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
from collections.abc import Mapping
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
    "json_safe",
    "read_labels",
    "read_provenance",
    "write_labels",
]

#: Key under which the provenance record is stored (TIFF description JSON, Zarr attributes).
PROVENANCE_KEY = "napari_dgseg_provenance"

#: File endings :func:`write_labels` accepts.
LABEL_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".zarr")

#: Zarr chunk side for labels.
ZARR_CHUNK = 1024

#: TIFF labels with both sides at least this large are written tiled (256 x 256).
TIFF_TILE_FROM = 512

_KEPT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32))


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
    """Check ``labels`` and bring it to a kept dtype (uint8, uint16, int32)."""
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
    if dtype in _KEPT_DTYPES:
        return labels
    if dtype.kind not in "ui":
        raise InputError(
            f"{path.name}: labels have dtype {dtype}; label images hold integer ids. Convert "
            "with e.g. `labels.astype('int32')` after checking the values are whole numbers."
        )
    lo, hi = (int(v) for v in (np.asarray(labels.min()), np.asarray(labels.max())))
    if lo >= 0 and hi <= np.iinfo(np.uint8).max and dtype.itemsize == 1:
        return labels.astype(np.uint8)
    if lo >= 0 and hi <= np.iinfo(np.uint16).max and dtype.kind == "u" and dtype.itemsize == 2:
        return labels.astype(np.uint16)
    info = np.iinfo(np.int32)
    if lo < info.min or hi > info.max:
        raise InputError(
            f"{path.name}: label ids run from {lo} to {hi}, beyond int32. Relabel them "
            "sequentially first (skimage.segmentation.relabel_sequential)."
        )
    return labels.astype(np.int32)


def write_labels(
    path: str | Path,
    labels: Any,
    provenance: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Save a label image with its provenance, atomically.

    Parameters
    ----------
    path : str or Path
        Target ending in ``.tif``, ``.tiff`` or ``.zarr``.
    labels : array-like
        ``(H, W)`` (or N-D) integer or bool labels; numpy or dask (a multiscale list: level 0).
        uint8, uint16 and int32 are kept, bool becomes uint8, other integers become int32.
    provenance : mapping, optional
        Record stored with the labels (made JSON-safe with :func:`json_safe`).
    overwrite : bool
        Replace an existing file (default False: it is kept and :class:`OutputExistsError` is
        raised). A ``.zarr`` folder is replaced only when it is a labels store written by
        napari-dgseg; any other folder is refused. The napari writer passes True (napari's save
        dialog has already asked the user).

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    InputError
        For an unsupported ending, a missing folder, float labels or ids beyond int32.
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
    if suffix == ".zarr":
        _write_zarr(p, data, record)
    else:
        _write_tiff(p, data, record, overwrite)
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


def _write_tiff(p: Path, data: Any, record: dict, overwrite: bool) -> None:
    import tifffile

    array = np.asarray(data)
    description = json.dumps({PROVENANCE_KEY: record}, ensure_ascii=True, sort_keys=True)
    tiled = array.ndim == 2 and min(array.shape) >= TIFF_TILE_FROM
    atomic_write(
        p,
        lambda tmp: tifffile.imwrite(
            tmp,
            array,
            compression="zlib",
            photometric="minisblack",
            description=description,
            metadata=None,
            tile=(256, 256) if tiled else None,
            bigtiff=array.nbytes > 2**31,
        ),
        suffix=".tmp",
        overwrite=overwrite,
    )


def _write_zarr(p: Path, data: Any, record: dict) -> None:
    import zarr

    tmp = p.parent / f"{temp_prefix(p.name)}{uuid.uuid4().hex[:8]}.tmp"
    chunks = tuple(
        min(ZARR_CHUNK, int(s)) if i >= data.ndim - 2 else 1 for i, s in enumerate(data.shape)
    )
    try:
        z = zarr.create_array(
            store=str(tmp), shape=tuple(int(s) for s in data.shape), dtype=data.dtype, chunks=chunks
        )
        if hasattr(data, "dask"):
            import dask.array as da

            da.store(data.rechunk(chunks), z, lock=False)
        else:
            z[...] = np.asarray(data)
        z.attrs[PROVENANCE_KEY] = record
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
    if not description or not description.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(description)
    except ValueError:
        return None
    value = parsed.get(PROVENANCE_KEY) if isinstance(parsed, dict) else None
    return dict(value) if isinstance(value, Mapping) else None


def read_labels(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a label image and its provenance.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` file or a ``.zarr`` folder (any labels TIFF or Zarr array; files not
        written by napari-dgseg give an empty record).

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
            if not isinstance(node, zarr.Array):
                raise ImageReadError(
                    f"{p.name}: is a Zarr group, not a labels array. Pass the array folder."
                )
            value = node.attrs.get(PROVENANCE_KEY)
            return np.asarray(node[...]), dict(value) if isinstance(value, Mapping) else {}
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
