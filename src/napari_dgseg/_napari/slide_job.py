"""The Segment widget's whole-slide job: stream a large slide into OME-Zarr in the worker.

Used instead of :class:`~napari_dgseg._napari.segment_job.SegmentJob` when the whole image of a
large multiscale layer read from a file is segmented (:func:`use_slide_job`): the slide is
segmented block by block by :func:`napari_dgseg.core.wsi.predict_slide` into
``<slide stem>_<model>.zarr`` beside the slide (resumed when it exists for the same model and
options), and the result comes back as a lazy multiscale labels layer placed on the slide.
Progress counts blocks; cancel stops between blocks and tiles, and a later run continues.
No Qt and no viewer access here.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_dgseg._napari.runner import ProgressFn
from napari_dgseg._napari.segment_job import SegmentResult
from napari_dgseg.core.errors import InputError

__all__ = ["SLIDE_JOB_MIN_PIXELS", "SlideJob", "slide_output_path", "use_slide_job"]

#: Whole images of multiscale layers at least this large are streamed (16.8 Mpx: 4096^2).
SLIDE_JOB_MIN_PIXELS = 4096 * 4096
#: Options of the widget's scale controls that the streamed engine takes.
_SCALE_KEYS = ("rescale", "scale", "mpp", "object_size")


def use_slide_job(layer: Any, region: Any, plane_shape: tuple[int, ...],
                  source_path: str | None) -> bool:
    """Whether to stream: the whole image of a large slide layer read from a file.

    A slide layer is multiscale (a pyramid) or lazy: a single-level tiled TIFF or SVS opens as
    one dask array, and its whole image must stream as a pyramid's does, not be read into memory.
    """
    whole = tuple(region.shape) == tuple(plane_shape[:2]) and (region.y0, region.x0) == (0, 0)
    h, w = region.shape
    return (_is_slide_layer(layer) and whole and source_path is not None
            and Path(source_path).exists() and h * w >= SLIDE_JOB_MIN_PIXELS)


def _is_slide_layer(layer: Any) -> bool:
    """Multiscale, or level 0 is a lazy dask array (a file read in parts, not a numpy image)."""
    if bool(getattr(layer, "multiscale", False)):
        return True
    import dask.array as da

    return isinstance(getattr(layer, "data", None), da.Array)


def slide_output_path(source_path: str, model_name: str) -> Path:
    """``<slide stem>_<model>.zarr`` beside the slide (one clear line if that is not writable)."""
    from napari_dgseg.core.slide import supported_suffix

    src = Path(source_path)
    suffix = supported_suffix(src.name) or src.suffix
    stem = src.name[: -len(suffix)] if suffix else src.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    out = src.parent / f"{stem}_{safe}.zarr"
    if not os.access(src.parent, os.W_OK):
        raise InputError(f"cannot write the slide's result beside it ({src.parent} is read-only); "
                         "copy the slide to a writable folder or use `dgseg predict --out X.zarr`")
    return out


@dataclass
class SlideJob:
    """A whole-slide run, gathered in the GUI thread and executed in the worker."""

    bundle: Any
    source_path: str
    out: str
    image_name: str
    translate: tuple[float, ...]
    tile: int
    overlap: int
    device: str
    dcin: str = "auto"
    probabilities: bool = False
    scale_kwargs: dict[str, Any] = field(default_factory=dict)
    block_size: int | None = None
    #: Flip test-time augmentation (None: the model's recorded default).
    tta: bool | None = None
    #: Painted after each block for the result layer shown during the run (slide_preview).
    preview: Any = None

    def __call__(self, progress: ProgressFn, cancel: threading.Event) -> SegmentResult:
        from napari_dgseg._napari.reader import read_one
        from napari_dgseg._napari.slide_preview import preview_executor
        from napari_dgseg.core.wsi import DEFAULT_BLOCK, predict_slide

        outputs = ["labels", "probabilities"] if self.probabilities else ["labels"]
        scale = {k: v for k, v in self.scale_kwargs.items() if k in _SCALE_KEYS}
        summary = predict_slide(
            self.bundle, self.source_path, self.out, block_size=self.block_size or DEFAULT_BLOCK,
            progress=progress, cancel=cancel, outputs=outputs, tile=self.tile,
            overlap=self.overlap, device=self.device, dcin=self.dcin, tta=self.tta,
            block_executor=(None if self.preview is None
                            else preview_executor(self.preview, self.bundle, cancel)), **scale)
        data, kwargs, kind = read_one(self.out)
        kwargs["name"] = f"{self.image_name} {self.bundle.name}"
        translate = tuple(float(t) for t in self.translate[-2:])
        if any(translate):
            kwargs["translate"] = translate
        prov = summary["provenance"]
        n = prov.get("instances")
        what = f"{n} instances" if n is not None else "classes"
        text = (f"{prov.get('image_shape')} px slide streamed in {summary['blocks']} blocks "
                f"({summary['blocks_skipped_blank']} blank, {summary['resumed']} resumed), "
                f"{what}, into {Path(self.out).name}")
        return SegmentResult(layer_data=[(data, kwargs, kind)], summary=text, dcin=None,
                             reference_label=None,
                             scale=(prov.get("options") or {}).get("scale"))
