"""Loaders for the papers' public datasets in their native layouts, and a generic folder layout.

Every loader returns ``list[Sample]`` (:class:`napari_dgseg.core.data.sample.Sample`): images as
``(H, W, 3)`` uint8 RGB (grey repeated to RGB, alpha dropped), labels as ``(H, W)`` int32
(instance ids for nuclei, class ids for vessels / optic disc and cup), an optional ``(H, W)``
bool field-of-view mask. A layout that is not what the loader expects raises
:class:`~napari_dgseg.core.errors.InputError` naming the missing folders or files; a file that
cannot be read raises :class:`~napari_dgseg.core.errors.ImageReadError` naming the file.

Layouts (details and download notes in ``docs/datasets.md``):

=====================  ==========================================================================
loader                 layout
=====================  ==========================================================================
``load_folder``        ``images/*`` + ``labels/<stem>.(tif|tiff|png|npy)`` (+ ``masks/<stem>.*``)
``load_domains``       ``<domain>/images/...`` for every domain sub-folder
``load_monuseg``       ``Tissue Images/*.tif`` + ``Annotations/*.xml`` (or both in one folder)
``load_pannuke``       ``images.npy``, ``masks.npy``, ``types.npy`` anywhere under the fold folder
``load_consep``        ``Images/*.png`` + ``Labels/*.mat`` (``inst_map``, ``type_map``)
``load_drive``         ``images/*.tif`` + ``1st_manual/*_manual1.gif`` + ``mask/*_mask.gif``
``load_stare``         ``*.ppm`` + ``labels-ah/*.ah.ppm`` (field of view by threshold)
``load_chase``         ``Image_XXL.jpg`` + ``Image_XXL_1stHO.png`` (field of view by threshold)
``load_fundus_cup_disc`` ``ROIs/image/*.png`` + ``ROIs/mask/*.png`` (0 cup, 128 rim, 255 back)
=====================  ==========================================================================
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.atomic import atomic_write
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import ImageReadError, InputError
from napari_dgseg.core.imageprep import to_rgb_uint8 as imageprep_to_rgb_uint8
from napari_dgseg.core.limits import check_memory, human_bytes
from napari_dgseg.core.metrics import check_label_array, remap_label

__all__ = [
    "IMAGE_EXTS",
    "LABEL_EXTS",
    "LOADERS",
    "read_array",
    "read_labels",
    "read_mask",
    "to_rgb_uint8",
    "fov_from_image",
    "load_folder",
    "load_domains",
    "load_monuseg",
    "load_pannuke",
    "load_consep",
    "load_drive",
    "load_stare",
    "load_chase",
    "load_fundus_cup_disc",
    "load_dataset",
    "save_folder",
]

#: File types read as images.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".npy")
#: File types read as label maps in the generic layout.
LABEL_EXTS = (".tif", ".tiff", ".png", ".npy")
_TIFF_EXTS = (".tif", ".tiff")
#: PanNuke type channels 0..4 (channel 5 is background); type id = channel + 1.
PANNUKE_TYPES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


# --------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    """File name without extension (``x.ome.tif`` -> ``x``)."""
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_array(path: str | os.PathLike, mode: str = "image") -> np.ndarray:
    """Read an image or label file into a numpy array.

    Parameters
    ----------
    path : path-like
        ``.tif/.tiff`` (tifffile), ``.npy`` (no pickle), or anything Pillow reads (``.png``,
        ``.jpg``, ``.gif``, ``.ppm``, ``.bmp``).
    mode : {"image", "labels", "grey"}
        How palette (``P`` mode) files are read: ``"labels"`` keeps palette indices (the class
        or instance ids), ``"image"`` expands them to RGB(A), ``"grey"`` converts any Pillow
        image to 8-bit grey levels.

    Returns
    -------
    np.ndarray
        ``(H, W)``, ``(H, W, C)`` or whatever the file holds.

    Raises
    ------
    ImageReadError
        Missing, empty, truncated or corrupt file, or a file that is not of its extension's type.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found; check the path.")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: the file is empty (0 bytes); re-export or re-copy it.")
    ext = p.suffix.lower()
    _check_decoded_size(p, ext)
    try:
        if ext in _TIFF_EXTS:
            import tifffile

            arr = tifffile.imread(p)
        elif ext == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            arr = _read_pillow(p, mode)
    except Exception as exc:  # tifffile/Pillow/numpy raise many types for corrupt files
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise ImageReadError(
                f"{p}: the .npy file holds Python objects (pickle), which is never loaded for "
                "safety; save a plain numeric array with numpy.save."
            ) from exc
        kind = "a numpy .npy file" if ext == ".npy" else f"a {ext.lstrip('.').upper()} image"
        raise ImageReadError(
            f"{p}: cannot read the file as {kind} ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupt or of another type: re-export it."
        ) from exc
    return np.asarray(arr)


