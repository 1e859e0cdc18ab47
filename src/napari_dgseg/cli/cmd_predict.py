"""``dgseg predict --model M --out DIR INPUT ...``: segment files, folders and slides.

Existing outputs are kept unless ``--overwrite`` (checked for every input before any work).
Inputs sharing a stem (``x.png``, ``x.tif``) get distinct outputs (``x_labels.tif``,
``x.tif_labels.tif``; see :func:`napari_dgseg.core.outputs.unique_stems`), listed under
``"renamed"``. A bad input does not stop the batch: it is listed under ``"failed"`` with a one-line
error and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.cli._common import add_overwrite, output_folder, run_batch
from napari_dgseg.cli._compute import (
    add_compute_args,
    check_compute_args,
    refuse_for_streaming,
    run_jobs,
    tta_arg,
)
from napari_dgseg.cli._inputs import expand_inputs, output_stem, report_batch, write_codebook
from napari_dgseg.cli._outdir import output_dir
from napari_dgseg.cli._progress import ProgressBar
from napari_dgseg.cli._scale import add_scale_args, check_scale_args, scale_kwargs
from napari_dgseg.cli._slide import add_slide_args, needs_streaming, predict_streamed, streamed_out
from napari_dgseg.core.atomic import atomic_write
from napari_dgseg.core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    from napari_dgseg.core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

    p = sub.add_parser("predict", help="segment images, folders or slides with a model bundle")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or slides")
    p.add_argument("--model", required=True, help="bundle file or model name (see `dgseg models`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"largest tile side (default {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help=f"tile overlap (default {DEFAULT_OVERLAP})")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda or mps")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=2,
                   help="tiles per forward pass (default 2; larger on a GPU)")
    p.add_argument("--dcin", default="auto",
                   choices=["auto", "none", "gris", "lris", "full", "reference"],
                   help="colour normalisation (default auto: full when the model has a bank, "
                        "behind a guard that falls back to none when it would change the mask "
                        "unseen)")
    p.add_argument("--tta", default="auto", choices=["auto", "on", "off"],
                   help="flip test-time augmentation: 4 passes per tile averaged (smoother, 4x "
                        "slower); auto (default): the model's recorded default (`dgseg info`)")
    p.add_argument("--dcin-method", default=None,
                   choices=["reinhard", "reinhard-bounded", "balanced", "macenko"],
                   help="colour statistics DCIN matches (default reinhard; see docs/dcin.md)")
    p.add_argument("--reference", help="reference image for --dcin reference")
    p.add_argument("--normalized", action="store_true",
                   help="also write the colour-normalised image(s) <stem>_normalized_<branch>.png")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <stem>_uncertainty.tif (DCIN full: GRIS/LRIS disagreement)")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities.tif")
    p.add_argument("--codebook", action="store_true",
                   help="also write <stem>_codebook.tif (models with a codebook: code index per pixel)")
    p.add_argument("--local-mask", action="store_true",
                   help="also write <stem>_local_mask.tif (models adapted with "
                        "--local-alignment: domain gap per pixel, 0..1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_scale_args(p)
    add_compute_args(p)
    add_slide_args(p)
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.bundle import load_bundle

    if args.dcin == "reference" and not args.reference:
        raise InputError("--dcin reference needs --reference IMAGE")
    check_compute_args(args)
    bundle = load_bundle(args.model)
    check_scale_args(args, bundle)
    if args.local_mask:
        from napari_dgseg.core.local_align.bundled import supports_local_mask

        if not supports_local_mask(bundle):
            raise InputError(f"model {bundle.name!r} has no local feature mask (no D1); adapt it "
                             "with `dgseg adapt --local-alignment`, or drop --local-mask")
    paths = expand_inputs(args.inputs)
    if args.rescale == "shared":
        args.shared_scale = _shared_scale(bundle, paths, args.block_size)
    if streamed_out(args) is not None:  # one slide streamed into an OME-Zarr folder
        refuse_for_streaming(args)
        return _predict_zarr(args, bundle, paths)
    with output_dir(args.out):  # a run that fails before writing leaves no empty folder behind
        out = output_folder(args.out)
        return _predict_batch(args, bundle, paths, out)


def _shared_scale(bundle: Any, paths: list[Path], block_size: Any) -> dict:
    """``--rescale shared``: one factor from the inputs without a pixel size (slides streamed
    block by block keep their own decision)."""
    from napari_dgseg.core.scale_batch import images_without_pixel_size, shared_scale

    images = images_without_pixel_size(
        paths, keep=lambda opened: not needs_streaming(opened, bundle, block_size=block_size))
    found = shared_scale(bundle.manifest, images)
    print(f"dgseg predict: {found['reason']}", file=sys.stderr)
    return found


def _predict_batch(args: argparse.Namespace, bundle: Any, paths: list[Path], out: Path) -> int:
    """Check every output, run the batch, print the JSON summary; the exit status."""
    from napari_dgseg.core.outputs import refuse_existing, unique_stems

    stems = unique_stems(paths, output_stem)
    extras = [name for name, flag in (("uncertainty", args.uncertainty),
                                      ("probabilities", args.probabilities),
                                      ("codebook", args.codebook),
                                      ("local_mask", args.local_mask)) if flag]
    refuse_existing((out / f"{stem}_{kind}.tif" for stem in stems for kind in ("labels", *extras)),
                    overwrite=args.overwrite)
    jobs = list(zip(paths, stems, strict=True))
    rows, failed, skipped = run_jobs("predict", args, bundle, out, jobs, _predict_job,
                                     label=lambda j: str(j[0]))
    summary = {"model": bundle.name, "model_sha256": bundle.sha256, "outputs": rows}
    if getattr(args, "shared_scale", None):
        summary["shared_scale"] = args.shared_scale
    return report_batch(summary, jobs, failed, skipped)


def _predict_job(bundle: Any, args: argparse.Namespace, out: Path, path: Path, stem: str) -> dict:
    """One input (in process or as a task on a dask worker): :func:`_predict_one`."""
    return _predict_one(args, bundle, out, path, stem)


def _predict_zarr(args: argparse.Namespace, bundle: Any, paths: list[Path]) -> int:
    """``--out X.zarr``: stream the one input into it (docs/whole-slides.md)."""
    if len(paths) != 1:
        raise InputError(f"--out {args.out} is one .zarr output but {len(paths)} inputs were "
                         "given; pass one slide, or a folder as --out")
    jobs = [(paths[0], output_stem(paths[0]))]
    rows, failed, skipped = run_batch(
        "predict", jobs, lambda job: predict_streamed(args, bundle, job[0], Path(args.out)),
        label=lambda j: str(j[0]))
    summary = {"model": bundle.name, "model_sha256": bundle.sha256, "outputs": rows}
    return report_batch(summary, jobs, failed, skipped)


def _predict_one(args: argparse.Namespace, bundle, out: Path, path: Path, stem: str) -> dict:
    """Segment one input and write its outputs; returns its row of the JSON summary."""
    from napari_dgseg.core.labels_io import Placement, write_labels
    from napari_dgseg.core.slide import open_image

    overwrite = args.overwrite
    opened = open_image(path)
    if needs_streaming(opened, bundle, block_size=args.block_size):  # block by block into <stem>.zarr
        opened.close()
        return predict_streamed(args, bundle, path, out / f"{stem}.zarr")
    bar = None if args.quiet else ProgressBar(f"predict {path.name}")
    pred = bundle.predict(opened.full, tile=args.tile, overlap=args.overlap,
                          device=args.device, batch=args.batch, progress=bar,
                          dcin=args.dcin, reference=args.reference,
                          dcin_method=args.dcin_method, return_normalized=args.normalized,
                          precision=args.precision, tta=tta_arg(args),
                          **scale_kwargs(args, opened.pixel_size_um))
    provenance = {**pred.provenance, "source_image": str(path.resolve()),
                  "pixel_size_um": opened.pixel_size_um, "classes": list(pred.class_names)}
    if getattr(args, "shared_scale", None) and not opened.pixel_size_um:
        provenance["scale"] = {**provenance["scale"], "shared": args.shared_scale}
    # every output sits on the image: its micrometre pixel size (origin: the image's own)
    placement = Placement(scale=opened.pixel_size_um) if opened.pixel_size_um else None
    labels_path = write_labels(out / f"{stem}_labels.tif", pred.labels, provenance,
                               overwrite=overwrite, placement=placement)
    row = {
        "input": str(path),
        "labels": str(labels_path),
        "shape": list(pred.labels.shape),
        "seconds": pred.provenance["seconds"],
        "class_fractions": {
            name: round(float(np.mean(pred.labels == i)), 5)
            for i, name in enumerate(pred.class_names)
        } if bundle.family.output == "semantic" else None,
        "instances": int(len(np.unique(pred.labels)) - 1) if bundle.family.output == "instances" else None,
    }
    if args.uncertainty and pred.uncertainty is not None:
        row["uncertainty"] = str(_write_float_tif(out / f"{stem}_uncertainty.tif",
                                                  pred.uncertainty, provenance, overwrite,
                                                  placement))
    if args.normalized:
        row["normalized"] = {}
        for branch, img in pred.extras.get("normalized", {}).items():
            dest = out / f"{stem}_normalized_{branch}.png"
            _write_png(dest, img, overwrite)
            row["normalized"][branch] = str(dest)
    row["dcin"] = pred.provenance["dcin"]["mode"]
    row["scale"] = {k: pred.provenance["scale"][k] for k in ("factor", "source", "proposed")}
    if "shared" in provenance["scale"]:
        row["scale"]["source"] = "shared"
    if pred.provenance["dcin"].get("guard"):
        row["dcin_guard"] = pred.provenance["dcin"]["guard"]["reason"]
    if args.probabilities and pred.probabilities is not None:
        row["probabilities"] = str(_write_float_tif(out / f"{stem}_probabilities.tif",
                                                    pred.probabilities, provenance, overwrite,
                                                    placement))
    if args.local_mask and pred.local_mask is not None:
        row["local_mask"] = str(_write_float_tif(out / f"{stem}_local_mask.tif", pred.local_mask,
                                                 provenance, overwrite, placement))
    if args.codebook:
        row["codebook"] = str(write_codebook(out / f"{stem}_codebook.tif", pred, provenance,
                                             overwrite=overwrite, placement=placement))
    return row


def _write_png(path: Path, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write an RGB uint8 PNG atomically (an existing file is kept unless ``overwrite``)."""
    from skimage.io import imsave

    return atomic_write(path, lambda tmp: imsave(tmp, image, check_contrast=False), suffix=".png",
                        overwrite=overwrite)


def _write_float_tif(
    path: Path, probs: np.ndarray, provenance: dict, overwrite: bool = False, placement: Any = None
) -> Path:
    """Float32 OME-TIFF (e.g. ``(K, H, W)`` probabilities) with the provenance JSON (and the
    image's placement: record, OME pixel size and resolution tags), atomically; an existing file is kept unless
    ``overwrite``."""
    import tifffile

    from napari_dgseg.core.labels_io import PLACEMENT_KEY, json_safe, tiff_keywords

    record = json_safe(provenance)
    if placement is not None:
        record[PLACEMENT_KEY] = placement.as_dict()
    keywords = tiff_keywords(probs.shape, record, placement, name=path.name.split(".")[0])
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, probs.astype(np.float32), compression="zlib", photometric="minisblack",
            **keywords
        ),
        suffix=".tmp",
        overwrite=overwrite,
    )
