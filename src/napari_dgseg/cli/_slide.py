"""``dgseg predict`` on whole slides: the streamed OME-Zarr path (:mod:`napari_dgseg.core.wsi`).

A slide is streamed block by block into ``<stem>.zarr`` when ``--out`` itself ends in ``.zarr``
(one input), or when the in-memory path would need more than the memory budget
(:func:`napari_dgseg.core.inference.estimate_inference_bytes` against
:func:`napari_dgseg.core.limits.memory_budget`). Smaller images keep the in-memory path and its
TIFF outputs unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_slide_args", "needs_streaming", "predict_streamed", "streamed_out"]


def add_slide_args(p: argparse.ArgumentParser) -> None:
    """``--block-size`` and ``--resume/--no-resume``."""
    from napari_dgseg.core.wsi.plan import DEFAULT_BLOCK

    g = p.add_argument_group(
        "whole slides", "slides larger than memory (or --out ending in .zarr) are streamed block "
        "by block into an OME-Zarr folder (docs/whole-slides.md)")
    g.add_argument("--block-size", type=int, default=DEFAULT_BLOCK, dest="block_size",
                   help=f"block side in pixels for streamed slides (default {DEFAULT_BLOCK})")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted streamed run in the same output (default on)")
    g.add_argument("--instances", action="store_true",
                   help="streamed slides of a semantic model: write instance ids (connected "
                        "components, stitched across blocks) instead of class ids")


def streamed_out(args: argparse.Namespace) -> Path | None:
    """``--out`` when it names one ``.zarr`` output (None: ``--out`` is a folder)."""
    out = Path(args.out)
    return out if out.name.lower().endswith(".zarr") else None


def needs_streaming(opened: Any, bundle: Any, budget: int | None = None,
                    block_size: int | None = None) -> bool:
    """Whether segmenting ``opened`` in memory would exceed the memory budget while one block
    (with its margin) fits it; when not even a block fits, the in-memory path refuses the image
    in one line as before (streaming cannot help)."""
    from napari_dgseg.core.inference import MAX_WHOLE_IMAGE_PIXELS, estimate_inference_bytes
    from napari_dgseg.core.limits import memory_budget

    h, w = int(opened.full.shape[0]), int(opened.full.shape[1])
    if getattr(bundle.family, "segment_image", None) is not None and h * w > MAX_WHOLE_IMAGE_PIXELS:
        return True
    limit, _ = memory_budget(budget)
    from napari_dgseg.core.wsi.plan import DEFAULT_BLOCK, DEFAULT_MARGIN

    classes, discrete = len(bundle.class_names), len(bundle.family.discrete_outputs)
    needed = estimate_inference_bytes(h, w, classes, discrete)
    if limit is None or needed <= limit:
        return False
    side = int(block_size or DEFAULT_BLOCK) + 2 * DEFAULT_MARGIN
    return estimate_inference_bytes(min(h, side), min(w, side), classes, discrete) <= limit


def predict_streamed(args: argparse.Namespace, bundle: Any, path: Path, out: Path) -> dict:
    """Stream one slide into ``out`` (a ``.zarr`` folder); its row of the JSON summary."""
    from napari_dgseg.cli._compute import tta_arg
    from napari_dgseg.cli._progress import ProgressBar
    from napari_dgseg.core.wsi import predict_slide

    outputs = ["labels"]
    if getattr(args, "probabilities", False):
        outputs.append("probabilities")
    if getattr(args, "uncertainty", False):
        outputs.append("uncertainty")
    if getattr(args, "codebook", False):
        outputs.append("codebook_indices")
    bar = None if args.quiet else ProgressBar(f"predict {path.name} (blocks)", stream=sys.stderr)
    summary = predict_slide(
        bundle, path, out, block_size=args.block_size, progress=bar, resume=args.resume,
        overwrite=args.overwrite, outputs=outputs, tile=args.tile, overlap=args.overlap,
        batch=args.batch, device=args.device, dcin=args.dcin, dcin_method=args.dcin_method,
        reference=args.reference,
        # --rescale shared: a slide streamed block by block keeps its own decision
        rescale="auto" if args.rescale == "shared" else args.rescale, scale=args.scale,
        mpp=args.mpp, object_size=args.object_size,
        instances=True if getattr(args, "instances", False) else None,
        tta=tta_arg(args),
    )
    prov = summary["provenance"]
    return {
        "input": str(path),
        "labels": str(out),
        "streamed": True,
        "shape": prov.get("image_shape"),
        "labels_kind": prov.get("labels_kind"),
        "instances": prov.get("instances"),
        "blocks": summary["blocks"],
        "blocks_run": summary["blocks_run"],
        "blocks_resumed": summary["resumed"],
        "blocks_blank": summary["blocks_skipped_blank"],
        "seconds": summary["seconds"],
    }