def _check_decoded_size(p: Path, ext: str) -> None:
    """Refuse a file whose decoded pixels would exceed the memory budget, before decoding.

    The size comes from the header only (TIFF series shape, ``.npy`` header, Pillow's size);
    a header that cannot be read is left to the reader, which reports it in one line.
    """
    import warnings

    try:
        if ext in _TIFF_EXTS:
            import tifffile

            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                nbytes = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
        elif ext == ".npy":
            mapped = np.load(p, mmap_mode="r", allow_pickle=False)  # header only, no pixels
            nbytes = int(np.prod(mapped.shape, dtype=np.float64)) * mapped.dtype.itemsize
            del mapped
        else:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(p) as img:
                    nbytes = img.size[0] * img.size[1] * max(len(img.getbands()), 1) * 4
    except Exception:  # not readable as its type: read_array says so in one line
        return
    check_memory(nbytes * 2, f"{p}: reading {human_bytes(nbytes)} of pixels",
                 hint="crop it or save a smaller copy")


def _read_pillow(p: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as img:
        img.load()
        if mode == "grey":
            return np.asarray(img.convert("L"))
        if img.mode == "P":
            if mode == "labels":
                return np.asarray(img)
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "F"):
            img = img.convert("RGB")
        return np.asarray(img)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D label map and check it.

    Parameters
    ----------
    path : path-like
        Label file (see :func:`read_array`).

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 (bool becomes 0/1).

    Raises
    ------
    ImageReadError
        The file cannot be read.
    InputError
        Colour (RGB) labels, more than two dimensions, non-integral floats, negative values.
    """
    p = Path(path)
    arr = read_array(p, mode="labels")
    squeezed = np.squeeze(arr) if arr.ndim > 2 else arr
    if squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4):
        raise InputError(
            f"{p}: labels are a colour image (shape {arr.shape}); labels must be one channel "
            "holding class or instance ids (0 = background): save them as a greyscale/integer "
            "image (e.g. uint8/uint16 TIFF or PNG)."
        )
    if squeezed.ndim != 2:
        raise InputError(
            f"{p}: labels must be a 2-D image, got shape {arr.shape}; save one (H, W) label map "
            "per file."
        )
    lab = check_label_array(squeezed, str(p))
    if lab.size and int(lab.max()) > np.iinfo(np.int32).max:
        raise InputError(f"{p}: label ids above 2**31 - 1; relabel the objects to smaller ids.")
    return lab.astype(np.int32)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a field-of-view mask (any non-zero pixel is inside).

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool. Colour masks count a pixel as inside where any channel is non-zero.
    """
    p = Path(path)
    arr = read_array(p, mode="grey")
    if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
        arr = arr[..., : min(arr.shape[-1], 3)].max(axis=-1)
    if arr.ndim != 2:
        raise InputError(f"{p}: a mask must be a 2-D image, got shape {arr.shape}.")
    return _binary(arr)


def _binary(grey: np.ndarray) -> np.ndarray:
    """0/1 or 0/255 (and anti-aliased) grey levels to bool."""
    if grey.dtype == bool:
        return grey
    top = float(grey.max(initial=0))
    return grey > 0 if top <= 1 else grey >= (top + 1.0) / 2.0


def to_rgb_uint8(arr: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert a grey / RGB / RGBA array read from a file to ``(H, W, 3)`` uint8 RGB.

    The intensity rule is :mod:`napari_dgseg.core.imageprep`'s (uint8 as is, other dtypes by
    robust percentiles of the whole image, alpha composited on white), so a training sample is
    exactly what inference would feed the network for the same file. This wrapper only adds the
    file-layout handling: channels-first ``(3|4, H, W)`` arrays are moved to channels-last, and
    NaN or infinite pixels are refused.

    Parameters
    ----------
    arr : np.ndarray
        ``(H, W)``, ``(H, W, 1|2|3|4)`` or channels-first ``(3|4, H, W)``.
    source : str
        Name used in error messages.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4)):
        raise InputError(
            f"{source}: expected a grey, RGB or RGBA image, got shape {a.shape}; save the image "
            "as a 2-D grey or (H, W, 3) colour image."
        )
    if a.dtype.kind not in "buif":
        raise InputError(f"{source}: unsupported image dtype {a.dtype}.")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"{source}: the image contains NaN or infinite values.")
    if min(a.shape[:2]) == 0:
        raise InputError(f"{source}: the image is empty (shape {a.shape}).")
    return imageprep_to_rgb_uint8(a)


