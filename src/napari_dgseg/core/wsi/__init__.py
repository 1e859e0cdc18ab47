"""Streaming whole-slide inference into chunked OME-Zarr (memory of one block, any slide size).

* :mod:`.plan` - :class:`SlidePlan` and :func:`plan_slide`: blocks, margin, tissue, options.
* :mod:`.store` - the ``.zarr`` layout, the stored plan and the per-block done markers.
* :mod:`.context` - what all blocks share (intensity scaling, DCIN, statistics), once per process.
* :mod:`.stitch` - instances over block borders: the ownership rule and slide-wide ids.
* :mod:`.stream` - :func:`run_block`, :func:`finalize`, :func:`predict_slide`.

See ``docs/whole-slides.md``.
"""

from napari_dgseg.core.wsi.plan import DEFAULT_BLOCK, Block, SlidePlan, plan_slide
from napari_dgseg.core.wsi.store import create_output
from napari_dgseg.core.wsi.stream import finalize, predict_slide, run_block, sequential_executor

__all__ = ["DEFAULT_BLOCK", "Block", "SlidePlan", "create_output", "finalize", "plan_slide",
           "predict_slide", "run_block", "sequential_executor"]
