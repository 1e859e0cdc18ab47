"""``dgseg codebook --model M --out DIR INPUT ...``: codebook-index maps and domain-shift scores.

For every input image a model with a codebook writes ``<stem>_codebook.tif`` (int32 index of the
``e_alpha`` code of each pixel, with provenance) and prints, in one JSON object, the image's code
usage, the domain-shift score against the training data and whether it exceeds the model's
calibrated threshold (``out_of_domain``).

Outputs, name collisions and failures as in ``dgseg predict``: existing files are kept unless
``--overwrite``, a bad input is listed under ``"failed"`` and the exit status is then 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_dgseg.cli._common import add_overwrite, output_folder, run_batch
from napari_dgseg.cli._inputs import expand_inputs, output_stem, report_batch, write_codebook


def register(sub: argparse._SubParsersAction) -> None:
    from napari_dgseg.core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

    p = sub.add_parser(
        "codebook",
        help="write SQ-VAE codebook-index maps and print code usage + domain-shift scores",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or slides")
    p.add_argument("--model", required=True, help="a bundle (file or name, `dgseg models`) of a family with a codebook")
    p.add_argument("--out", required=True, help="output folder for <stem>_codebook.tif")
    p.add_argument("--labels", action="store_true", help="also write <stem>_labels.tif")
    p.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, help=f"largest tile side (default {DEFAULT_TILE})"
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help=f"tile overlap (default {DEFAULT_OVERLAP})",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda or mps")
    p.add_argument("--batch", type=int, default=2, help="tiles per forward pass (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.codebook import require_codebook
    from napari_dgseg.core.outputs import refuse_existing, unique_stems

    bundle = load_bundle(args.model)
    require_codebook(bundle)
    paths = expand_inputs(args.inputs)
    out = output_folder(args.out)
    stems = unique_stems(paths, output_stem)
    kinds = ("codebook", "labels") if args.labels else ("codebook",)
    refuse_existing(
        (out / f"{stem}_{kind}.tif" for stem in stems for kind in kinds), overwrite=args.overwrite
    )
    jobs = list(zip(paths, stems, strict=True))
    rows, failed, skipped = run_batch(
        "codebook",
        jobs,
        lambda job: _codebook_one(args, bundle, out, *job),
        label=lambda job: str(job[0]),
    )
    summary = {
        "model": bundle.name,
        "model_sha256": bundle.sha256,
        "codebook_size": int(bundle.config["codebook_size"]),
        "outputs": rows,
    }
    return report_batch(summary, jobs, failed, skipped)


def _codebook_one(args: argparse.Namespace, bundle, out: Path, path: Path, stem: str) -> dict:
    """Codebook map (and labels) of one input; returns its row of the JSON summary."""
    from napari_dgseg.cli._progress import ProgressBar
    from napari_dgseg.core.codebook import analyse_prediction
    from napari_dgseg.core.labels_io import Placement, write_labels
    from napari_dgseg.core.slide import open_image

    opened = open_image(path)
    bar = None if args.quiet else ProgressBar(f"codebook {path.name}")
    pred = bundle.predict(
        opened.full,
        tile=args.tile,
        overlap=args.overlap,
        device=args.device,
        batch=args.batch,
        progress=bar,
    )
    provenance = {
        **pred.provenance,
        "source_image": str(path.resolve()),
        "pixel_size_um": opened.pixel_size_um,
        "classes": list(pred.class_names),
        "codebook_size": int(bundle.config["codebook_size"]),
    }
    report = analyse_prediction(pred, bundle)
    placement = Placement(scale=opened.pixel_size_um) if opened.pixel_size_um else None
    codebook = write_codebook(
        out / f"{stem}_codebook.tif", pred, provenance, overwrite=args.overwrite,
        placement=placement,
    )
    row = {
        "input": str(path),
        "codebook": str(codebook),
        "shape": list(pred.codebook_indices.shape),
        "seconds": pred.provenance["seconds"],
        **report.as_dict(),
    }
    if args.labels:
        row["labels"] = str(
            write_labels(
                out / f"{stem}_labels.tif", pred.labels, provenance, overwrite=args.overwrite,
                placement=placement,
            )
        )
    return row
