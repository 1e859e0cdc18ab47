"""The plan of a streamed whole-slide run: blocks, their halo, which ones hold tissue, options.

A :class:`SlidePlan` is everything a worker needs to segment one block of a slide and nothing it
would have to share in memory: it is JSON (:meth:`SlidePlan.to_json`), stored beside the result
(``<out>.zarr/.dgseg-blocks/plan.json``) so that a killed run resumes with the same blocks, and
sent as is to other processes by a block executor.

Geometry
--------
The slide's level 0 is cut into square *blocks* of ``block_size`` pixels (the last row and column
are smaller), numbered row-major. A block is segmented on its *window*: the block grown by
``margin`` pixels on every side (clipped at the slide's border). The margin is the halo that

* gives the network the context of its receptive field and the tile blending, so a block's
  pixels do not depend on where the block border lies, and
* holds whole every object whose centroid lies in the block (instance outputs): objects must be
  smaller than the margin (:mod:`napari_dgseg.core.wsi.stitch`).

``block_size`` and ``margin`` are multiples of :data:`ALIGN` so that every window starts on the
network's downsampling grid (a U-Net with 32x downsampling sees the same pixel phases as on the
whole image).

Tissue
------
Blocks are scheduled only where there is tissue: the tissue mask
(:func:`napari_dgseg.core.color.tissue.tissue_mask`, optical density of a thumbnail from the
smallest pyramid level of at least :data:`THUMB_SIDE` pixels, or a strided read of level 0) is
grown by a few pixels, and a block without one tissue pixel in it is *blank*: it is not run and
reads as background (label 0). Only RGB images have a tissue test; others run every block.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError

__all__ = [
    "ALIGN",
    "DEFAULT_BLOCK",
    "DEFAULT_MARGIN",
    "PLAN_VERSION",
    "Block",
    "SlidePlan",
    "block_grid",
    "plan_slide",
    "tissue_blocks",
]

#: Default block side (pixels of level 0): a multiple of the default tile (1024).
DEFAULT_BLOCK = 2048
#: Default halo in pixels of the model's grid: context for the network's receptive field at the
#: block border (the HoVer-Net test of tests/test_wsi_stitch.py gets AJI >= 0.99 with less) and three times
#: a large (40 px) nucleus at the shipped nuclei models' scale, where a typical one is 16 px.
DEFAULT_MARGIN = 128
#: Block sides and margins are multiples of this (the networks' largest downsampling factor).
ALIGN = 32
#: Longer side of the thumbnail the tissue mask is computed on (at least).
THUMB_SIDE = 1024
#: Level-0 pixels the tissue mask is grown by before blocks are tested (the stitching tolerance).
TISSUE_GROW = 8
#: Version of the plan's JSON layout.
PLAN_VERSION = 1
#: Options that must match for a run to resume an existing output.
RESUME_KEYS = ("source", "shape", "bundle_sha256", "block_size", "margin", "outputs",
               "instances", "scale_factor", "dcin", "dcin_method", "tile", "overlap", "tta")


@dataclass(frozen=True)
class Block:
    """One block: its id and owned rectangle ``[y0, y1) x [x0, x1)`` of level 0.

    Attributes
    ----------
    id : int
        Row-major index.
    y0, x0, y1, x1 : int
        The block's pixels (what it writes).
    tissue : bool
        Whether it is scheduled (False: blank glass, written as background).
    """

    id: int
    y0: int
    x0: int
    y1: int
    x1: int
    tissue: bool = True

    def window(self, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The block grown by ``margin`` and clipped to ``shape``: ``(y0, x0, y1, x1)``."""
        return (max(0, self.y0 - margin), max(0, self.x0 - margin),
                min(shape[0], self.y1 + margin), min(shape[1], self.x1 + margin))


