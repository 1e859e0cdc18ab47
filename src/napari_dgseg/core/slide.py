"""Open slides, tiles and OME-Zarr images, lazily where the format allows.

:func:`open_image` is the one entry point. It returns an :class:`OpenedImage` whose ``levels`` are
the pyramid levels of the image (level 0 = full resolution), each an ``(H, W)`` grey or
``(H, W, C)`` colour array with ``C`` in ``{3, 4}``:

* TIFF, OME-TIFF and SVS (tiled, pyramidal or plain): read through ``tifffile``'s Zarr store and
  wrapped in ``dask`` arrays; no pixel is decoded until a region is asked for, so a multi-gigapixel
  slide never loads whole. Every level of the first series becomes one entry of ``levels``.
* Zarr and OME-Zarr folders: ``zarr`` arrays wrapped in ``dask`` arrays, levels from the OME
  ``multiscales`` metadata.
* PNG and JPEG: decoded eagerly with Pillow into numpy arrays (they cannot be read in parts).

Anything that cannot be read raises :class:`~napari_dgseg.core.errors.ImageReadError` whose
message is ``"<file>: <reason>. <what to do>"``.

:func:`to_rgb_uint8` turns any supported region into the ``(H, W, 3)`` uint8 RGB the models take.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.errors import DgsegError, ImageReadError, InputError
from napari_dgseg.core.imageprep import to_rgb_uint8 as imageprep_to_rgb_uint8
from napari_dgseg.core.limits import check_memory

__all__ = [
    "MIN_SIDE",
    "SUPPORTED_CHANNELS",
    "SUPPORTED_SUFFIXES",
    "OpenedImage",
    "is_zarr_dir",
    "open_image",
    "supported_suffix",
    "to_rgb_uint8",
]

#: File name endings :func:`open_image` reads (compound endings first).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".ome.tif",
    ".ome.tiff",
    ".ome.zarr",
    ".tif",
    ".tiff",
    ".svs",
    ".png",
    ".jpg",
    ".jpeg",
    ".zarr",
)

#: Smallest image side (pixels) accepted: smaller images hold no nucleus or vessel segment and
#: cannot go through the model's tiling.
MIN_SIDE = 16

#: Channel counts accepted: grey, RGB, RGBA.
SUPPORTED_CHANNELS: tuple[int, ...] = (1, 3, 4)

#: Target side (pixels) of one dask chunk of a lazy level: a whole multiple of the file's tile
#: size, so a napari view of a slide decodes a handful of chunks, not thousands of tiny tasks.
DASK_CHUNK = 1024

#: Physical pixel sizes above this (micrometres) computed from TIFF resolution tags are treated
#: as the desktop "dpi" many programs write (72 dpi = 353 um) and ignored.
MAX_RESOLUTION_PIXEL_UM = 50.0

_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".svs")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")

_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}


@dataclass
class OpenedImage:
    """An opened image: its pyramid levels and what the file says about it.

    Attributes
    ----------
    levels : list of array
        Pyramid levels, level 0 = full resolution, sides decreasing. Each is a numpy or dask
        array of shape ``(H, W)`` (grey) or ``(H, W, C)`` with ``C`` in ``{3, 4}`` (RGB, RGBA).
        Dask levels read from the file only the regions that are computed.
    path : str
        The file or folder opened.
    rgb : bool
        True when the last axis holds RGB or RGBA channels.
    pixel_size_um : tuple of float or None
        ``(y, x)`` pixel size of level 0 in micrometres where the file records one.
    metadata : dict
        JSON-friendly facts: ``format``, ``dtype``, ``shape`` (level 0), ``level_shapes``,
        ``n_levels``, ``lazy``, ``channels`` and format-specific keys (``compression``,
        ``tile``, ``description`` excerpt, ``objective_power``).
    """

    levels: list
    path: str
    rgb: bool
    pixel_size_um: tuple[float, float] | None
    metadata: dict
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    @property
    def full(self) -> Any:
        """Level 0 (full resolution), ``(H, W)`` or ``(H, W, C)``."""
        return self.levels[0]

    @property
    def multiscale(self) -> bool:
        """True when the image has more than one level."""
        return len(self.levels) > 1

    def close(self) -> None:
        """Close the file handles behind lazy levels (they cannot be read afterwards)."""
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> OpenedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Path helpers
# --------------------------------------------------------------------------------------------


def supported_suffix(path: str | Path) -> str | None:
    """The supported ending of ``path`` (lower case, e.g. ``".ome.tif"``), or None."""
    name = Path(path).name.lower().rstrip("/\\")
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def is_zarr_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a Zarr (v2 or v3) array or group."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any((p / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray"))


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------


def open_image(path: str | Path) -> OpenedImage:
    """Open an image file or Zarr folder.

    Parameters
    ----------
    path : str or Path
        A ``.tif/.tiff/.ome.tif/.svs`` file, a ``.png/.jpg/.jpeg`` file, or a ``.zarr`` /
        ``.ome.zarr`` folder.

    Returns
    -------
    OpenedImage
        Levels ``(H, W)`` or ``(H, W, C)``; lazy (dask) for TIFF and Zarr, numpy for PNG/JPEG.

    Raises
    ------
    ImageReadError
        When the path is missing, empty, not an image, truncated, too small (sides below
        :data:`MIN_SIDE`), has a channel count outside :data:`SUPPORTED_CHANNELS`, or has more
        than one plane along z/time. The message names the file, the reason and what to do.
    """
    p = Path(path)
    name = p.name
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder. Check the path and try again.")
    suffix = supported_suffix(p)
    if p.is_dir():
        if is_zarr_dir(p):
            return _finish(_open_zarr(p), p)
        raise ImageReadError(
            f"{name}: is a folder but not a Zarr store (no zarr.json, .zgroup or .zarray inside). "
            "Open an image file, or a .zarr/.ome.zarr folder."
        )
    if suffix is None or suffix in _ZARR_SUFFIXES:
        raise ImageReadError(
            f"{name}: unsupported file type. Supported are "
            f"{', '.join(s for s in SUPPORTED_SUFFIXES if s not in _ZARR_SUFFIXES)} files and "
            ".zarr/.ome.zarr folders; convert the image to one of them."
        )
    if p.stat().st_size == 0:
        raise ImageReadError(
            f"{name}: the file is empty (0 bytes). The copy or download probably failed; "
            "copy the file again from its source."
        )
    if suffix in _TIFF_SUFFIXES:
        return _finish(_open_tiff(p), p)
    return _finish(_open_pil(p), p)


def _finish(opened: OpenedImage, p: Path) -> OpenedImage:
    """Validate sizes and channels of an opened image; close it and raise when unusable."""
    try:
        _validate_levels(opened.levels, p.name)
    except ImageReadError:
        opened.close()
        raise
    level_shapes = [tuple(int(s) for s in lev.shape) for lev in opened.levels]
    full = opened.levels[0]
    opened.metadata.update(
        {
            "path": str(p),
            "dtype": str(full.dtype),
            "shape": list(level_shapes[0]),
            "level_shapes": [list(s) for s in level_shapes],
            "n_levels": len(level_shapes),
            "channels": 1 if full.ndim == 2 else int(full.shape[2]),
            "lazy": not isinstance(full, np.ndarray),
        }
    )
    opened.rgb = full.ndim == 3 and full.shape[2] in (3, 4)
    opened.metadata["pixel_size_um"] = (
        list(opened.pixel_size_um) if opened.pixel_size_um is not None else None
    )
    return opened


def _validate_levels(levels: list, name: str) -> None:
    if not levels:
        raise ImageReadError(f"{name}: holds no image data. Check that the file is an image.")
    full = levels[0]
    if full.ndim == 3 and full.shape[2] not in (3, 4):
        raise ImageReadError(
            f"{name}: has {full.shape[2]} channels; supported are "
            "1 (grey), 3 (RGB) or 4 (RGBA). Export the channels you want to segment as an "
            "RGB or single-channel image (e.g. Fiji: Image > Color > Stack to RGB)."
        )
    if full.ndim not in (2, 3):
        raise ImageReadError(
            f"{name}: has {full.ndim} dimensions {tuple(full.shape)}; a 2-D grey, RGB or RGBA "
            "image is needed. Save one plane as its own image."
        )
    h, w = int(full.shape[0]), int(full.shape[1])
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageReadError(
            f"{name}: the image is only {h} x {w} pixels; at least {MIN_SIDE} x {MIN_SIDE} "
            "pixels are needed. Open the full image, not a thumbnail or a placeholder."
        )
    kind = np.dtype(full.dtype).kind
    if kind not in "buif":
        raise ImageReadError(
            f"{name}: pixel type {full.dtype} is not supported; integer or float pixels are "
            "needed. Convert the image to 8- or 16-bit."
        )
    previous = (h, w)
    for lev in levels[1:]:
        size = (int(lev.shape[0]), int(lev.shape[1]))
        if size[0] > previous[0] or size[1] > previous[1]:
            raise ImageReadError(
                f"{name}: pyramid levels do not shrink ({previous} then {size}). "
                "Re-save the pyramid with levels ordered from full resolution down."
            )
        previous = size


# --------------------------------------------------------------------------------------------
# Axis handling shared by TIFF and Zarr
# --------------------------------------------------------------------------------------------


def _to_yxc(array: Any, axes: str, name: str) -> Any:
    """Reorder an array with named ``axes`` to ``(Y, X)`` or ``(Y, X, C)``, lazily.

    Axes other than Y, X and one channel axis (``C`` or ``S``) must have length 1 and are
    dropped; a channel axis of length 1 is dropped too.
    """
    axes = axes.upper()
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
        raise ImageReadError(
            f"{name}: cannot find the image plane in axes {axes!r} of shape "
            f"{tuple(array.shape)}. Save the image as a plain 2-D grey or RGB image."
        )
    channel_axes = [i for i, a in enumerate(axes) if a in "CS" and array.shape[i] > 1]
    if len(channel_axes) > 1:
        raise ImageReadError(
            f"{name}: has two channel axes (shape {tuple(array.shape)}, axes {axes!r}); "
            "supported are 1 (grey), 3 (RGB) or 4 (RGBA) channels. Merge them into one RGB image."
        )
    index: list[Any] = []
    kept: list[str] = []
    for i, a in enumerate(axes):
        if a in "YX" or i in channel_axes:
            index.append(slice(None))
            kept.append(a)
        elif array.shape[i] == 1:
            index.append(0)
        else:
            what = {
                "Z": "z-planes",
                "T": "time points",
                "Q": "planes (channels or pages)",
                "I": "planes (channels or pages)",
            }.get(a, f"entries along axis {a}")
            raise ImageReadError(
                f"{name}: holds {array.shape[i]} {what} (shape {tuple(array.shape)}, axes "
                f"{axes!r}); napari-dgseg reads one 2-D grey, RGB (3 channels) or RGBA "
                "(4 channels) image. Save the plane or the colour image you need on its own."
            )
    array = array[tuple(index)]
    order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a not in "YX"]
    if order != list(range(len(order))):
        array = array.transpose(order)
    return array


def _chunks_for(native: tuple[int, ...], shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """Dask chunks: whole multiples of the native chunk near :data:`DASK_CHUNK` along Y and X."""
    out = []
    for n, s, a in zip(native, shape, axes.upper(), strict=True):
        n = max(1, int(n))
        if a in "YX":
            out.append(min(int(s), n * max(1, DASK_CHUNK // n)))
        else:
            out.append(min(int(s), n))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# TIFF / OME-TIFF / SVS
# --------------------------------------------------------------------------------------------


def _open_tiff(p: Path) -> OpenedImage:
    import dask.array as da
    import tifffile
    import zarr

    name = p.name
    with p.open("rb") as fh:
        head = fh.read(12)
    if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise ImageReadError(
            f"{name}: not a TIFF file (it starts with {head!r}, not a TIFF header). It may be "
            "another format renamed to .tif or a broken download; open the original file."
        )
    try:
        with _quiet_tifffile():
            tf = tifffile.TiffFile(p)
    except Exception as exc:  # tifffile raises many types on garbage input
        raise ImageReadError(
            f"{name}: cannot be read as TIFF ({_short(exc)}). The file is probably truncated or "
            "corrupt; copy it again from its source."
        ) from exc
    try:
        with _quiet_tifffile():
            all_series = tf.series
        if not all_series:
            raise ImageReadError(f"{name}: the TIFF holds no image. Check the file.")
        series = all_series[0]
        _check_not_truncated(tf, series, p)
        axes = series.axes
        store = series.aszarr(multiscales=True)
        group = zarr.open(store, mode="r")
        datasets = group.attrs["multiscales"][0]["datasets"]
        levels = []
        for ds in datasets:
            z = group[ds["path"]]
            chunks = _chunks_for(z.chunks, z.shape, axes)
            guarded = _GuardedLevel(z, name)
            lazy = da.from_array(guarded, chunks=chunks, asarray=False,
                                 meta=np.empty((0,) * z.ndim, dtype=z.dtype))
            levels.append(_to_yxc(lazy, axes, name))
        levels.sort(key=lambda a: -int(a.shape[0]) * int(a.shape[1]))
        metadata = _tiff_metadata(tf, series)
        pixel_size = _tiff_pixel_size(tf, series)
        opened = OpenedImage(
            levels=levels,
            path=str(p),
            rgb=False,
            pixel_size_um=pixel_size,
            metadata=metadata,
            _closers=[tf.close],
        )
        _probe(levels[-1], name)
        return opened
    except ImageReadError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise ImageReadError(
            f"{name}: cannot be read as TIFF ({_short(exc)}). The file is probably truncated or "
            "corrupt; copy it again from its source."
        ) from exc


class _GuardedLevel:
    """A TIFF or zarr level whose read errors become one :class:`ImageReadError` naming the file.

    Tiles are decoded only when inference reaches them, long after the file was opened; a
    corrupt tile deep inside a slide must still end in one line, not a codec traceback.
    """

    def __init__(self, array: Any, name: str) -> None:
        self._array = array
        self._name = name
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            with _quiet_tifffile():
                return np.asarray(self._array[key])
        except Exception as exc:
            raise ImageReadError(
                f"{self._name}: the pixel data cannot be decoded ({_short(exc)}). The file is "
                "corrupt or truncated; copy it again from its source or re-export it."
            ) from None


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log messages about broken files (the error we raise says it all)."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_not_truncated(tf: Any, series: Any, p: Path) -> None:
    """Raise when the pixel data of any level points past the end of the file."""
    size = p.stat().st_size
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size == 0:
                continue
            end = int((offsets + counts).max())
            if end > size:
                raise ImageReadError(
                    f"{p.name}: the file is truncated (pixel data runs to byte {end:,} but the "
                    f"file has {size:,} bytes). Copy the file again from its source."
                )


def _probe(level: Any, name: str) -> None:
    """Decode one small corner of ``level`` to catch corrupt data and missing codecs early."""
    try:
        np.asarray(level[:1, :1])
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{name}: the pixel data cannot be decoded ({_short(exc)}). The file is corrupt or "
            "uses a compression imagecodecs cannot read; re-export it (e.g. as JPEG- or "
            "zlib-compressed TIFF)."
        ) from exc


def _tiff_metadata(tf: Any, series: Any) -> dict:
    page = series.keyframe
    if tf.is_svs:
        fmt = "svs"
    elif tf.is_ome:
        fmt = "ome-tiff"
    elif tf.is_imagej:
        fmt = "imagej-tiff"
    else:
        fmt = "tiff"
    meta: dict[str, Any] = {
        "format": fmt,
        "series": series.name or "",
        "axes": series.axes,
        "compression": getattr(page.compression, "name", str(page.compression)),
        "tiled": bool(page.is_tiled),
        "photometric": getattr(page.photometric, "name", str(page.photometric)),
    }
    if page.is_tiled:
        meta["tile"] = [int(page.tilelength), int(page.tilewidth)]
    description = tf.pages.first.description or ""
    if description:
        meta["description"] = description[:500]
    if tf.is_svs:
        match = re.search(r"AppMag\s*=\s*([0-9.]+)", description)
        if match:
            meta["objective_power"] = float(match.group(1))
        meta["associated_images"] = [s.name for s in tf.series[1:]]
    return meta


def _tiff_pixel_size(tf: Any, series: Any) -> tuple[float, float] | None:
    """Pixel size of level 0 in micrometres from SVS, OME-XML, ImageJ or resolution tags."""
    description = tf.pages.first.description or ""
    if tf.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", description)
        if match:
            mpp = float(match.group(1))
            if mpp > 0:
                return (mpp, mpp)
    if tf.is_ome and tf.ome_metadata:
        size = _ome_xml_pixel_size(tf.ome_metadata)
        if size is not None:
            return size
    page = series.keyframe
    tags = page.tags
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if xres is None or yres is None:
        return None
    xr, yr = _rational(xres.value), _rational(yres.value)
    if not xr or not yr:
        return None
    if tf.is_imagej:
        unit = str((tf.imagej_metadata or {}).get("unit", "")).strip().lower()
        factor = _UNIT_TO_UM.get(unit.replace("\\u00b5", "µ"))
        if factor is not None:
            return (factor / yr, factor / xr)
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit_um is None:
        return None
    size = (per_unit_um / yr, per_unit_um / xr)
    if max(size) > MAX_RESOLUTION_PIXEL_UM:
        return None
    return size


def _rational(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _ome_xml_pixel_size(xml: str) -> tuple[float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        x, y = element.get("PhysicalSizeX"), element.get("PhysicalSizeY")
        if x is None:
            return None
        y = y if y is not None else x
        fx = _UNIT_TO_UM.get(element.get("PhysicalSizeXUnit", "µm").lower(), None)
        fy = _UNIT_TO_UM.get(element.get("PhysicalSizeYUnit", "µm").lower(), None)
        if fx is None or fy is None:
            return None
        return (float(y) * fy, float(x) * fx)
    return None


# --------------------------------------------------------------------------------------------
# Zarr / OME-Zarr
# --------------------------------------------------------------------------------------------


def _open_zarr(p: Path) -> OpenedImage:
    import dask.array as da
    import zarr

    name = p.name
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise ImageReadError(
            f"{name}: cannot be opened as Zarr ({_short(exc)}). Check that the folder is a "
            "complete Zarr store."
        ) from exc
    meta: dict[str, Any] = {"format": "zarr"}
    pixel_size = None
    try:
        if isinstance(node, zarr.Array):
            axes = _guess_axes(node.shape)
            arrays = [node]
        else:
            attrs = dict(node.attrs)
            multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            if not multiscales:
                raise ImageReadError(
                    f"{name}: the Zarr group has no OME-Zarr 'multiscales' metadata, so its "
                    "image levels are unknown. Open the array folder inside it, or write the "
                    "image as OME-Zarr."
                )
            ms = multiscales[0]
            meta["format"] = "ome-zarr"
            meta["ome_zarr_version"] = str(ms.get("version", attrs.get("ome", {}).get("version")))
            arrays = [node[ds["path"]] for ds in ms["datasets"]]
            axes_info = ms.get("axes")
            if axes_info:
                axes = "".join(
                    (a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in axes_info
                )
            else:
                axes = _guess_axes(arrays[0].shape)
            pixel_size = _ome_zarr_pixel_size(ms, axes_info, axes)
            if ms.get("name"):
                meta["name"] = str(ms["name"])
        meta["axes"] = axes
        levels = []
        for z in arrays:
            chunks = _chunks_for(z.chunks, z.shape, axes)
            guarded = _GuardedLevel(z, name)
            lazy = da.from_array(guarded, chunks=chunks, asarray=False,
                                 meta=np.empty((0,) * z.ndim, dtype=z.dtype))
            levels.append(_to_yxc(lazy, axes, name))
        levels.sort(key=lambda a: -int(a.shape[0]) * int(a.shape[1]))
        _probe(levels[-1], name)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{name}: the Zarr store cannot be read ({_short(exc)}). Check that it is complete "
            "and holds a 2-D image."
        ) from exc
    return OpenedImage(
        levels=levels, path=str(p), rgb=False, pixel_size_um=pixel_size, metadata=meta
    )


def _guess_axes(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "YXC" if shape[2] <= shape[0] else "CYX"
    return "TCZYX"[-len(shape) :] if len(shape) <= 5 else "Q" * (len(shape) - 2) + "YX"


def _ome_zarr_pixel_size(ms: dict, axes_info: list | None, axes: str) -> tuple[float, float] | None:
    """Y, X scale of dataset 0 (times any global scale) in micrometres, where a unit is given."""
    scale = np.ones(len(axes))
    transforms = list(ms["datasets"][0].get("coordinateTransformations", []))
    transforms += list(ms.get("coordinateTransformations", []))
    found = False
    for t in transforms:
        if t.get("type") == "scale" and "scale" in t and len(t["scale"]) == len(axes):
            scale = scale * np.asarray(t["scale"], dtype=float)
            found = True
    if not found or not axes_info:
        return None
    out = []
    for letter in "YX":
        i = axes.index(letter)
        info = axes_info[i] if isinstance(axes_info[i], dict) else {}
        factor = _UNIT_TO_UM.get(str(info.get("unit", "")).lower())
        if factor is None:
            return None
        out.append(float(scale[i]) * factor)
    return (out[0], out[1])


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


def _open_pil(p: Path) -> OpenedImage:
    from PIL import Image, UnidentifiedImageError

    name = p.name
    try:
        with warnings.catch_warnings():
            # PIL warns between 89 M and 179 M pixels; our own memory check decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
        with im:
            width, height = im.size
            bands = len(im.getbands())
            check_memory(
                width * height * max(bands, 3) * 2,
                f"{name}: decoding {width} x {height} pixels",
                hint="convert it to a tiled TIFF (read lazily) or crop it",
            )
            im.load()
            fmt = (im.format or p.suffix.lstrip(".")).lower()
            mode = im.mode
            pixel_size = _pil_pixel_size(im.info)
            array = _pil_to_array(im)
    except DgsegError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{name}: {_short(exc)}. Such a large {p.suffix.lstrip('.').upper()} is decoded whole "
            "in memory (or is a decompression bomb); convert it to a tiled TIFF, or crop it."
        ) from None
    except UnidentifiedImageError as exc:
        with p.open("rb") as fh:
            head = fh.read(12)
        raise ImageReadError(
            f"{name}: not a {p.suffix.lstrip('.').upper()} image (it starts with {head!r}). It "
            "may be another format renamed or a broken download; open the original file."
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            f"{name}: the image cannot be decoded ({_short(exc)}). The file is probably "
            "truncated; copy it again from its source."
        ) from exc
    meta = {"format": fmt, "pil_mode": mode}
    return OpenedImage(levels=[array], path=str(p), rgb=False, pixel_size_um=pixel_size,
                       metadata=meta)


def _pil_pixel_size(info: dict) -> tuple[float, float] | None:
    """``(y, x)`` micrometres from a PNG pHYs / JPEG JFIF density (Pillow's ``dpi``); the
    desktop densities (72-600 dpi, hundreds of micrometres) say nothing and are ignored."""
    dpi = info.get("dpi")
    try:
        dx, dy = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if dx <= 0 or dy <= 0:
        return None
    size = (25400.0 / dy, 25400.0 / dx)
    return size if max(size) <= MAX_RESOLUTION_PIXEL_UM else None


def _pil_to_array(im: Any) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "PA", "La"):
        im = im.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    array = np.asarray(im)
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(array: Any) -> np.ndarray:
    """Convert a grey, RGB or RGBA region of any supported dtype to uint8 RGB.

    The rule is :mod:`napari_dgseg.core.imageprep`'s, the one every other path uses: uint8 as
    is, bool 0/255, float within ``[0, 1]`` times 255, anything else by robust percentiles of the
    region's colour values; grey repeated into three channels; RGBA composited on white.

    Parameters
    ----------
    array : array-like
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``; numpy or dask (computed:
        pass a region, not a whole slide).

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    InputError
        For other shapes or non-numeric dtypes.
    """
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise InputError(
            f"image of shape {a.shape}: expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA. "
            "Select one plane or three channels first."
        )
    if a.dtype.kind not in "buif":
        raise InputError(f"image dtype {a.dtype}: expected integer, float or bool pixels.")
    return imageprep_to_rgb_uint8(a)


def _short(exc: BaseException) -> str:
    """One line naming an exception, for messages."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
