"""Streaming whole-slide inference: one block at a time into a chunked OME-Zarr.

Memory stays that of one block, whatever the slide's size: a block and its margin are read
lazily from the slide, segmented with the ordinary tiled inference
(:func:`~napari_dgseg.core.predict.run_tiled` and the family's post-processing) using the
slide-wide decisions of :mod:`napari_dgseg.core.wsi.context`, cropped to the block and written
to its own chunks. Instance outputs are stitched by :mod:`napari_dgseg.core.wsi.stitch`.

The four steps, usable on their own (e.g. by a distributed executor)
-------------------------------------------------------------------
* :func:`~napari_dgseg.core.wsi.plan.plan_slide` -> :class:`~napari_dgseg.core.wsi.plan.SlidePlan`
* :func:`create_output` (``plan``): the ``.zarr`` folder, reused by a resumed run
  (:mod:`napari_dgseg.core.wsi.store`)
* :func:`run_block` (``model, plan, block_id, cancel=None``): segments and writes one block, then
  writes its done marker. ``model`` is a loaded :class:`~napari_dgseg.core.bundle.Bundle`
  (what :func:`napari_dgseg.core.bundle.load_bundle` returns; a name or path is loaded). Blocks
  are independent: any order, any process, each at most once at a time.
* :func:`finalize` (``plan``): instance stitching, pyramid levels, provenance.

:func:`predict_slide` ties them together. Its ``block_executor`` is a callable
``block_executor(plan, block_ids, progress) -> None`` that must call
``run_block(model, plan, i)`` for every id (elsewhere: processes, a dask cluster) and call
``progress(done, total)`` as blocks finish (``done`` of the ``total = len(block_ids)`` given);
by default the blocks run here, one after the other, with the bundle loaded once.

Resume: a block with a done marker is never run again; a run on an existing output whose plan
matches (same slide, model hash, blocks and options) continues it, another output is refused.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.cancel import check_cancel
from napari_dgseg.core.wsi.plan import DEFAULT_BLOCK, SlidePlan, plan_slide
from napari_dgseg.core.wsi.store import (
    block_done,
    create_output,
    done_blocks,
    mark_done,
    open_array,
    piece_path,
    pyramid_shapes,
    read_marker,
    write_blank,
)

__all__ = ["BlockExecutor", "create_output", "finalize", "predict_slide", "run_block",
           "sequential_executor"]

BlockExecutor = Callable[[SlidePlan, list[int], Callable[[int, int], Any]], None]


def _as_bundle(model: Any) -> Any:
    from napari_dgseg.core.bundle import Bundle, load_bundle

    return model if isinstance(model, Bundle) else load_bundle(model)


def run_block(model: Any, plan: SlidePlan, block_id: int, cancel: Any = None) -> dict[str, Any]:
    """Segment block ``block_id`` of ``plan`` and store it; a finished block is skipped.

    Parameters
    ----------
    model : Bundle or str or Path
        The loaded bundle (or its name/path, loaded here).
    plan : SlidePlan
    block_id : int
    cancel : threading.Event or callable, optional
        Checked between tiles; a cancelled block leaves no marker (it runs again on resume).

    Returns
    -------
    dict
        The block's done record (``instances``, ``seconds``, ``skipped``).
    """
    from napari_dgseg.core.atomic import atomic_write_bytes
    from napari_dgseg.core.postprocess import semantic_to_instances
    from napari_dgseg.core.wsi.context import slide_context, window_fields
    from napari_dgseg.core.wsi.stitch import own_instances, piece_bytes

    if block_done(plan, block_id):
        return read_marker(plan, block_id) or {"block": block_id}
    t0 = time.perf_counter()
    block = plan.block(block_id)
    check_cancel(cancel)
    if not block.tissue:
        write_blank(plan, block_id)
        record = {"skipped": True, "instances": 0, "seconds": 0.0}
        mark_done(plan, block_id, record)
        return record
    bundle = _as_bundle(model)
    ctx = slide_context(bundle, plan, cancel)
    window = plan.window(block_id)
    fields = window_fields(bundle, ctx, plan, window, cancel=cancel)
    check_cancel(cancel)
    wy0, wx0 = window[0], window[1]
    crop = (slice(block.y0 - wy0, block.y1 - wy0), slice(block.x0 - wx0, block.x1 - wx0))
    n_inst = 0
    if plan.instances:
        labels = fields["labels"]
        if bundle.family.output != "instances":
            labels = semantic_to_instances(labels)
        piece = own_instances(labels, window, block, plan.shape)
        n_inst = piece.n
        atomic_write_bytes(piece_path(plan, block_id), piece_bytes(piece))
    else:
        open_array(plan, "labels")[block.y0:block.y1, block.x0:block.x1] = (
            np.asarray(fields["labels"], np.int32)[crop])
    for name in plan.outputs[1:]:
        value = fields.get(name)
        if value is None:
            continue
        arr = open_array(plan, name)
        if name == "probabilities":
            arr[:, block.y0:block.y1, block.x0:block.x1] = np.asarray(value, np.float32)[
                (slice(None), *crop)]
        else:
            arr[block.y0:block.y1, block.x0:block.x1] = np.asarray(value)[crop].astype(arr.dtype)
    record = {"skipped": False, "instances": n_inst,
              "seconds": round(time.perf_counter() - t0, 3),
              "dcin": None if ctx.dcin is None else ctx.dcin.provenance()}
    mark_done(plan, block_id, record)
    return record


def sequential_executor(model: Any, cancel: Any = None) -> BlockExecutor:
    """The default executor: blocks run here, in order, with ``model`` loaded once."""

    def execute(plan: SlidePlan, block_ids: list[int], progress: Callable[[int, int], Any]
                ) -> None:
        from napari_dgseg.core.heap import bound_heap, release_memory

        bundle = _as_bundle(model)
        bound_heap()
        total = len(block_ids)
        for done, block_id in enumerate(block_ids, start=1):
            check_cancel(cancel)
            run_block(bundle, plan, block_id, cancel)
            release_memory()
            progress(done, total)

    return execute


# ---------------------------------------------------------------------------------- finalize
def _stitch(plan: SlidePlan, cancel: Any) -> int:
    """Write the stitched instance ids of every block; the number of instances."""
    from napari_dgseg.core.wsi.stitch import PieceCache, compose_block, resolve_duplicates

    with_piece = [b.id for b in plan.blocks if piece_path(plan, b.id).is_file()]
    luts = resolve_duplicates(plan, with_piece)
    labels = open_array(plan, "labels")
    cache = PieceCache(plan)
    for b in plan.blocks:
        check_cancel(cancel)
        if not b.tissue:
            continue
        labels[b.y0:b.y1, b.x0:b.x1] = compose_block(plan, b.id, luts, cache)
    return int(sum(int((lut > 0).sum()) for lut in luts.values()))


def _downsample(value: np.ndarray, mean: bool) -> np.ndarray:
    """Halve the last two axes: 2x2 mean (floats) or the top-left pixel (labels)."""
    if not mean:
        return np.ascontiguousarray(value[..., ::2, ::2])
    h, w = value.shape[-2:]
    padded = np.pad(value, [(0, 0)] * (value.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
    return 0.25 * (padded[..., ::2, ::2] + padded[..., 1::2, ::2]
                   + padded[..., ::2, 1::2] + padded[..., 1::2, 1::2])


def build_pyramid(plan: SlidePlan, name: str, cancel: Any = None) -> None:
    """Levels 1.. of one output from the level above, one block-sized window at a time.

    Labels (class or instance ids, codebook indices) take every other pixel (nearest: no id is
    invented at a border); probabilities and uncertainty the mean of each 2 x 2.
    """
    shapes = pyramid_shapes(plan.shape)
    mean = name in ("probabilities", "uncertainty")
    step = plan.block_size
    for level in range(1, len(shapes)):
        src, dst = open_array(plan, name, level - 1), open_array(plan, name, level)
        h, w = shapes[level]
        for y in range(0, h, step):
            for x in range(0, w, step):
                check_cancel(cancel)
                y1, x1 = min(h, y + step), min(w, x + step)
                value = np.asarray(src[..., 2 * y:2 * y1, 2 * x:2 * x1])
                dst[..., y:y1, x:x1] = _downsample(value, mean).astype(dst.dtype)


def finalize(plan: SlidePlan, cancel: Any = None, provenance: dict | None = None) -> dict:
    """Stitch instances, build the pyramids and store the provenance (after every block).

    Returns
    -------
    dict
        The provenance record stored in the root's attributes.
    """
    import shutil

    import zarr

    from napari_dgseg import __version__
    from napari_dgseg.core.atomic import atomic_write_bytes
    from napari_dgseg.core.labels_io import PLACEMENT_KEY, PROVENANCE_KEY, Placement, json_safe
    from napari_dgseg.core.wsi.store import MARKER_DIR

    if is_finalized(plan):  # already complete (pieces are gone: never stitch twice)
        stored = zarr.open_group(plan.output, mode="r", zarr_format=2).attrs.get(PROVENANCE_KEY)
        return dict(stored or {})
    missing = [b.id for b in plan.blocks if not block_done(plan, b.id)]
    if missing:
        raise RuntimeError(f"finalize needs every block; {len(missing)} are not done "
                           f"(first: {missing[0]})")
    n_instances = _stitch(plan, cancel) if plan.instances else None
    for name in plan.outputs:
        build_pyramid(plan, name, cancel)
    records = [read_marker(plan, b.id) or {} for b in plan.blocks]
    record = {
        **(provenance or {}),
        "model": plan.bundle_name,
        "model_sha256": plan.bundle_sha256,
        "source_image": plan.source,
        "image_shape": list(plan.shape),
        "pixel_size_um": list(plan.pixel_size_um) if plan.pixel_size_um else None,
        "classes": plan.class_names,
        "labels_kind": "instances" if plan.instances else "semantic",
        "method": "streamed whole-slide inference (napari_dgseg.core.wsi)",
        "block_size": plan.block_size,
        "margin": plan.margin,
        "blocks": len(plan.blocks),
        "blocks_with_tissue": len(plan.tissue_ids()),
        "block_seconds": round(float(sum(r.get("seconds", 0.0) for r in records)), 3),
        "instances": n_instances,
        "dcin": next((r["dcin"] for r in records if r.get("dcin")), None),
        "options": plan.options,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "napari_dgseg": __version__,
    }
    if plan.pixel_size_um:
        record[PLACEMENT_KEY] = Placement(scale=tuple(plan.pixel_size_um)).as_dict()
    record = json_safe(record)
    root = zarr.open_group(plan.output, mode="a", zarr_format=2)
    root.attrs[PROVENANCE_KEY] = record
    markers = Path(plan.output) / MARKER_DIR
    shutil.rmtree(markers / "pieces", ignore_errors=True)  # stitched: no longer needed
    atomic_write_bytes(markers / "finalized", b"1\n")
    return record


def is_finalized(plan: SlidePlan) -> bool:
    """Whether the output of ``plan`` is complete."""
    from napari_dgseg.core.wsi.store import MARKER_DIR

    return (Path(plan.output) / MARKER_DIR / "finalized").is_file()


# ---------------------------------------------------------------------------------- driver
def predict_slide(bundle: Any, source: str | Path, out: str | Path, *,
                  block_size: int = DEFAULT_BLOCK, margin: int | None = None,
                  progress: Callable[[int, int], Any] | None = None, cancel: Any = None,
                  block_executor: BlockExecutor | None = None, resume: bool = True,
                  overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Segment a whole slide into ``out`` (a ``.zarr`` folder), block by block.

    Parameters
    ----------
    bundle : Bundle or str
        The model.
    source : path
        The slide.
    out : path
        Output folder ending in ``.zarr``.
    block_size, margin : int
        See :func:`~napari_dgseg.core.wsi.plan.plan_slide`.
    progress : callable, optional
        ``progress(done_blocks, total_blocks)`` (finished blocks of earlier runs count).
    cancel : threading.Event or callable, optional
        Checked between blocks and tiles; a cancelled run resumes later where it stopped.
    block_executor : callable, optional
        ``block_executor(plan, block_ids, progress)`` (module docstring); default sequential.
    resume : bool
        Continue a matching existing output (False: an existing output is refused unless
        ``overwrite``).
    overwrite : bool
        Replace an existing output that does not match.
    **options
        ``outputs``, ``instances``, ``tissue``, ``tile``, ``overlap``, ``batch``, ``device``,
        ``dcin``, ``dcin_method``, ``rescale``, ``scale``, ``mpp``, ``object_size``
        (:func:`~napari_dgseg.core.wsi.plan.plan_slide`).

    Returns
    -------
    dict
        ``output``, ``blocks``, ``blocks_run`` (this call), ``blocks_skipped_blank``,
        ``resumed`` (blocks already done), ``seconds``, ``provenance``.
    """
    from napari_dgseg.core.errors import OutputExistsError
    from napari_dgseg.core.wsi.context import release_contexts

    t0 = time.perf_counter()
    bundle = _as_bundle(bundle)
    out = Path(out)
    if out.exists() and not resume and not overwrite:
        raise OutputExistsError(f"{out} already exists; it was kept. Pass --resume to continue "
                                "it or --overwrite to replace it.")
    plan = plan_slide(source, bundle, out, block_size=block_size, margin=margin, **options)
    create_output(plan, overwrite=overwrite or (out.exists() and not resume))
    done = done_blocks(plan)
    todo = [b.id for b in plan.blocks if b.id not in done]
    total = len(plan.blocks)
    if progress is not None:
        progress(len(done), total)

    def report(k: int, _n: int) -> None:
        if progress is not None:
            progress(len(done) + k, total)

    execute = block_executor or sequential_executor(bundle, cancel)
    try:
        if todo:
            execute(plan, todo, report)
        check_cancel(cancel)
        provenance = finalize(plan, cancel)
    finally:
        release_contexts()
    blank = sum(1 for b in plan.blocks if not b.tissue)
    return {"output": str(out), "blocks": total, "blocks_run": len(todo),
            "blocks_skipped_blank": blank, "resumed": len(done),
            "seconds": round(time.perf_counter() - t0, 3), "provenance": provenance}