@dataclass
class SlidePlan:
    """What a streamed run does (JSON-serialisable).

    Attributes
    ----------
    source : str
        The slide (absolute path).
    output : str
        The ``.zarr`` folder written.
    shape : tuple of int
        Level-0 ``(height, width)``.
    pixel_size_um : tuple of float or None
        Level-0 ``(y, x)`` pixel size in micrometres, where the file records one.
    block_size, margin : int
        Block side and halo (level-0 pixels).
    blocks : list of Block
    bundle_sha256, bundle_name : str
        The model (resuming checks the hash).
    output_kind : str
        ``"semantic"`` (class ids) or ``"instances"`` (instance ids) in the labels array.
    class_names : list of str
    options : dict
        ``outputs`` (a list from ``labels``, ``probabilities``, ``uncertainty``,
        ``codebook_indices``), ``instances`` (bool: instance ids are written), ``tile``,
        ``overlap``, ``batch``, ``device``, ``dcin``, ``dcin_method``, ``reference``,
        ``scale_factor`` and ``scale`` (the decision, for provenance).
    version : int
    """

    source: str
    output: str
    shape: tuple[int, int]
    pixel_size_um: tuple[float, float] | None
    block_size: int
    margin: int
    blocks: list[Block]
    bundle_sha256: str
    bundle_name: str
    output_kind: str
    class_names: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> str:
        """The plan as one JSON document."""
        data = asdict(self)
        data["blocks"] = [[b.id, b.y0, b.x0, b.y1, b.x1, int(b.tissue)] for b in self.blocks]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SlidePlan:
        """Rebuild a plan written by :meth:`to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise InputError("the slide plan is not a napari-dgseg plan of version "
                             f"{PLAN_VERSION}; run again with --overwrite")
        data["blocks"] = [Block(int(i), int(y0), int(x0), int(y1), int(x1), bool(t))
                          for i, y0, x0, y1, x1, t in data["blocks"]]
        data["shape"] = tuple(int(s) for s in data["shape"])
        if data.get("pixel_size_um") is not None:
            data["pixel_size_um"] = tuple(float(s) for s in data["pixel_size_um"])
        return cls(**data)

    # ------------------------------------------------------------------ queries
    @property
    def outputs(self) -> list[str]:
        """The arrays written (``labels`` first)."""
        return list(self.options.get("outputs", ["labels"]))

    @property
    def instances(self) -> bool:
        """True when the labels array holds instance ids (stitched over blocks)."""
        return bool(self.options.get("instances", False))

    def block(self, block_id: int) -> Block:
        """The block with this id."""
        if not 0 <= block_id < len(self.blocks):
            raise InputError(f"block {block_id} is not in the plan (0..{len(self.blocks) - 1})")
        return self.blocks[block_id]

    def window(self, block_id: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` read for a block: the block and its margin."""
        return self.block(block_id).window(self.margin, self.shape)

    def tissue_ids(self) -> list[int]:
        """Ids of the blocks that are run."""
        return [b.id for b in self.blocks if b.tissue]

    def grid_shape(self) -> tuple[int, int]:
        """Blocks per column and per row."""
        return (math.ceil(self.shape[0] / self.block_size),
                math.ceil(self.shape[1] / self.block_size))

    def resume_key(self) -> dict[str, Any]:
        """What must be equal for an existing output to be resumed."""
        flat = {"source": self.source, "shape": list(self.shape),
                "bundle_sha256": self.bundle_sha256, "block_size": self.block_size,
                "margin": self.margin, **self.options}
        return {k: flat.get(k) for k in RESUME_KEYS}

    def mismatch(self, other: SlidePlan) -> str | None:
        """The first resume key that differs from ``other`` (None when they match)."""
        mine, theirs = self.resume_key(), other.resume_key()
        for key in RESUME_KEYS:
            if json.dumps(mine[key]) != json.dumps(theirs[key]):
                return key
        return None