def fov_from_image(image: np.ndarray, threshold: int = 25) -> np.ndarray:
    """Field of view of a fundus photograph from its dark surround.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    threshold : int
        A pixel is inside when its brightest channel exceeds this value.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool: the largest bright connected region, holes filled.
    """
    bright = np.asarray(image).max(axis=-1) > threshold
    lab, n = ndi.label(bright)
    if n == 0:
        return bright
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(lab == int(np.argmax(sizes)))


def _load_image(path: Path) -> np.ndarray:
    return to_rgb_uint8(read_array(path, mode="image"), str(path))


def _check_same_shape(image: np.ndarray, other: np.ndarray, img_path: Path, other_path: Path):
    if other.shape != image.shape[:2]:
        raise InputError(
            f"{other_path} has shape {other.shape} but its image {img_path} has shape "
            f"{image.shape[:2]}; they must have the same height and width."
        )


def _list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )  # fmt: skip


def _find_by_stem(folder: Path, stem: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def _missing_error(what: str, missing: list[str], hint: str) -> InputError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return InputError(f"{len(missing)} {what} missing: {shown}; {hint}")


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{path}: folder not found; expected the layout {layout}.")
    return path


# --------------------------------------------------------------------------------------------
# generic folder
# --------------------------------------------------------------------------------------------

_FOLDER_LAYOUT = "ROOT/images/* with ROOT/labels/<same stem>.(tif|tiff|png|npy)"


def load_folder(
    root: str | os.PathLike, domain: str | None = None, require_labels: bool = True
) -> list[Sample]:
    """Load the generic layout ``root/images/*`` + ``root/labels/<stem>.*`` (+ ``root/masks``).

    Parameters
    ----------
    root : path-like
        Folder holding ``images/``, ``labels/`` (label files named like their image, with
        an optional ``_labels`` suffix) and optionally ``masks/`` (field-of-view masks).
    domain : str, optional
        Domain name for every sample; default: the folder's name.
    require_labels : bool
        If False, images without a label file (or a missing ``labels/`` folder) give
        ``labels=None`` (unlabelled target data) instead of an error.

    Returns
    -------
    list of Sample
        In file-name order; ``meta["image_path"]`` / ``meta["labels_path"]`` give the sources.
    """
    root = Path(root)
    img_dir = _require_dir(root / "images", _FOLDER_LAYOUT)
    lab_dir = root / "labels"
    mask_dir = root / "masks"
    if require_labels and not lab_dir.is_dir():
        raise InputError(
            f"{root}: no labels/ folder; expected the layout {_FOLDER_LAYOUT} (pass unlabelled "
            "images with require_labels=False)."
        )
    images = _list_files(img_dir, IMAGE_EXTS)
    if not images:
        raise InputError(f"{img_dir}: no images ({', '.join(IMAGE_EXTS)}) found.")
    pairs: list[tuple[Path, Path | None]] = []
    missing: list[str] = []
    for img in images:
        stem = _stem(img)
        lab = None
        if lab_dir.is_dir():
            lab = _find_by_stem(lab_dir, stem, LABEL_EXTS) or _find_by_stem(
                lab_dir, f"{stem}_labels", LABEL_EXTS
            )
        if lab is None and require_labels:
            missing.append(str(lab_dir / f"{stem}.tif"))
        pairs.append((img, lab))
    if missing:
        raise _missing_error(
            "label files", missing, "add them or remove the images without labels."
        )
    dom = domain if domain is not None else root.resolve().name
    out = []
    for img_path, lab_path in pairs:
        image = _load_image(img_path)
        labels = None
        if lab_path is not None:
            labels = read_labels(lab_path)
            _check_same_shape(image, labels, img_path, lab_path)
        mask = None
        mpath = _find_by_stem(mask_dir, _stem(img_path), IMAGE_EXTS) if mask_dir.is_dir() else None
        if mpath is not None:
            mask = read_mask(mpath)
            _check_same_shape(image, mask, img_path, mpath)
        meta = {"image_path": str(img_path)}
        if lab_path is not None:
            meta["labels_path"] = str(lab_path)
        out.append(Sample(image, labels, _stem(img_path), mask=mask, domain=dom, meta=meta))
    return out


def load_domains(root: str | os.PathLike, require_labels: bool = True) -> dict[str, list[Sample]]:
    """Load a folder whose sub-folders are each a generic folder (one per domain).

    Parameters
    ----------
    root : path-like
        ``root/<domain>/images/...`` for every domain.
    require_labels : bool
        Passed to :func:`load_folder`.

    Returns
    -------
    dict
        Domain name (sub-folder name) -> samples, in name order.
    """
    root = Path(root)
    _require_dir(root, "ROOT/<domain>/images/* + ROOT/<domain>/labels/*")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())
    if not subs:
        raise InputError(
            f"{root}: no domain sub-folders with an images/ folder; expected "
            "ROOT/<domain>/images/* + ROOT/<domain>/labels/* (one sub-folder per domain)."
        )
    return {p.name: load_folder(p, domain=p.name, require_labels=require_labels) for p in subs}


