"""The ``.zarr`` folder of a streamed run: OME-Zarr v0.4 arrays, the stored plan, block markers.

Layout (Zarr format 2, as OME-Zarr 0.4 requires)::

    slide.zarr/
      .zattrs                 multiscales (axes y, x in micrometres), image-label,
                              napari_dgseg_provenance (after finalize)
      0/ 1/ 2/ ...            the labels pyramid, int32, chunks of at most 1024 px
      probabilities/0/ ...    optional (c, y, x) float32 pyramid, its own multiscales
      uncertainty/0/ ...      optional float32 pyramid
      codebook_indices/0/ ... optional int32 pyramid
      .dgseg-blocks/
        plan.json             the :class:`~napari_dgseg.core.wsi.plan.SlidePlan`
        <id>.done             one JSON marker per finished block (atomic, after its data)
        pieces/<id>.npz       instance outputs: the block's own instances on its window
        finalized             written last by finalize

The labels are the root image so that any OME-Zarr reader (and napari-dgseg's own) opens the
folder as a multiscale label image placed on the slide (same micrometre scale). Each block
writes only whole chunks of its own rectangle (block sides are multiples of the chunk side), so
blocks can be written by different processes at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.atomic import atomic_write_bytes
from napari_dgseg.core.errors import InputError, OutputExistsError
from napari_dgseg.core.wsi.plan import SlidePlan

__all__ = [
    "MARKER_DIR",
    "block_done",
    "chunk_side",
    "create_output",
    "done_blocks",
    "mark_done",
    "open_array",
    "read_marker",
    "stored_plan",
]

#: Folder of the run's bookkeeping inside the ``.zarr``.
MARKER_DIR = ".dgseg-blocks"
#: Largest chunk side of the stored arrays.
MAX_CHUNK = 1024
#: Pyramid levels stop when the longer side is at most this.
PYRAMID_MIN_SIDE = 512


def chunk_side(block_size: int) -> int:
    """Chunk side: the largest divisor of ``block_size`` that is at most :data:`MAX_CHUNK`."""
    for parts in range(1, block_size + 1):
        if block_size % parts == 0 and block_size // parts <= MAX_CHUNK:
            return block_size // parts
    return block_size  # pragma: no cover - parts == block_size always qualifies


def pyramid_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Level shapes, halving (rounding up) until the longer side is <= :data:`PYRAMID_MIN_SIDE`."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > PYRAMID_MIN_SIDE:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _marker_dir(plan: SlidePlan) -> Path:
    return Path(plan.output) / MARKER_DIR


def _dtype(name: str) -> str:
    return "float32" if name in ("probabilities", "uncertainty") else "int32"


def _multiscales(name: str, shapes: list[tuple[int, int]], plan: SlidePlan,
                 channels: int | None) -> dict[str, Any]:
    py, px = plan.pixel_size_um or (1.0, 1.0)
    unit = "micrometer" if plan.pixel_size_um else None
    axes: list[dict[str, Any]] = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for a in axes:
            a["unit"] = unit
    lead: list[float] = []
    if channels is not None:
        axes.insert(0, {"name": "c", "type": "channel"})
        lead = [1.0]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [*lead, py * shapes[0][0] / s[0], px * shapes[0][1] / s[1]]}]}
        for i, s in enumerate(shapes)]
    return {"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
            "type": "nearest" if _dtype(name) == "int32" else "mean"}


def create_output(plan: SlidePlan, *, overwrite: bool = False) -> Path:
    """Create (or reopen, for a resumed run) the output folder of ``plan``.

    Idempotent: an existing output written for an equal plan (same source, model hash, blocks
    and options) is kept with its finished blocks. Anything else at ``plan.output`` is refused
    with one line unless ``overwrite`` (then it is removed first).

    Returns
    -------
    Path
        The ``.zarr`` folder.
    """
    import shutil

    import zarr

    out = Path(plan.output)
    if out.exists():
        previous = stored_plan(out)
        reason = None
        if previous is None:
            reason = "it is not a napari-dgseg streamed output"
        else:
            key = previous.mismatch(plan)
            if key is not None:
                reason = f"it was written with another {key.replace('_', ' ')}"
        if reason is not None:
            if not overwrite:
                raise OutputExistsError(f"{out} already exists and {reason}; it was kept. Pass "
                                        "--overwrite (Python: overwrite=True) to replace it, "
                                        "or choose another output.")
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        elif overwrite:
            shutil.rmtree(out)
    if out.suffix.lower() != ".zarr":
        raise InputError(f"{out}: a streamed slide output must be a folder ending in .zarr")
    shapes = pyramid_shapes(plan.shape)
    chunk = chunk_side(plan.block_size)
    root = zarr.open_group(str(out), mode="a", zarr_format=2)
    k = len(plan.class_names)
    for name in plan.outputs:
        group = root if name == "labels" else root.require_group(name)
        channels = k if name == "probabilities" else None
        for i, (h, w) in enumerate(shapes):
            shape = (h, w) if channels is None else (channels, h, w)
            chunks = (chunk, chunk) if channels is None else (channels, chunk, chunk)
            if str(i) not in group:
                group.create_array(str(i), shape=shape, chunks=chunks, dtype=_dtype(name),
                                   fill_value=0,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        attrs = {"multiscales": [_multiscales(name, shapes, plan, channels)]}
        if name in ("labels", "codebook_indices"):
            attrs["image-label"] = {"version": "0.4", "source": {"image": plan.source}}
        group.attrs.update(attrs)
    markers = _marker_dir(plan)
    (markers / "pieces").mkdir(parents=True, exist_ok=True)
    plan_file = markers / "plan.json"
    if not plan_file.exists():
        atomic_write_bytes(plan_file, plan.to_json().encode("utf-8"))
    return out


def stored_plan(out: str | Path) -> SlidePlan | None:
    """The plan stored in an output folder (None when there is none or it is unreadable)."""
    f = Path(out) / MARKER_DIR / "plan.json"
    try:
        return SlidePlan.from_json(f.read_bytes())
    except (OSError, ValueError, TypeError, KeyError, InputError):
        return None


def open_array(plan: SlidePlan, name: str, level: int = 0, mode: str = "r+") -> Any:
    """One stored array (``labels`` is the root's)."""
    import zarr

    path = str(level) if name == "labels" else f"{name}/{level}"
    return zarr.open_array(str(Path(plan.output) / path), mode=mode, zarr_format=2)


def marker_path(plan: SlidePlan, block_id: int) -> Path:
    """The done marker of a block."""
    return _marker_dir(plan) / f"{block_id}.done"


def piece_path(plan: SlidePlan, block_id: int) -> Path:
    """Where a block's instances are kept until :func:`~napari_dgseg.core.wsi.stream.finalize`."""
    return _marker_dir(plan) / "pieces" / f"{block_id}.npz"


def mark_done(plan: SlidePlan, block_id: int, record: dict[str, Any]) -> None:
    """Write the block's done marker (atomically; call only after its data is stored)."""
    from napari_dgseg.core.labels_io import json_safe

    data = json.dumps(json_safe({"block": int(block_id), **record}), sort_keys=True).encode()
    atomic_write_bytes(marker_path(plan, block_id), data, overwrite=True)


def read_marker(plan: SlidePlan, block_id: int) -> dict[str, Any] | None:
    """A block's done record, or None when it is not finished."""
    try:
        return json.loads(marker_path(plan, block_id).read_text())
    except (OSError, ValueError):
        return None


def block_done(plan: SlidePlan, block_id: int) -> bool:
    """Whether the block has a done marker."""
    return marker_path(plan, block_id).is_file()


def done_blocks(plan: SlidePlan) -> set[int]:
    """Ids of the blocks with a done marker."""
    folder = _marker_dir(plan)
    if not folder.is_dir():
        return set()
    ids = set()
    for name in os.listdir(folder):
        stem, dot, ext = name.partition(".")
        if dot and ext == "done" and stem.isdigit():
            ids.add(int(stem))
    return ids


def write_blank(plan: SlidePlan, block_id: int) -> None:
    """Store a blank (glass) block: background probability 1 where probabilities are kept."""
    b = plan.block(block_id)
    if "probabilities" in plan.outputs:
        arr = open_array(plan, "probabilities")
        value = np.zeros((arr.shape[0], b.y1 - b.y0, b.x1 - b.x0), np.float32)
        value[0] = 1.0
        arr[:, b.y0:b.y1, b.x0:b.x1] = value
