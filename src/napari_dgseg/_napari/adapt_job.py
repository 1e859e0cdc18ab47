"""The Adapt widget's jobs: MaNi adaptation, before/after comparison, saving; no Qt here.

Each job is called as ``job(progress, cancel)`` by the widget's
:class:`~napari_dgseg._napari.runner.TaskRunner` in a worker thread. The GUI thread only checks
the targets' shapes (:func:`check_target`) and hands over the layers' data unread: the targets are
read (:func:`read_target`), the parent's "before" labels predicted, the adaptation run
(:func:`napari_dgseg.core.train.adapt.adapt_steps`, the label-free MaNi adaptation of "MaNi:
Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", Y. Sharma, S. Syed and
D. E. Brown, 2022), the "after" labels predicted and the bundle written, all in the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg._napari.runner import ProgressFn
from napari_dgseg.core.errors import InputError

__all__ = [
    "MAX_SIDE",
    "AdaptJob",
    "check_target",
    "compare_job",
    "read_target",
    "save_job",
]

#: Largest target plane the widget reads into memory (pixels per side).
MAX_SIDE = 4096


def check_target(layer: Any) -> Any:
    """The level-0 data of a target Image layer, checked by shape only (nothing is read).

    Raises
    ------
    InputError
        The layer is not a 2-D image, or larger than :data:`MAX_SIDE` a side.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    spatial = data.ndim - (1 if layer.rgb else 0)
    if spatial != 2:
        raise InputError(
            f"layer {layer.name!r} is not a 2-D image ({spatial} spatial axes); "
            "use 2-D tiles as targets"
        )
    h, w = data.shape[:2]
    if max(h, w) > MAX_SIDE:
        raise InputError(
            f"layer {layer.name!r} is {h}x{w} px; adapt on tiles or regions of at most "
            f"{MAX_SIDE} px (crop regions of the slide into new layers)"
        )
    return data


def read_target(data: Any, name: str) -> np.ndarray:
    """Read a target plane (numpy, dask or zarr) as ``(H, W, 3)`` uint8 (worker side)."""
    from napari_dgseg.core.data.datasets import to_rgb_uint8

    if hasattr(data, "compute"):
        data = data.compute()
    return to_rgb_uint8(np.asarray(data), f"layer {name!r}")


@dataclass
class AdaptJob:
    """One adaptation run: a generator job for the runner.

    Yields ``("before", labels)`` (the parent's labels of the first target), then
    ``("step", AdaptStep)`` per iteration; returns the adapted bundle (also when cancelled: the
    run stops early and keeps what it learnt).

    Attributes
    ----------
    bundle : Bundle
        The parent model (never modified: the core adapts a deep copy).
    targets : list of (data, name)
        Unread target planes and their layer names.
    labels : list of array or None, optional
        Labelled target data (corrected masks) per target, or None.
    params : dict
        Keyword arguments of :func:`~napari_dgseg.core.train.adapt.adapt_steps` (``iters``,
        ``lr``, ``size``, ``source``, ``preview_every``, ``command``, ...).
    """

    bundle: Any
    targets: Sequence[tuple[Any, str]]
    labels: Sequence[Any] | None
    params: dict[str, Any]

    def __call__(
        self, progress: ProgressFn, cancel: threading.Event
    ) -> Generator[tuple[str, Any], None, Any]:
        from napari_dgseg.core.train.adapt import adapt_steps, predict_labels

        images = [read_target(data, name) for data, name in self.targets]
        labels = None
        if self.labels is not None:
            labels = [None if lab is None else np.asarray(lab) for lab in self.labels]
        bundle = self.bundle
        yield ("before", predict_labels(bundle.model, bundle, images[0], device="cpu"))
        iters = int(self.params.get("iters", 1))
        gen = adapt_steps(
            bundle,
            images,
            target_labels=labels,
            preview=images[0],
            cancel=cancel,
            stop_on_cancel=True,
            device="auto",
            **self.params,
        )
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            progress(step.iteration, iters)
            yield ("step", step)


def compare_job(result: Any, data: Any, name: str) -> Any:
    """A job predicting the adapted model's labels of a target plane (the "after")."""

    def work(progress: ProgressFn, cancel: threading.Event) -> np.ndarray:
        from napari_dgseg.core.local_align.bundled import inference_model
        from napari_dgseg.core.train.adapt import predict_labels

        image = read_target(data, name)  # with D1 (local alignment): the reweighted target flow
        return predict_labels(inference_model(result), result, image, device="cpu")

    return work


def save_job(result: Any, target: Path) -> Any:
    """A job writing the adapted bundle to ``target`` (cancellable; nothing half-written)."""

    def work(progress: ProgressFn, cancel: threading.Event) -> Path:
        return result.save(target, cancel=cancel)

    return work