# --------------------------------------------------------------------------------------------
# nuclei datasets
# --------------------------------------------------------------------------------------------


def _monuseg_polygons(xml_path: Path) -> tuple[list[np.ndarray], float | None]:
    """Polygons (``(V, 2)`` float x, y) of a MoNuSeg annotation file and its micron/pixel."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise ImageReadError(
            f"{xml_path}: not a readable MoNuSeg XML annotation ({exc}); re-download the file."
        ) from exc
    root = tree.getroot()
    mpp = root.get("MicronsPerPixel")
    polys = []
    for region in root.iter("Region"):
        pts = [(float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in region.iter("Vertex")]
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if len(arr) >= 3 and np.all(np.isfinite(arr)):
            polys.append(arr)
    try:
        mpp_f = float(mpp) if mpp else None
    except ValueError:
        mpp_f = None
    return polys, mpp_f


def monuseg_xml_to_labels(xml_path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a MoNuSeg XML annotation into an instance map.

    Parameters
    ----------
    xml_path : path-like
        ``Annotations/<stem>.xml`` (``Annotation/Regions/Region/Vertices/Vertex X= Y=``).
    shape : (int, int)
        ``(H, W)`` of the image.

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 instance ids ``1..n`` in region order; where polygons overlap the later
        region wins; regions with fewer than 3 vertices or no pixel inside are dropped.
    """
    from skimage.draw import polygon

    polys, _ = _monuseg_polygons(Path(xml_path))
    lab = np.zeros(shape, np.int32)
    for i, pts in enumerate(polys, start=1):
        rr, cc = polygon(pts[:, 1], pts[:, 0], shape=shape)
        lab[rr, cc] = i
    return remap_label(lab).astype(np.int32)


def load_monuseg(root: str | os.PathLike) -> list[Sample]:
    """Load MoNuSeg: ``Tissue Images/*.tif`` + ``Annotations/*.xml`` (or both in one folder).

    Returns
    -------
    list of Sample
        Instance labels from the XML polygons (see :func:`monuseg_xml_to_labels`),
        ``domain="MoNuSeg"``, ``meta["microns_per_pixel"]`` where the XML gives it.
    """
    root = Path(root)
    layout = "ROOT/Tissue Images/*.tif + ROOT/Annotations/*.xml (or *.tif and *.xml in ROOT)"
    _require_dir(root, layout)
    if (root / "Tissue Images").is_dir():
        img_dir = root / "Tissue Images"
        xml_dir = _require_dir(root / "Annotations", layout)
    else:
        img_dir = xml_dir = root
    images = _list_files(img_dir, (".tif", ".tiff", ".png"))
    if not images:
        raise InputError(f"{img_dir}: no .tif images; expected the layout {layout}.")
    missing = [str(xml_dir / f"{_stem(p)}.xml") for p in images if not (xml_dir / f"{_stem(p)}.xml").is_file()]  # fmt: skip
    if missing:
        raise _missing_error("annotation files", missing, "every image needs its XML file.")
    out = []
    for img_path in images:
        image = _load_image(img_path)
        xml_path = xml_dir / f"{_stem(img_path)}.xml"
        _, mpp = _monuseg_polygons(xml_path)
        labels = monuseg_xml_to_labels(xml_path, image.shape[:2])
        meta = {"image_path": str(img_path), "labels_path": str(xml_path)}
        if mpp is not None:
            meta["microns_per_pixel"] = mpp
        out.append(Sample(image, labels, _stem(img_path), domain="MoNuSeg", meta=meta))
    return out


def _find_one(root: Path, name: str) -> Path:
    direct = root / name
    if direct.is_file():
        return direct
    found = sorted(root.rglob(name))
    if not found:
        raise InputError(
            f"{root}: no {name} found in the folder or below; pass a PanNuke fold folder "
            "(e.g. 'Fold 1') holding images.npy, masks.npy and types.npy."
        )
    if len(found) > 1:
        raise InputError(
            f"{root}: several {name} files ({', '.join(map(str, found[:3]))}); pass one fold."
        )
    return found[0]


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-download it.")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "object" in str(exc).lower():
            raise ImageReadError(
                f"{path}: holds Python objects (pickle), which is never loaded for safety; "
                "re-save it as a plain array, e.g. numpy.save(path, arr.astype(str))."
            ) from exc
        raise ImageReadError(f"{path}: cannot read the .npy file ({exc}).") from exc
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read the .npy file ({exc}).") from exc


