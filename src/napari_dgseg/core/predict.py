"""The inference pipeline: image -> (colour branches) -> tiles -> model -> blend -> Prediction.

:func:`run_tiled` works on numpy, dask or zarr arrays of any size: it reads one tile region at a
time, batches tiles through the network under :func:`torch.inference_mode`, and blends the dense
outputs with the windows of :mod:`napari_dgseg.core.tiling`, so results do not depend on the tile
size. *Branches* are input transforms applied to every tile (DCIN's GRIS and LRIS colour
normalisations); their dense outputs are averaged (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025: mean of the raw logits) and, with two
or more branches, their disagreement is returned as an uncertainty map.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.cancel import cancel_hooks, check_cancel
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import InputError, NonFiniteOutputError
from napari_dgseg.core.imageprep import ImageAdapter
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.precision import autocast, check_precision, to_device
from napari_dgseg.core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, TileGrid, plan_tiles

Branch = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], Any]


@dataclass
class Prediction:
    """What :meth:`Bundle.predict` returns.

    Attributes
    ----------
    labels : np.ndarray
        ``(H, W)`` int32: class ids (semantic families) or instance ids (families whose
        ``output`` is ``"instances"``).
    probabilities : np.ndarray or None
        ``(K, H, W)`` float32 class probabilities.
    codebook_indices : np.ndarray or None
        ``(H, W)`` int32 codebook index per pixel (families supporting ``"codebook"``), else None.
    local_mask : np.ndarray or None
        ``(H, W)`` float32 local feature mask (domain gap per pixel, ``tanh(|D1(f)|)`` in
        ``[0, 1)``; docs/local-masks.md), for bundles carrying D1 (``local_mask`` capability).
    uncertainty : np.ndarray or None
        ``(H, W)`` float32 disagreement between colour-normalisation branches (DCIN ``full``).
    class_names : tuple of str
        Name of each class id.
    provenance : dict
        Model, parameters, device, timing: what to store with the masks.
    extras : dict
        Other per-pixel maps a family returns (HoVer-Net's HV maps, code-usage histograms).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    codebook_indices: np.ndarray | None = None
    local_mask: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    provenance: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def _pad_to(block: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Pad a ``(h, w, 3)`` block at the bottom/right to ``(th, tw, 3)`` by reflection."""
    h, w = block.shape[:2]
    if h == th and w == tw:
        return block
    mode = "reflect" if h > 1 and w > 1 and th - h < h and tw - w < w else "edge"
    if mode == "reflect":
        return np.pad(block, ((0, th - h), (0, tw - w), (0, 0)), mode="reflect")
    return np.pad(block, ((0, th - h), (0, tw - w), (0, 0)), mode="edge")


def run_tiled(
    model: torch.nn.Module,
    image: Any,
    *,
    input_spec: dict | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device = "auto",
    batch: int = 2,
    branches: Sequence[Branch] | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    discrete: Sequence[str] | None = None,
    precision: str = "fp32",
    stats_source: ImageAdapter | None = None,
    tta: bool = False,
    flip_signs: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model.infer`` over ``image`` tile by tile and blend the outputs.

    Parameters
    ----------
    model : SegModel
        Network following :class:`napari_dgseg.core.models.base.SegModel`.
    image : array-like
        ``(H, W)``, ``(H, W, 1|3|4)``; numpy, dask or zarr (read one tile at a time).
    input_spec : dict
        ``{"mean": [...], "std": [...]}`` normalisation of RGB in [0, 1].
    tile, overlap : int
        Largest tile side and minimum overlap between tiles (pixels).
    device : str
        ``auto`` (CUDA, MPS, CPU), ``cpu``, ``cuda`` or ``mps``.
    batch : int
        Tiles per forward pass.
    branches : sequence of callables
        Input transforms on ``(B, 3, h, w)`` RGB in [0, 1]; outputs are averaged over branches.
    progress : callable
        Called as ``progress(done_tiles, total_tiles)``.
    cancel : threading.Event or callable
        Checked between batches, colour branches and the network's layers
        (:func:`~napari_dgseg.core.cancel.cancel_hooks`); when set, raises
        :class:`CancelledError`.
    discrete : sequence of str, optional
        Outputs of ``infer`` taken from the nearest tile centre instead of averaged (the family's
        :attr:`~napari_dgseg.core.family.Family.discrete_outputs`); default the model's
        :attr:`~napari_dgseg.core.models.base.SegModel.discrete_outputs`.
    precision : str
        ``fp32`` (default), ``bf16`` (CUDA or CPU autocast) or ``fp16`` (CUDA only); see
        :mod:`napari_dgseg.core.precision`. Outputs are blended in float32 either way.
    stats_source : ImageAdapter, optional
        The image whose thumbnail gives the per-image input statistics (models that read them):
        the whole slide when ``image`` is one block of it (:mod:`napari_dgseg.core.wsi`), so
        every block is normalised alike; default ``image``.
    tta : bool
        Flip test-time augmentation: every tile also goes through the network flipped
        left-right, up-down and both, each output is flipped back and the four are averaged
        (:data:`FLIPS`); 4x the forward passes. Discrete outputs come from the unflipped pass.
    flip_signs : mapping, optional
        Vector outputs (the family's :attr:`~napari_dgseg.core.family.Family.flip_signs`):
        channels along ``x`` / ``y`` change sign when flipped back along that axis.

    Returns
    -------
    dict
        Each dense output ``(C, H, W)`` float32, each discrete output ``(H, W)`` int32, and
        ``"uncertainty"`` ``(1, H, W)`` when there are two or more branches.
    """
    if tile < 16:
        raise InputError(f"tile size {tile} is too small; use at least 64 (default {DEFAULT_TILE})")
    if overlap < 0 or overlap >= tile:
        raise InputError(f"overlap {overlap} must be >= 0 and smaller than the tile ({tile})")
    if batch < 1:
        raise InputError(f"batch {batch} must be >= 1")
    adapter = image if isinstance(image, ImageAdapter) else ImageAdapter.from_array(image)
    dev = select_device(device)
    precision = check_precision(precision, dev)
    spec = input_spec or {}
    branches = list(branches) if branches else [lambda x: x]
    divisor = int(model.divisor)
    grid = plan_tiles(adapter.height, adapter.width, tile, overlap, divisor)
    discrete_keys = tuple(model.discrete_outputs if discrete is None else discrete)
    model = model.to(dev).eval()
    stats = _branch_stats(adapter if stats_source is None else stats_source, spec, branches)

    acc: dict[str, np.ndarray] = {}
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ph, pw = grid.padded_shape
    weight_sum = np.zeros((ph, pw), dtype=np.float32)
    positions = grid.tiles()
    total = len(positions)
    if progress is not None:
        progress(0, total)
    with torch.inference_mode(), cancel_hooks(model, cancel):
        for start in range(0, total, batch):
            check_cancel(cancel)
            chunk = positions[start : start + batch]
            x = to_device(_read_batch(adapter, grid, chunk), dev)
            with autocast(dev, precision):
                outputs = _infer_branches(model, x, spec, branches, discrete_keys, cancel, stats,
                                          FLIPS if tta else FLIPS[:1], flip_signs or {})
            for i, (y0, x0) in enumerate(chunk):
                _accumulate(grid, y0, x0, outputs, i, acc, best, weight_sum, discrete_keys)
            if progress is not None:
                progress(min(start + batch, total), total)
    h, w = adapter.height, adapter.width
    result: dict[str, np.ndarray] = {}
    for key, value in acc.items():
        result[key] = (value / weight_sum[None])[:, :h, :w]
    for key, (values, _) in best.items():
        result[key] = values[:h, :w]
    return result


#: Longer side of the thumbnail per-image input statistics are computed on.
STATS_THUMBNAIL_SIDE = 1024


def _branch_stats(
    adapter: ImageAdapter, spec: dict, branches: Sequence[Branch]
) -> list[torch.Tensor] | None:
    """Whole-image input statistics per colour branch, once per image (None: not needed).

    Computed on a strided thumbnail (a slide reads only the strided pixels) after each branch's
    colour transform, so every tile of a branch is normalised alike and tiles show no seams.
    """
    from napari_dgseg.core.input_features import image_stats, needs_image_stats

    if not needs_image_stats(spec):
        return None
    step = max(1, int(np.ceil(max(adapter.height, adapter.width) / STATS_THUMBNAIL_SIDE)))
    thumb = adapter.to_rgb_float(np.asarray(adapter.image[::step, ::step]))
    x = torch.from_numpy(np.ascontiguousarray(thumb.transpose(2, 0, 1)))[None].float()
    with torch.inference_mode():
        return [image_stats(branch(x), spec, step) for branch in branches]


def _read_batch(adapter: ImageAdapter, grid: TileGrid, chunk: list[tuple[int, int]]) -> torch.Tensor:
    th, tw = grid.tile_shape
    blocks = []
    for y0, x0 in chunk:
        y1, x1 = min(y0 + th, adapter.height), min(x0 + tw, adapter.width)
        blocks.append(_pad_to(adapter.region(y0, y1, x0, x1), th, tw))
    arr = np.stack(blocks).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


#: Flip test-time augmentation: the image axes each pass flips (``()`` = as it is); ``-1`` is
#: the width (x), ``-2`` the height (y).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def _unflip(out: dict[str, torch.Tensor], dims: tuple[int, ...],
            flip_signs: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """``out`` of a flipped input mapped back: flipped along ``dims``, vector components negated."""
    if not dims:
        return out
    back = {}
    for key, value in out.items():
        value = torch.flip(value, dims)
        signs = flip_signs.get(key)
        if signs:
            axes = {"x": -1, "y": -2}
            scale = torch.tensor([-1.0 if s and axes[s] in dims else 1.0 for s in signs],
                                 dtype=value.dtype, device=value.device)
            value = value * scale.view(1, -1, *([1] * (value.ndim - 2)))
        back[key] = value
    return back


def _infer_tta(model: torch.nn.Module, x: torch.Tensor, flips: Sequence[tuple[int, ...]],
               flip_signs: Mapping[str, Sequence[str]], discrete_keys: tuple[str, ...],
               cancel: Any) -> dict[str, torch.Tensor]:
    """``model.infer`` averaged over ``flips`` of ``x`` (discrete outputs: the first pass's)."""
    total: dict[str, torch.Tensor] = {}
    for dims in flips:
        check_cancel(cancel)
        out = model.infer(torch.flip(x, dims) if dims else x)
        out = _unflip(out, dims, flip_signs)
        for key, value in out.items():
            if key in discrete_keys or not value.is_floating_point():
                total.setdefault(key, value)
            else:
                value = value.float()
                total[key] = total[key] + value if key in total else value.clone()
    n = float(len(flips))
    return {k: (v / n if v.is_floating_point() and k not in discrete_keys else v)
            for k, v in total.items()}


def _infer_branches(
    model: torch.nn.Module,
    x: torch.Tensor,
    spec: dict,
    branches: Sequence[Branch],
    discrete_keys: tuple[str, ...],
    cancel: Any = None,
    stats: Sequence[torch.Tensor | None] | None = None,
    flips: Sequence[tuple[int, ...]] = ((),),
    flip_signs: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    summed: dict[str, torch.Tensor] = {}
    probs: list[torch.Tensor] = []
    discrete: dict[str, torch.Tensor] = {}
    for b, branch in enumerate(branches):
        check_cancel(cancel)
        inp = normalise_input(branch(x), spec, None if stats is None else stats[b])
        if len(flips) > 1:
            out = _infer_tta(model, inp, flips, flip_signs or {}, discrete_keys, cancel)
        else:
            out = model.infer(inp)
        for key, value in out.items():
            if value.is_floating_point():  # reduced precision: sum and blend in float32
                value = value.float()
            if key in discrete_keys:
                discrete.setdefault(key, value)  # the first branch decides discrete maps
            else:
                summed[key] = summed[key] + value if key in summed else value.clone()
        if len(branches) > 1 and "logits" in out:
            probs.append(torch.softmax(out["logits"].float(), dim=1))
    n = float(len(branches))
    for key, value in summed.items():
        # One reduction per tile batch: NaN/inf would otherwise become a plausible all-background
        # mask (argmax of NaN is 0) with nothing to warn the user.
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteOutputError(
                f"the network returned non-finite values (NaN or inf) in its {key!r} output"
            )
    result = {k: (v / n).float().cpu().numpy() for k, v in summed.items()}
    if len(probs) > 1:
        # Disagreement between branches: mean pairwise total-variation distance of the
        # class distributions (0 = identical, 1 = disjoint).
        tv = torch.zeros_like(probs[0][:, :1])
        pairs = 0
        for a in range(len(probs)):
            for b in range(a + 1, len(probs)):
                tv += 0.5 * (probs[a] - probs[b]).abs().sum(dim=1, keepdim=True)
                pairs += 1
        result["uncertainty"] = (tv / pairs).float().cpu().numpy()
    for key, value in discrete.items():
        result[key] = value.to(torch.int32).cpu().numpy()
    return result


def _accumulate(
    grid: TileGrid,
    y0: int,
    x0: int,
    outputs: dict[str, np.ndarray],
    i: int,
    acc: dict[str, np.ndarray],
    best: dict[str, tuple[np.ndarray, np.ndarray]],
    weight_sum: np.ndarray,
    discrete_keys: tuple[str, ...],
) -> None:
    th, tw = grid.tile_shape
    ph, pw = grid.padded_shape
    win = grid.window(y0, x0)
    sl = (slice(y0, y0 + th), slice(x0, x0 + tw))
    weight_sum[sl] += win
    for key, value in outputs.items():
        if key in discrete_keys:
            if key not in best:
                best[key] = (np.zeros((ph, pw), np.int32), np.full((ph, pw), -1.0, np.float32))
            values, wbest = best[key]
            take = win > wbest[sl]
            values[sl][take] = value[i][take]
            wbest[sl][take] = win[take]
            continue
        tile_out = value[i]
        if key not in acc:
            acc[key] = np.zeros((tile_out.shape[0], ph, pw), dtype=np.float32)
        acc[key][(slice(None), *sl)] += tile_out * win[None]


def elapsed_since(t0: float) -> float:
    """Seconds since ``t0`` (``time.perf_counter``), rounded for provenance."""
    return round(time.perf_counter() - t0, 3)