def _aligned(value: int, what: str) -> int:
    if value < ALIGN:
        raise InputError(f"{what} {value} is too small; use at least {ALIGN} pixels")
    return int(math.ceil(value / ALIGN) * ALIGN)


def block_grid(shape: tuple[int, int], block_size: int) -> list[Block]:
    """Row-major blocks of ``block_size`` covering ``shape`` (the last ones smaller)."""
    h, w = shape
    blocks = []
    for y0 in range(0, h, block_size):
        for x0 in range(0, w, block_size):
            blocks.append(Block(len(blocks), y0, x0, min(h, y0 + block_size),
                                min(w, x0 + block_size)))
    return blocks


def thumbnail(levels: list, min_side: int = THUMB_SIDE) -> tuple[np.ndarray, float]:
    """A small copy of a slide and its downsampling factor (level-0 pixels per thumbnail pixel).

    Uses the smallest pyramid level whose longer side is at least ``min_side`` (or level 0),
    then strides it down to about ``min_side``: only that level's strided pixels are read.
    """
    h0 = int(levels[0].shape[0])
    chosen = levels[0]
    for level in levels:
        if max(int(level.shape[0]), int(level.shape[1])) >= min_side:
            chosen = level
    step = max(1, int(max(chosen.shape[0], chosen.shape[1]) // min_side))
    small = chosen[::step, ::step]
    small = np.asarray(small.compute() if hasattr(small, "compute") else small)
    return small, h0 / small.shape[0]


def tissue_blocks(levels: list, blocks: list[Block]) -> list[Block]:
    """``blocks`` with ``tissue`` set from a thumbnail's tissue mask (RGB images only)."""
    from scipy import ndimage as ndi

    from napari_dgseg.core.color.tissue import tissue_mask
    from napari_dgseg.core.imageprep import to_rgb_uint8

    full = levels[0]
    if full.ndim != 3 or full.shape[2] < 3:
        return blocks  # no tissue test for grey or multi-channel images: run every block
    small, down = thumbnail(levels)
    mask = tissue_mask(to_rgb_uint8(small), fallback=False)
    # a block's outputs are background unless its own pixels hold tissue (an instance belongs to
    # the block holding its centroid): grow by the stitching tolerance and a thumbnail pixel only
    grow = int(math.ceil(TISSUE_GROW / down)) + 1
    if grow > 0:
        mask = ndi.binary_dilation(mask, iterations=grow)
    out = []
    for b in blocks:
        ty0, tx0 = int(b.y0 // down), int(b.x0 // down)
        ty1 = max(ty0 + 1, int(math.ceil(b.y1 / down)))
        tx1 = max(tx0 + 1, int(math.ceil(b.x1 / down)))
        out.append(Block(b.id, b.y0, b.x0, b.y1, b.x1, bool(mask[ty0:ty1, tx0:tx1].any())))
    return out


def plan_slide(source: str | Path, bundle: Any, out: str | Path, *,
               block_size: int = DEFAULT_BLOCK, margin: int | None = None,
               outputs: tuple[str, ...] | list[str] = ("labels",), instances: bool | None = None,
               tissue: bool = True, tile: int | None = None, overlap: int | None = None,
               batch: int = 2, device: str = "auto", dcin: str = "auto",
               dcin_method: str | None = None, reference: str | None = None,
               rescale: str = "auto",
               scale: float | None = None, mpp: float | None = None,
               object_size: float | None = None, opened: Any = None,
               tta: bool | None = None) -> SlidePlan:
    """Plan a streamed run of ``bundle`` over the slide at ``source`` into ``out``.

    Parameters
    ----------
    source : path
        Any image :func:`~napari_dgseg.core.slide.open_image` reads (SVS, pyramidal TIFF,
        OME-Zarr, ...).
    bundle : Bundle
        The loaded model.
    out : path
        The ``.zarr`` folder to write.
    block_size : int
        Block side in level-0 pixels (rounded up to a multiple of :data:`ALIGN`).
    margin : int, optional
        Halo in level-0 pixels; default :data:`DEFAULT_MARGIN` model pixels brought to level 0.
        Must be at most half a block.
    outputs : sequence of str
        ``labels`` and optionally ``probabilities``, ``uncertainty``, ``codebook_indices``.
    instances : bool, optional
        Write instance ids; default: the family's output kind (``True`` for HoVer-Net). For a
        semantic model, instances are the 8-connected components of the foreground.
    tissue : bool
        Skip blocks without tissue.
    tile, overlap, batch, device, dcin, dcin_method, reference, rescale, scale, mpp, object_size
        As for :meth:`Bundle.predict`; the scale is decided once for the whole slide here.
    opened : OpenedImage, optional
        The slide already open (else it is opened and closed here).
    tta : bool, optional
        Flip test-time augmentation; None: the bundle's default (decided here, once).
    """
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.inference import tta_default
    from napari_dgseg.core.labels_io import json_safe
    from napari_dgseg.core.scale_check import check_region_scale
    from napari_dgseg.core.scale_inference import plan_scale
    from napari_dgseg.core.slide import open_image
    from napari_dgseg.core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

    known = {"labels", "probabilities", "uncertainty", "codebook_indices"}
    unknown = sorted(set(outputs) - known)
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; choose from {sorted(known)}")
    outputs = ["labels", *[o for o in ("probabilities", "uncertainty", "codebook_indices")
                           if o in outputs]]
    own = opened is None
    opened = open_image(source) if own else opened
    try:
        shape = (int(opened.full.shape[0]), int(opened.full.shape[1]))
        adapter = ImageAdapter.from_array(opened.full)
        family = bundle.family
        factor = 1.0
        decision: dict[str, Any] = {"factor": 1.0, "source": "none", "applied": False}
        if getattr(family, "segment_image", None) is None:
            dec, _ = plan_scale(bundle.manifest, adapter, rescale=rescale, scale=scale, mpp=mpp,
                                object_size=object_size, pixel_size_um=opened.pixel_size_um)
            dec = check_region_scale(bundle, adapter, dec, device=device, dcin=dcin,
                                     reference=reference, dcin_method=dcin_method)
            factor = float(dec.factor) if dec.applied else 1.0
            decision = json_safe(dec.as_dict())
        block_size = _aligned(int(block_size), "block size")
        if margin is None:
            margin = int(math.ceil(DEFAULT_MARGIN / min(factor, 1.0)))
        margin = _aligned(int(margin), "margin")
        if margin * 2 > block_size:
            raise InputError(f"margin {margin} must be at most half the block size "
                             f"({block_size}); use a larger --block-size")
        blocks = block_grid(shape, block_size)
        if tissue:
            blocks = tissue_blocks(opened.levels, blocks)
        if instances is None:
            instances = family.output == "instances"
        options = {
            "outputs": outputs, "instances": bool(instances),
            "tile": int(tile or DEFAULT_TILE), "overlap": int(DEFAULT_OVERLAP if overlap is None
                                                              else overlap),
            "batch": int(batch), "device": device, "dcin": dcin, "dcin_method": dcin_method,
            "reference": None if reference is None else str(reference),
            "scale_factor": factor, "scale": decision, "tissue": bool(tissue),
            "tta": bool(tta_default(bundle.manifest) if tta is None else tta),
        }
        return SlidePlan(
            source=str(Path(source).resolve()), output=str(Path(out).resolve()), shape=shape,
            pixel_size_um=(tuple(float(s) for s in opened.pixel_size_um)
                           if opened.pixel_size_um else None),
            block_size=block_size, margin=margin, blocks=blocks,
            bundle_sha256=str(bundle.sha256), bundle_name=str(bundle.name),
            output_kind=str(family.output), class_names=list(bundle.class_names),
            options=options,
        )
    finally:
        if own:
            opened.close()
