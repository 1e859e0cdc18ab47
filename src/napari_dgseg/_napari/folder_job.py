"""The Segment widget's folder batch: every image of a folder to masks on disk, in the worker.

:class:`FolderJob` is what ``dgseg predict --model M --out OUT FOLDER`` does for the labels, run
by the widget's :class:`~napari_dgseg._napari.runner.TaskRunner`: each supported image of the
folder (sorted, not recursive; the CLI's :func:`~napari_dgseg.cli._inputs.expand_inputs`) is
opened lazily, segmented tile by tile with the widget's settings, re-derived with its mask
controls (:func:`napari_dgseg.core.relabel.relabel`) when they are not at their defaults, and
written as ``<stem>_labels.tif`` with its provenance by the CLI's writer
(:func:`napari_dgseg.core.labels_io.write_labels`). One :class:`FileResult` per file is yielded
as soon as the file is done (the widget's result table); a file that cannot be read or segmented
gets its one-line error and the batch goes on. Progress is counted in files.

With ``shared_scale`` (the widget's "one scale for the folder"), the images without a pixel size
of their own are first read by the size estimator and all segmented at one factor, decided from
the median of their estimates (:func:`napari_dgseg.core.scale_batch.shared_scale`; ``dgseg
predict --rescale shared``), as tiles of one slide should be.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg._napari.runner import ProgressFn
from napari_dgseg.core.cancel import check_cancel
from napari_dgseg.core.errors import CancelledError, DgsegError, InputError

__all__ = ["FileResult", "FolderJob", "folder_images"]


@dataclass(frozen=True)
class FileResult:
    """One row of the result table: the input, where its mask went, or why it failed."""

    input: str
    labels: str | None
    summary: str
    seconds: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def folder_images(folder: str | Path) -> list[Path]:
    """The supported images of ``folder`` as ``dgseg predict`` finds them (one clear error if none)."""
    from napari_dgseg.cli._inputs import expand_inputs

    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"{p} is not a folder; choose a folder of images")
    return expand_inputs([str(p)])


@dataclass
class FolderJob:
    """Segment every image of ``inputs`` into ``out`` (gathered in the GUI thread)."""

    bundle: Any
    inputs: list[Path]
    out: Path
    tile: int
    overlap: int
    device: str
    dcin: str = "auto"
    threshold: float = 0.5
    min_size: int = 0
    #: The Scale field's choice (``rescale``, ``scale``, ``mpp``, ``object_size``); each file's
    #: own pixel size is added per file.
    scale_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Flip test-time augmentation (None: the model's recorded default).
    tta: bool | None = None
    #: One factor for every image without a pixel size (only when the Scale field is ``auto``).
    shared_scale: bool = False

    def _shared(self, cancel: threading.Event) -> dict[str, Any] | None:
        """The folder's shared scale decision, or None when not asked for or not applicable."""
        from napari_dgseg.core.scale_batch import images_without_pixel_size, shared_scale

        given = any(self.scale_kwargs.get(k) is not None for k in ("scale", "mpp", "object_size"))
        if not self.shared_scale or self.scale_kwargs.get("rescale", "auto") != "auto" or given:
            return None
        images = images_without_pixel_size(self.inputs, before_each=lambda: check_cancel(cancel))
        found = shared_scale(self.bundle.manifest, images)
        return found if found["factor"] is not None else None

    def __call__(
        self, progress: ProgressFn, cancel: threading.Event
    ) -> Generator[FileResult, None, list[FileResult]]:
        from napari_dgseg._napari.layers import summarize
        from napari_dgseg.cli._inputs import output_stem
        from napari_dgseg.core.labels_io import Placement, write_labels
        from napari_dgseg.core.relabel import relabel
        from napari_dgseg.core.slide import open_image

        self.out.mkdir(parents=True, exist_ok=True)
        output = self.bundle.family.output
        tuned = abs(self.threshold - 0.5) > 1e-9 or self.min_size > 1
        rows: list[FileResult] = []
        total = len(self.inputs)
        progress(0, total)
        shared = self._shared(cancel)
        for i, path in enumerate(self.inputs):
            check_cancel(cancel)
            try:
                opened = open_image(path)
                scale_kwargs = {**self.scale_kwargs, "pixel_size_um": opened.pixel_size_um}
                if shared is not None and not opened.pixel_size_um:
                    scale_kwargs["scale"] = shared["factor"]
                pred = self.bundle.predict(
                    opened.full, tile=self.tile, overlap=self.overlap, device=self.device,
                    dcin=self.dcin, cancel=cancel, tta=self.tta, **scale_kwargs,
                )
                labels = pred.labels
                provenance = {
                    **pred.provenance,
                    "source_image": str(Path(path).resolve()),
                    "pixel_size_um": opened.pixel_size_um,
                    "classes": list(pred.class_names),
                }
                if shared is not None and not opened.pixel_size_um:
                    provenance["scale"] = {**provenance["scale"], "shared": shared}
                if tuned and pred.probabilities is not None:
                    labels = relabel(
                        pred.probabilities, self.threshold, self.min_size,
                        instances=np.asarray(labels) if output == "instances" else None,
                    )
                    pred.labels = labels
                    provenance["mask_controls"] = {
                        "threshold": self.threshold, "min_size": self.min_size,
                    }
                # on the image's micrometre pixel size, like `dgseg predict`'s outputs
                placement = (Placement(scale=opened.pixel_size_um)
                             if opened.pixel_size_um else None)
                dest = write_labels(self.out / f"{output_stem(Path(path))}_labels.tif", labels,
                                    provenance, placement=placement)
                row = FileResult(
                    input=str(path), labels=str(dest), summary=summarize(pred, output),
                    seconds=pred.provenance.get("seconds"),
                )
            except CancelledError:
                raise
            except DgsegError as exc:
                row = FileResult(input=str(path), labels=None, summary="", error=str(exc))
            except (OSError, ValueError) as exc:
                row = FileResult(
                    input=str(path), labels=None, summary="",
                    error=f"could not read or write ({type(exc).__name__}: {exc})",
                )
            rows.append(row)
            progress(i + 1, total)
            yield row
        return rows
