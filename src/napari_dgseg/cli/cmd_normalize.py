"""``dgseg normalize``: Reinhard colour transfer of one image to a reference image you choose.

This is the "expert reference" mode of DCIN (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025): the colour statistics (l-alpha-beta or CIELAB
mean and std of the tissue pixels) of INPUT are matched to those of REF. The output is written
atomically; its format follows the suffix of ``--out`` (``.png``, ``.tif``/``.tiff``, ``.jpg``).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

from napari_dgseg.core.atomic import atomic_write

_TIFF = (".tif", ".tiff")
_OTHER = (".png", ".jpg", ".jpeg", ".bmp")
_WRITABLE = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def register(subparsers: Any) -> None:
    """Add the ``normalize`` subcommand."""
    parser = subparsers.add_parser(
        "normalize",
        help="colour-normalize an image to a reference image (Reinhard transfer)",
        description=(
            "Match the colour statistics of INPUT to those of a reference image (Reinhard "
            "transfer in l-alpha-beta or CIELAB, statistics from tissue pixels only) and write "
            "the result. Prints one JSON object with the statistics used."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="image to normalize (PNG, JPEG, TIFF)")
    parser.add_argument(
        "--reference", "-r", required=True, metavar="REF", help="reference image (PNG, JPEG, TIFF)"
    )
    parser.add_argument(
        "--out", "-o", required=True, metavar="OUT", help="output file (.png, .tif or .jpg)"
    )
    parser.add_argument(
        "--space",
        choices=("lab-reinhard", "cielab"),
        default="lab-reinhard",
        help="colour space of the transfer (default: lab-reinhard)",
    )
    parser.add_argument(
        "--all-pixels",
        action="store_true",
        help="compute statistics over all pixels instead of tissue pixels only",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)"
    )
    parser.set_defaults(func=run)


def read_image(path: str | os.PathLike[str], what: str) -> Any:
    """Read an image file into a numpy array ``(H, W[, C])``, channels last.

    Raises
    ------
    InputError
        The file does not exist or its type is not an image type.
    ImageReadError
        The file cannot be decoded as an image.
    """
    import numpy as np

    from napari_dgseg.core.errors import ImageReadError, InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} does not exist; check the path.")
    suffix = p.suffix.lower()
    if suffix not in _TIFF + _OTHER:
        raise InputError(
            f"{what} file {str(p)!r} is not a supported image type ({suffix or 'no suffix'}); "
            f"use one of {', '.join(_TIFF + _OTHER)}."
        )
    try:
        if suffix in _TIFF:
            import tifffile

            arr = tifffile.imread(p, series=0, level=0)
        else:
            import skimage.io

            arr = skimage.io.imread(p)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean "unreadable"
        raise ImageReadError(
            f"could not read {what} file {str(p)!r} as an image ({type(exc).__name__}: {exc}); "
            "check that it is a valid, complete image file."
        ) from None
    arr = np.asarray(arr)
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first TIFF
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageReadError(
            f"{what} file {str(p)!r} has shape {arr.shape}; expected a 2-D grey, RGB or RGBA image."
        )
    return arr


def write_image(path: Path, image: Any, *, overwrite: bool = False) -> None:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then replace).

    An existing ``path`` is kept (:class:`~napari_dgseg.core.errors.OutputExistsError`) unless
    ``overwrite``.
    """
    import numpy as np

    from napari_dgseg.core.errors import InputError

    suffix = path.suffix.lower()
    if suffix not in _WRITABLE:
        raise InputError(
            f"output {str(path)!r} has an unsupported suffix ({suffix or 'none'}); use one of "
            f"{', '.join(_WRITABLE)}."
        )
    if not path.parent.is_dir():
        raise InputError(f"output folder {str(path.parent)!r} does not exist; create it first.")
    if suffix not in _TIFF and image.dtype.kind == "f":
        image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if suffix in (".jpg", ".jpeg") and image.dtype != np.uint8:
        image = (image // 257).astype(np.uint8) if image.dtype == np.uint16 else image
    if suffix in (".jpg", ".jpeg") and image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]  # JPEG has no alpha

    def write(tmp: Path) -> None:
        if suffix in _TIFF:
            import tifffile

            photometric = "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else None
            tifffile.imwrite(tmp, image, photometric=photometric)
        else:
            import skimage.io

            skimage.io.imsave(tmp, image, check_contrast=False)

    atomic_write(path, write, suffix=suffix, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    """Normalize INPUT to REF, write OUT, print the statistics as JSON."""
    from napari_dgseg.cli._common import output_file, print_json
    from napari_dgseg.core.color.tissue import image_color_stats
    from napari_dgseg.core.color.transfer import NormalizationSkippedWarning, normalize_colors

    out_path = output_file(args.out, overwrite=args.overwrite)
    image = read_image(args.input, "input")
    reference = read_image(args.reference, "reference")
    tissue_only = not args.all_pixels
    ref_mean, ref_std = image_color_stats(
        reference, space=args.space, tissue_only=tissue_only, name="reference"
    )
    tgt_mean, tgt_std = image_color_stats(
        image, space=args.space, tissue_only=tissue_only, name="input"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NormalizationSkippedWarning)
        result = normalize_colors(
            image, (ref_mean, ref_std), space=args.space, tissue_only=tissue_only
        )
    notices = [
        str(w.message) for w in caught if issubclass(w.category, NormalizationSkippedWarning)
    ]
    write_image(out_path, result, overwrite=args.overwrite)
    print_json(
        {
            "input": str(args.input),
            "reference": str(args.reference),
            "out": str(out_path),
            "space": args.space,
            "target_mean": tgt_mean.tolist(),
            "target_std": tgt_std.tolist(),
            "reference_mean": ref_mean.tolist(),
            "reference_std": ref_std.tolist(),
            "normalized": not notices,
            "notice": notices[0] if notices else None,
        }
    )
    return 0