def pannuke_to_instances(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the PanNuke type channels into one instance map and a type map.

    Parameters
    ----------
    masks : np.ndarray
        ``(H, W, 6)``: channels 0..4 hold the instance ids of each nucleus type, channel 5 is
        background.

    Returns
    -------
    instances : np.ndarray
        ``(H, W)`` int32 ids ``1..n``; the same id in two type channels gives two instances;
        where channels overlap the later channel wins.
    types : np.ndarray
        ``(H, W)`` int32 type map, ``1..5`` = :data:`PANNUKE_TYPES`, 0 = background.
    """
    if masks.ndim != 3 or masks.shape[-1] < len(PANNUKE_TYPES):
        raise InputError(f"PanNuke masks must be (H, W, 6), got {masks.shape}.")
    inst = np.zeros(masks.shape[:2], np.int64)
    types = np.zeros(masks.shape[:2], np.int32)
    offset = 0
    for ch in range(len(PANNUKE_TYPES)):
        ids = check_label_array(np.asarray(masks[..., ch]), f"masks.npy channel {ch}")
        fg = ids > 0
        if not fg.any():
            continue
        inst[fg] = ids[fg].astype(np.int64) + offset
        types[fg] = ch + 1
        offset += int(ids.max())
    return remap_label(inst).astype(np.int32), types


def load_pannuke(fold_dir: str | os.PathLike, indices: Iterable[int] | None = None) -> list[Sample]:
    """Load one PanNuke fold (``images.npy``, ``masks.npy``, ``types.npy``).

    The arrays are memory-mapped, so a subset (``indices``) costs only its own images.

    Parameters
    ----------
    fold_dir : path-like
        Fold folder; the three files may sit in it or anywhere below (the official archive
        has ``Fold 1/images/fold1/images.npy`` and ``Fold 1/masks/fold1/masks.npy``).
    indices : iterable of int, optional
        Which images to load; default all.

    Returns
    -------
    list of Sample
        ``domain`` = tissue type, ``labels`` = merged instances, ``meta["types"]`` = ``(H, W)``
        type map (see :func:`pannuke_to_instances`). Float images are taken as 0..255.
    """
    root = Path(fold_dir)
    _require_dir(root, "FOLD/images.npy + FOLD/masks.npy + FOLD/types.npy")
    paths = {n: _find_one(root, f"{n}.npy") for n in ("images", "masks", "types")}
    images = _load_npy(paths["images"], mmap=True)
    masks = _load_npy(paths["masks"], mmap=True)
    tissue = _load_npy(paths["types"], mmap=False)
    n = images.shape[0]
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise InputError(f"{paths['images']}: expected (N, H, W, 3), got {images.shape}.")
    if masks.shape[:3] != images.shape[:3] or masks.ndim != 4 or masks.shape[-1] < 5:
        raise InputError(
            f"{paths['masks']}: expected (N, H, W, 6) matching images {images.shape[:3]}, got "
            f"{masks.shape}."
        )
    if tissue.shape[0] != n:
        raise InputError(f"{paths['types']}: {tissue.shape[0]} tissue names for {n} images.")
    idx = range(n) if indices is None else list(indices)
    out = []
    for i in idx:
        if not -n <= i < n:
            raise InputError(f"index {i} out of range for a fold of {n} images.")
        inst, types = pannuke_to_instances(np.asarray(masks[i]))
        image = np.asarray(images[i])
        if image.dtype.kind == "f" and np.all(np.isfinite(image)):
            # PanNuke stores 8-bit pixels as float64 0..255: a file-format fact, not a scaling.
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        image = to_rgb_uint8(image, f"{paths['images']}[{i}]")
        out.append(
            Sample(
                image,
                inst,
                f"{root.name}_{i % n:05d}",
                domain=str(tissue[i]),
                meta={"types": types, "type_names": PANNUKE_TYPES, "index": i % n},
            )
        )
    return out


def load_consep(root: str | os.PathLike) -> list[Sample]:
    """Load CoNSeP (one split): ``Images/*.png`` + ``Labels/<stem>.mat``.

    Parameters
    ----------
    root : path-like
        ``CoNSeP/Train`` or ``CoNSeP/Test``.

    Returns
    -------
    list of Sample
        ``labels`` = ``inst_map``; ``meta["types"]`` = ``type_map`` (int32, the raw CoNSeP
        classes 1..7) when present; ``domain="CoNSeP"``. ``.mat`` files are read with
        :func:`scipy.io.loadmat` (no pickle).
    """
    from scipy.io import loadmat

    root = Path(root)
    layout = "SPLIT/Images/*.png + SPLIT/Labels/<stem>.mat"
    if not (root / "Images").is_dir() and any((root / s / "Images").is_dir() for s in ("Train", "Test")):  # fmt: skip
        raise InputError(f"{root}: pass one split folder, {root / 'Train'} or {root / 'Test'}.")
    img_dir = _require_dir(root / "Images", layout)
    lab_dir = _require_dir(root / "Labels", layout)
    images = _list_files(img_dir, (".png", ".tif", ".tiff", ".jpg"))
    if not images:
        raise InputError(f"{img_dir}: no images found; expected {layout}.")
    missing = [str(lab_dir / f"{_stem(p)}.mat") for p in images if not (lab_dir / f"{_stem(p)}.mat").is_file()]  # fmt: skip
    if missing:
        raise _missing_error("label files", missing, "every image needs its .mat file.")
    out = []
    for img_path in images:
        image = _load_image(img_path)
        mat_path = lab_dir / f"{_stem(img_path)}.mat"
        if mat_path.stat().st_size == 0:
            raise ImageReadError(f"{mat_path}: the file is empty (0 bytes); re-download it.")
        try:
            mat = loadmat(mat_path)
        except Exception as exc:
            raise ImageReadError(
                f"{mat_path}: cannot read the .mat file ({type(exc).__name__}: {exc}); "
                "MATLAB v7.3 (HDF5) files are not supported: re-save with '-v7'."
            ) from exc
        if "inst_map" not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise InputError(f"{mat_path}: no 'inst_map' variable (found {keys}).")
        labels = check_label_array(np.asarray(mat["inst_map"]), f"{mat_path}:inst_map")
        labels = labels.astype(np.int32)
        _check_same_shape(image, labels, img_path, mat_path)
        meta: dict = {"image_path": str(img_path), "labels_path": str(mat_path)}
        if "type_map" in mat:
            tmap = check_label_array(np.asarray(mat["type_map"]), f"{mat_path}:type_map")
            meta["types"] = tmap.astype(np.int32)
        out.append(Sample(image, labels, _stem(img_path), domain="CoNSeP", meta=meta))
    return out


# --------------------------------------------------------------------------------------------
# retina vessel datasets
# --------------------------------------------------------------------------------------------


def _vessel_samples(
    entries: list[tuple[Path, Path | None, Path | None]],
    domain: str,
    require_labels: bool,
    label_hint: str,
    name_fn: Callable[[Path], str] = _stem,
    fov_threshold: int = 25,
) -> list[Sample]:
    """Build vessel samples from (image, manual labels or None, FOV mask or None) paths."""
    missing = [str(e[0]) for e in entries if e[1] is None]
    if missing and require_labels:
        raise _missing_error(
            "manual annotations", missing, f"expected {label_hint} (images listed are unpaired)."
        )
    out = []
    for img_path, lab_path, mask_path in entries:
        image = _load_image(img_path)
        labels = None
        meta: dict = {"image_path": str(img_path)}
        if lab_path is not None:
            labels = _binary(_grey(read_array(lab_path, mode="grey"))).astype(np.int32)
            _check_same_shape(image, labels, img_path, lab_path)
            meta["labels_path"] = str(lab_path)
        if mask_path is not None:
            mask = read_mask(mask_path)
            _check_same_shape(image, mask, img_path, mask_path)
            meta["fov"] = "file"
        else:
            mask = fov_from_image(image, fov_threshold)
            meta["fov"] = f"threshold>{fov_threshold}"
        out.append(Sample(image, labels, name_fn(img_path), mask=mask, domain=domain, meta=meta))
    return out


def _grey(arr: np.ndarray) -> np.ndarray:
    return arr.max(axis=-1) if arr.ndim == 3 else arr


def load_drive(root: str | os.PathLike, require_labels: bool = True) -> list[Sample]:
    """Load DRIVE: ``images/NN_{training,test}.tif``, ``1st_manual/NN_manual1.gif``,
    ``mask/NN_{training,test}_mask.gif``.

    Parameters
    ----------
    root : path-like
        A split folder (``DRIVE/training``) or the DRIVE folder holding ``training/`` and/or
        ``test/`` (both are loaded, training first; names get the split as prefix).
    require_labels : bool
        If False, images without ``1st_manual`` files get ``labels=None``.

    Returns
    -------
    list of Sample
        labels 0/1 int32, mask = the FOV mask file, ``domain="DRIVE"``.
    """
    root = Path(root)
    layout = "SPLIT/images/*.tif + SPLIT/1st_manual/*_manual1.gif + SPLIT/mask/*_mask.gif"
    if not (root / "images").is_dir():
        splits = [root / s for s in ("training", "test") if (root / s / "images").is_dir()]
        if not splits:
            _require_dir(root / "images", layout)
        return [s for sp in splits for s in load_drive(sp, require_labels)]
    img_dir = root / "images"
    mask_dir = _require_dir(root / "mask", layout)
    manual_dir = root / "1st_manual"
    images = _list_files(img_dir, (".tif", ".tiff", ".png", ".jpg"))
    if not images:
        raise InputError(f"{img_dir}: no images found; expected {layout}.")
    entries = []
    missing_masks = []
    for img in images:
        stem = _stem(img)
        number = stem.split("_")[0]
        lab = _find_by_stem(manual_dir, f"{number}_manual1", (".gif", ".png", ".tif")) if manual_dir.is_dir() else None  # fmt: skip
        mask = _find_by_stem(mask_dir, f"{stem}_mask", (".gif", ".png", ".tif"))
        if mask is None:
            missing_masks.append(str(mask_dir / f"{stem}_mask.gif"))
        entries.append((img, lab, mask))
    if missing_masks:
        raise _missing_error("FOV masks", missing_masks, f"expected the layout {layout}.")
    split = root.name
    return _vessel_samples(
        entries, "DRIVE", require_labels, str(manual_dir / "NN_manual1.gif"),
        name_fn=lambda p: f"{split}_{_stem(p)}",
    )  # fmt: skip


def load_stare(
    root: str | os.PathLike, require_labels: bool = True, fov_threshold: int = 25
) -> list[Sample]:
    """Load STARE: ``imNNNN.ppm`` (in ROOT, ``ROOT/images`` or ``ROOT/stare-images``) and
    Hoover's manual labels ``ROOT/labels-ah/imNNNN.ah.ppm``.

    STARE has no FOV masks: the mask is computed with :func:`fov_from_image`.

    Returns
    -------
    list of Sample
        labels 0/1 int32, ``domain="STARE"``.
    """
    root = Path(root)
    layout = "ROOT/imNNNN.ppm + ROOT/labels-ah/imNNNN.ah.ppm"
    _require_dir(root, layout)
    img_dir = next((d for d in (root / "images", root / "stare-images") if d.is_dir()), root)
    images = [p for p in _list_files(img_dir, (".ppm", ".png", ".tif")) if ".ah" not in p.name]
    if not images:
        raise InputError(f"{img_dir}: no .ppm images found; expected {layout}.")
    lab_dir = root / "labels-ah"
    if require_labels and not lab_dir.is_dir():
        raise InputError(f"{root}: no labels-ah/ folder; expected {layout}.")
    entries = []
    for img in images:
        lab = _find_by_stem(lab_dir, f"{_stem(img)}.ah", (".ppm", ".png")) if lab_dir.is_dir() else None  # fmt: skip
        entries.append((img, lab, None))
    return _vessel_samples(
        entries,
        "STARE",
        require_labels,
        str(lab_dir / "imNNNN.ah.ppm"),
        fov_threshold=fov_threshold,
    )


def load_chase(
    root: str | os.PathLike, require_labels: bool = True, fov_threshold: int = 25
) -> list[Sample]:
    """Load CHASE_DB1: ``Image_XXL.jpg`` + first observer ``Image_XXL_1stHO.png`` in one folder.

    CHASE_DB1 has no FOV masks: the mask is computed with :func:`fov_from_image`.

    Returns
    -------
    list of Sample
        labels 0/1 int32, ``domain="CHASE_DB1"``.
    """
    root = Path(root)
    layout = "ROOT/Image_XXL.jpg + ROOT/Image_XXL_1stHO.png"
    _require_dir(root, layout)
    images = [p for p in _list_files(root, (".jpg", ".jpeg", ".png", ".tif")) if "HO" not in p.stem]  # fmt: skip
    if not images:
        raise InputError(f"{root}: no Image_XXL.jpg files found; expected {layout}.")
    entries = [(img, _find_by_stem(root, f"{_stem(img)}_1stHO", (".png", ".gif", ".tif")), None) for img in images]  # fmt: skip
    return _vessel_samples(
        entries, "CHASE_DB1", require_labels, str(root / "Image_XXL_1stHO.png"),
        fov_threshold=fov_threshold,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# fundus optic disc / cup
# --------------------------------------------------------------------------------------------


def cup_disc_from_grey(grey: np.ndarray) -> np.ndarray:
    """Map the grey-level optic disc/cup masks to class ids.

    Parameters
    ----------
    grey : np.ndarray
        ``(H, W)`` uint8 with 0 = cup, 128 = disc rim, 255 = background (values in between from
        resampling are rounded to the nearest: > 200 background, 51..200 rim, <= 50 cup).

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32: 0 background, 1 disc rim, 2 cup. The whole disc is ``labels >= 1``.
    """
    g = np.asarray(grey)
    out = np.zeros(g.shape, np.int32)
    out[(g > 50) & (g <= 200)] = 1
    out[g <= 50] = 2
    return out


def load_fundus_cup_disc(root: str | os.PathLike) -> list[Sample]:
    """Load the optic disc/cup layout: ``ROOT/ROIs/image/*.png`` + ``ROOT/ROIs/mask/*.png``.

    This is the per-domain layout of the REFUGE / RIM-ONE / Drishti-GS crops used by the
    DoFE and RAM-DSIR code (``Domain1/train/ROIs/...``). ``ROOT`` may also be the ``ROIs``
    folder itself.

    Returns
    -------
    list of Sample
        labels 0 background, 1 disc rim, 2 cup (:func:`cup_disc_from_grey`);
        ``domain`` = the dataset folder's name (``Domain1`` for ``Domain1/train``).
    """
    root = Path(root)
    layout = "ROOT/ROIs/image/*.png + ROOT/ROIs/mask/<same name>.png"
    base = root / "ROIs" if (root / "ROIs").is_dir() else root
    img_dir = _require_dir(base / "image", layout)
    mask_dir = _require_dir(base / "mask", layout)
    images = _list_files(img_dir, (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
    if not images:
        raise InputError(f"{img_dir}: no images found; expected {layout}.")
    pairs = [(p, _find_by_stem(mask_dir, _stem(p), (".png", ".bmp", ".tif", ".gif"))) for p in images]  # fmt: skip
    missing = [str(mask_dir / f"{_stem(p)}.png") for p, m in pairs if m is None]
    if missing:
        raise _missing_error("masks", missing, "every image needs its grey-level mask.")
    dom_dir = base.parent if base.name == "ROIs" else base
    if dom_dir.name.lower() in ("train", "test", "val", "valid", "validation"):
        dom_dir = dom_dir.parent
    out = []
    for img_path, mask_path in pairs:
        image = _load_image(img_path)
        grey = read_array(mask_path, mode="grey")
        if grey.ndim == 3:
            grey = grey[..., 0]
        labels = cup_disc_from_grey(grey)
        _check_same_shape(image, labels, img_path, mask_path)
        meta = {"image_path": str(img_path), "labels_path": str(mask_path),
                "classes": {0: "background", 1: "disc rim", 2: "cup"}}  # fmt: skip
        out.append(Sample(image, labels, _stem(img_path), domain=dom_dir.name, meta=meta))
    return out


# --------------------------------------------------------------------------------------------
# registry and export
# --------------------------------------------------------------------------------------------

#: Layout name -> loader (each takes the root folder as first argument).
LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "folder": load_folder,
    "monuseg": load_monuseg,
    "pannuke": load_pannuke,
    "consep": load_consep,
    "drive": load_drive,
    "stare": load_stare,
    "chase": load_chase,
    "fundus": load_fundus_cup_disc,
}


def load_dataset(kind: str, root: str | os.PathLike, **kwargs) -> list[Sample]:
    """Load a dataset by layout name (see :data:`LOADERS`).

    Raises
    ------
    InputError
        Unknown layout name; the message lists the valid ones.
    """
    try:
        loader = LOADERS[kind.lower()]
    except KeyError:
        raise InputError(
            f"unknown dataset layout {kind!r}; valid layouts: {', '.join(sorted(LOADERS))}."
        ) from None
    return loader(root, **kwargs)


def save_folder(samples: Iterable[Sample], root: str | os.PathLike) -> Path:
    """Write samples in the generic layout that :func:`load_folder` and ``dgseg train`` read.

    Writes ``root/images/<name>.png``, ``root/labels/<name>.tif`` (int32, where labels exist)
    and ``root/masks/<name>.png`` (where a mask exists); every file is written atomically.
    Characters other than letters, digits, ``-``, ``_`` and ``.`` in names become ``_``.

    Returns
    -------
    Path
        ``root``.
    """
    import tifffile
    from PIL import Image

    root = Path(root)
    for sub in ("images", "labels", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for s in samples:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.name)
        atomic_write(
            root / "images" / f"{name}.png",
            lambda t, im=s.image: Image.fromarray(to_rgb_uint8(im)).save(t, format="PNG"),
        )
        if s.labels is not None:
            atomic_write(
                root / "labels" / f"{name}.tif",
                lambda t, lab=s.labels: tifffile.imwrite(t, np.asarray(lab, np.int32)),
            )
        if s.mask is not None:
            atomic_write(
                root / "masks" / f"{name}.png",
                lambda t, m=s.mask: Image.fromarray(
                    np.asarray(m, bool).astype(np.uint8) * 255
                ).save(t, format="PNG"),  # fmt: skip
            )
    for sub in ("labels", "masks"):
        d = root / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return root
