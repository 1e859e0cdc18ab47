"""What every block of one slide shares, decided once per process: never per block.

A block must be segmented exactly as if it were part of the whole slide, so the decisions that
depend on the whole image are taken from the whole slide and reused for every block:

* the intensity scaling (:class:`~napari_dgseg.core.imageprep.ImageAdapter`'s ``low``/``high``),
* the DCIN colour branches, with their target statistics from a thumbnail of the slide,
* the per-image input statistics some models read (from the same thumbnail),
* the scale factor (stored in the plan).

:func:`slide_context` builds them for a (model, plan) pair and keeps the last few, so that a
worker running many blocks of one slide opens the file and plans DCIN once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dgseg.core.wsi.plan import SlidePlan

__all__ = ["SlideContext", "slide_context", "window_fields"]

#: Contexts kept per process.
CACHE_SIZE = 2


@dataclass
class SlideContext:
    """Shared state of one slide for one model in one process.

    Attributes
    ----------
    opened : OpenedImage
        The slide, open (lazy levels).
    adapter : ImageAdapter
        Level 0 with the slide's intensity scaling.
    thumb : ImageAdapter
        A strided copy (longer side about 1024) with the same scaling: per-image statistics.
    dcin : DcinPlan or None
        Colour branches (None for a family without a network).
    device : torch.device or str
    """

    opened: Any
    adapter: Any
    thumb: Any
    dcin: Any
    device: Any

    @property
    def adapter_shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return (self.adapter.height, self.adapter.width)


_CACHE: OrderedDict[tuple, SlideContext] = OrderedDict()
_LOCK = threading.Lock()


def _thumb_adapter(opened: Any, adapter: Any) -> Any:
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.predict import STATS_THUMBNAIL_SIDE

    levels = opened.levels
    chosen = levels[0]
    for level in levels:  # the smallest level still at least the thumbnail's side
        if max(int(level.shape[0]), int(level.shape[1])) >= STATS_THUMBNAIL_SIDE:
            chosen = level
    step = max(1, math.ceil(max(int(chosen.shape[0]), int(chosen.shape[1]))
                            / STATS_THUMBNAIL_SIDE))
    small = chosen[::step, ::step]
    small = np.asarray(small.compute() if hasattr(small, "compute") else small)
    return ImageAdapter(image=small, height=int(small.shape[0]), width=int(small.shape[1]),
                        channels=adapter.channels, low=adapter.low, high=adapter.high)


def slide_context(bundle: Any, plan: SlidePlan, cancel: Any = None) -> SlideContext:
    """The shared state for ``bundle`` on ``plan``'s slide (built once, then cached)."""
    key = (id(bundle), bundle.sha256, plan.source, plan.output, plan.to_json())
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    from napari_dgseg.core.cancel import cancel_hooks
    from napari_dgseg.core.color.dcin import plan_dcin
    from napari_dgseg.core.device import select_device
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.slide import open_image

    opened = open_image(plan.source)
    adapter = ImageAdapter.from_array(opened.full)
    thumb = _thumb_adapter(opened, adapter)
    dcin = None
    device: Any = "cpu"
    if getattr(bundle.family, "segment_image", None) is None:
        device = select_device(plan.options.get("device", "auto"))
        with cancel_hooks(bundle.model, cancel):
            dcin = plan_dcin(bundle, adapter, plan.options.get("dcin", "auto"),
                             plan.options.get("reference"),
                             method=plan.options.get("dcin_method"),
                             stats_source=thumb.image, device=device, cancel=cancel)
    ctx = SlideContext(opened=opened, adapter=adapter, thumb=thumb, dcin=dcin, device=device)
    with _LOCK:
        _CACHE[key] = ctx
        while len(_CACHE) > CACHE_SIZE:
            _, old = _CACHE.popitem(last=False)
            old.opened.close()
    return ctx


def release_contexts() -> None:
    """Close every cached slide (the end of a run)."""
    with _LOCK:
        while _CACHE:
            _, old = _CACHE.popitem(last=False)
            old.opened.close()


def window_fields(bundle: Any, ctx: SlideContext, plan: SlidePlan,
                  window: tuple[int, int, int, int], *, progress: Any = None,
                  cancel: Any = None) -> dict[str, np.ndarray]:
    """Every output of ``bundle`` on one window of the slide, on the window's pixel grid.

    Returns
    -------
    dict
        ``labels`` and, where the family has them, ``probabilities``, ``codebook_indices``,
        ``uncertainty`` ``(h, w)`` and the family's extras; as :meth:`Bundle.predict` would
        compute them, with the slide-wide decisions of ``ctx``.
    """
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.predict import run_tiled
    from napari_dgseg.core.scale_inference import back_to_image
    from napari_dgseg.core.wsi.regrid import back_to_window, grid_window

    y0, x0, y1, x1 = window
    family = bundle.family
    factor = float(plan.options.get("scale_factor", 1.0))
    semantic = family.output == "semantic"
    if factor != 1.0 and getattr(family, "segment_image", None) is None:
        # a crop of the slide's own model grid, so every block sees the same pixel phases
        model_input, crop, grid = grid_window(ctx.opened.full, ctx.adapter, window, factor)

        def back(fields: dict) -> dict:
            return back_to_window(fields, crop, grid, ctx.adapter_shape, window, semantic)
    else:
        region = ctx.opened.full[y0:y1, x0:x1]
        region = np.asarray(region.compute() if hasattr(region, "compute") else region)
        model_input = ImageAdapter(image=region, height=y1 - y0, width=x1 - x0,
                                   channels=ctx.adapter.channels, low=ctx.adapter.low,
                                   high=ctx.adapter.high)
        if getattr(family, "segment_image", None) is not None:
            return dict(family.segment_image(model_input.to_rgb_uint8(region), bundle.config))

        def back(fields: dict) -> dict:
            return back_to_image(fields, (y1 - y0, x1 - x0), (y1 - y0, x1 - x0), semantic)
    opts = plan.options
    maps = run_tiled(bundle.model, model_input, input_spec=bundle.input_spec,
                     tile=int(opts.get("tile", 1024)), overlap=int(opts.get("overlap", 48)),
                     device=ctx.device, batch=int(opts.get("batch", 2)),
                     branches=ctx.dcin.branches, progress=progress, cancel=cancel,
                     discrete=family.discrete_outputs, stats_source=ctx.thumb,
                     tta=bool(opts.get("tta", False)), flip_signs=family.flip_signs)
    fields = back(dict(family.postprocess(maps, bundle.postprocess_config)))
    if "uncertainty" in maps:
        fields["uncertainty"] = back({"u": maps["uncertainty"]})["u"][0]
    return fields
