"""The domain-gap map: a D1 fitted to a frozen model, its source replay set against one image.

For a bundle without D1 (any model trained by this project carries a labelled replay set of
source crops, ``replay.safetensors``), :func:`domain_gap_steps`

1. computes the model's feature map (the one ``Family.features_and_infer`` returns, the map MaNi
   and local alignment use) of every replay crop and, tiled and blended like any dense output, of
   the whole image at the model's scale; the network is frozen (eval mode, no gradients);
2. fits Mind the Gap's pixel-wise discriminator D1 (Su et al., 2023; :mod:`.discriminators`)
   for ``steps`` Adam steps on random windows: replay features are *source* (1), the image's
   features *target* (0);
3. returns the local feature mask ``tanh(|D1(f)|)`` ``(H, W)`` in ``[0, 1)`` on the image grid,
   smoothed with a Gaussian of :data:`DEFAULT_SMOOTH` pixels.

Where the image looks like the source to the model, its features also occur in the replay set and
D1 cannot tell them apart (mask near 0); where the image holds something the source never
showed (another stain, tissue, artefact), D1 is sure (mask near 1). The map shows where the
model's features are out of their training domain, not whether its mask is wrong.

Colour normalisation is not applied (the gap of the image as it is). ``benchmarks/domain_gap_map.py``
measures the cost (``docs/local-masks.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_dgseg.core.cancel import check_cancel
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import ImageAdapter
from napari_dgseg.core.local_align.bundled import check_family
from napari_dgseg.core.local_align.discriminators import (
    D1Config,
    PixelDiscriminator,
    discriminator_loss,
    domain_accuracy,
    local_feature_mask,
)
from napari_dgseg.core.models.base import normalise_input

#: Defaults of the fit: Adam steps, window side, windows per domain per step, learning rate.
DEFAULT_STEPS = 300
DEFAULT_WINDOW = 8
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
#: Rows of the feature map D1 reads at once when it draws the map (bounded memory).
BAND_ROWS = 256
#: Gaussian sigma (model-grid pixels) the drawn map is smoothed with: per-pixel D1 outputs follow
#: every nucleus border; the paper's masks come from 1/8-resolution features and are regional.
DEFAULT_SMOOTH = 4.0


@dataclass
class GapStep:
    """One step of the fit: ``step`` of ``steps``, ``logs`` (``loss``, ``accuracy``), ``stage``."""

    step: int
    steps: int
    logs: dict[str, float]
    stage: str = "fit"


@dataclass
class DomainGapMap:
    """Result of :func:`domain_gap_steps`.

    Attributes
    ----------
    local_mask : np.ndarray
        ``(H, W)`` float32 in ``[0, 1)``: ``tanh(|D1(f)|)`` on the image grid.
    d1 : PixelDiscriminator
        The fitted discriminator (can be stored with :func:`~.bundled.attach_d1`).
    provenance : dict
        Model, steps, windows, final accuracy, timings.
    """

    local_mask: np.ndarray
    d1: PixelDiscriminator
    provenance: dict = field(default_factory=dict)


class _FeatureModel(nn.Module):
    """``infer`` returns only the family's feature map (tiled inference blends it)."""

    def __init__(self, model: nn.Module, features_and_infer: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self._fi = features_and_infer
        self.divisor = int(model.divisor)
        self.discrete_outputs: tuple[str, ...] = ()

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, maps = self._fi(self.model, x, None)
        return {"features": feats, "logits": maps["logits"]}


def replay_features(bundle: Any, *, device: Any = "cpu", batch: int = 4,
                    cancel: Any = None, with_classes: bool = False) -> Any:
    """Features ``(N, F, s, s)`` (CPU float32) of the bundle's replay crops, network frozen.

    With ``with_classes`` also the model's predicted class per pixel ``(N, s, s)`` (int64).

    Raises
    ------
    InputError
        The bundle carries no replay set.
    """
    replay = bundle.extra("replay")
    if not replay or "images" not in replay:
        raise InputError(
            f"model {bundle.name!r} carries no source replay set, so its source domain is "
            "unknown here; the domain-gap map needs a model trained by napari-dgseg (with "
            "replay.safetensors)"
        )
    model = bundle.model.to(device).eval()
    fi = bundle.family.features_and_infer
    images = replay["images"]
    out, classes = [], []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch):
            check_cancel(cancel)
            rgb = images[i : i + batch].permute(0, 3, 1, 2).float().div(255.0).to(device)
            feats, maps = fi(model, normalise_input(rgb, bundle.input_spec), None)
            out.append(feats.float().cpu())
            classes.append(maps["logits"].argmax(dim=1).cpu())
    if with_classes:
        return torch.cat(out), torch.cat(classes)
    return torch.cat(out)


def _windows(feats: torch.Tensor, n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ``side x side`` windows of ``(N, F, H, W)`` features -> ``(n, F, side, side)``."""
    num, _, h, w = feats.shape
    side = min(side, h, w)
    idx = torch.randint(0, num, (n,), generator=gen)
    ys = torch.randint(0, h - side + 1, (n,), generator=gen)
    xs = torch.randint(0, w - side + 1, (n,), generator=gen)
    return torch.stack([feats[int(i), :, int(y) : int(y) + side, int(x) : int(x) + side]
                        for i, y, x in zip(idx, ys, xs, strict=True)])


def _class_pixels(classes: torch.Tensor, keep: list[int]) -> dict[int, torch.Tensor]:
    """Flat pixel indices of every class in ``keep`` (``classes`` ``(N, H, W)``)."""
    flat = classes.reshape(-1)
    return {k: torch.nonzero(flat == k).reshape(-1) for k in keep}


def _pixel_rows(feats: torch.Tensor) -> torch.Tensor:
    """``(N, F, H, W)`` -> ``(N * H * W, F)`` feature vectors."""
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])


def fit_d1_steps(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    window: int = DEFAULT_WINDOW,
    batch: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    hidden: int = 32,
    kernel: int = 1,
    seed: int = 0,
    device: Any = "cpu",
    cancel: Any = None,
    source_classes: torch.Tensor | None = None,
    target_classes: torch.Tensor | None = None,
) -> Generator[GapStep, None, PixelDiscriminator]:
    """Fit D1 on frozen features: ``source`` ``(N, F, h, w)`` -> 1, ``target`` ``(M, F, H, W)`` -> 0.

    Every step draws ``batch`` windows of ``window x window`` pixels per domain. With
    ``source_classes`` ``(N, h, w)`` and ``target_classes`` ``(M, H, W)`` (the model's predicted
    class per pixel) and ``kernel=1``, the same number of pixels is drawn *per class* from each
    domain instead, so that D1 cannot tell the domains apart by how much nucleus or vessel an
    image holds (a label shift), only by how the features of each class differ. Yields a
    :class:`GapStep` per Adam step (``loss``, a balanced ``accuracy`` every 10 steps); returns D1
    (eval mode, on ``device``).
    """
    if steps < 1 or window < 4 or batch < 1:
        raise InputError(f"steps ({steps}) and batch ({batch}) must be >= 1, window ({window}) >= 4")
    if source.shape[1] != target.shape[1]:
        raise InputError(f"source features have {source.shape[1]} channels, target "
                         f"{target.shape[1]}; they must come from the same model")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d1 = PixelDiscriminator(D1Config(int(source.shape[1]), int(hidden), int(kernel)))
    d1 = d1.to(device).train()
    opt = torch.optim.Adam(d1.parameters(), lr=lr, betas=(0.9, 0.99))
    strata = None
    if source_classes is not None and target_classes is not None and kernel == 1:
        shared = sorted(set(source_classes.unique().tolist()) & set(target_classes.unique().tolist()))
        if shared:
            strata = (_pixel_rows(source), _class_pixels(source_classes, shared),
                      _pixel_rows(target), _class_pixels(target_classes, shared))
    per_step = batch * window * window
    # The fit is thousands of tiny operations: one intra-op thread is faster than several (on a
    # busy 2-core machine, 2 threads made it 15x slower: benchmarks/domain_gap_map.py). Restored
    # when the fit ends, fails or is cancelled.
    with one_thread():
        d1 = yield from _fit_loop(d1, opt, source, target, strata, steps, window, batch, per_step,
                                  gen, device, cancel)
    return d1.eval()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch with one intra-op thread inside the block (restored after, also on errors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_loop(d1: nn.Module, opt: Any, source: torch.Tensor, target: torch.Tensor, strata: Any,
              steps: int, window: int, batch: int, per_step: int, gen: torch.Generator,
              device: Any, cancel: Any) -> Generator[GapStep, None, Any]:
    """The Adam steps of :func:`fit_d1_steps`."""
    for step in range(steps):
        check_cancel(cancel)
        if strata is not None:
            fs, ft = _stratified(strata, per_step, gen)
            fs, ft = fs.to(device), ft.to(device)
        else:
            fs = _windows(source, batch, window, gen).to(device)
            ft = _windows(target, batch, window, gen).to(device)
        loss = discriminator_loss(d1, fs, ft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc = domain_accuracy(d1(fs), d1(ft)) if (step + 1) % 10 == 0 or step + 1 == steps else None
        logs = {"loss": float(loss.detach())}
        if acc is not None:
            logs["accuracy"] = acc
        yield GapStep(step + 1, steps, logs)
    return d1


def _stratified(strata: tuple, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` source and ``n`` target pixels ``(n, F, 1, 1)``, the same count from every class."""
    src_rows, src_idx, tgt_rows, tgt_idx = strata
    k = len(src_idx)
    picks = []
    for rows, idx in ((src_rows, src_idx), (tgt_rows, tgt_idx)):
        parts = []
        for j, cls in enumerate(sorted(idx)):
            m = n // k + (1 if j < n % k else 0)
            pool = idx[cls]
            parts.append(rows[pool[torch.randint(0, pool.numel(), (m,), generator=gen)]])
        picks.append(torch.cat(parts)[:, :, None, None])
    return picks[0], picks[1]


def mask_of_features(d1: nn.Module, feats: torch.Tensor, *, device: Any = "cpu",
                     cancel: Any = None) -> np.ndarray:
    """``tanh(|D1(f)|)`` ``(H, W)`` float32 of one ``(F, H, W)`` feature map, in row bands."""
    _, h, _ = feats.shape
    halo = 2  # D1's 3x3 convolutions (kernel 3) see 2 pixels around
    out = np.empty(feats.shape[1:], np.float32)
    with torch.inference_mode():
        for y0 in range(0, h, BAND_ROWS):
            check_cancel(cancel)
            y1 = min(h, y0 + BAND_ROWS)
            a, b = max(0, y0 - halo), min(h, y1 + halo)
            m = torch.tanh(local_feature_mask(d1, feats[None, :, a:b].to(device)))[0, 0]
            out[y0:y1] = m[y0 - a : y0 - a + (y1 - y0)].float().cpu().numpy()
    return out


def domain_gap_steps(
    bundle: Any,
    image: Any,
    *,
    steps: int = DEFAULT_STEPS,
    window: int = DEFAULT_WINDOW,
    batch: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    hidden: int = 32,
    seed: int = 0,
    device: str = "auto",
    tile: int | None = None,
    cancel: Any = None,
    rescale: str = "auto",
    scale: float | None = None,
    mpp: float | None = None,
    object_size: float | None = None,
    pixel_size_um: Any = None,
    memory_budget: int | None = None,
    tile_progress: Callable[[int, int], Any] | None = None,
    smooth: float = DEFAULT_SMOOTH,
) -> Generator[GapStep, None, DomainGapMap]:
    """Generator form of :func:`domain_gap_map`: yields progress, returns the :class:`DomainGapMap`.

    Stages (``GapStep.stage``): ``"features"`` (once, tiles done of all, after the feature pass,
    which reports its tiles live to ``tile_progress(done, total)``), ``"fit"`` (every D1 step),
    ``"map"`` (once, before the map is drawn).
    """
    from napari_dgseg.core.limits import check_memory
    from napari_dgseg.core.predict import DEFAULT_OVERLAP, DEFAULT_TILE, run_tiled
    from napari_dgseg.core.scale_inference import back_to_image, plan_scale

    t0 = time.perf_counter()
    family = bundle.family
    if getattr(family, "segment_image", None) is not None:
        raise InputError(f"{bundle.name!r} is a classical baseline without a network; the "
                         "domain-gap map needs a learned model")
    check_family(family)
    dev = select_device(device)
    adapter = ImageAdapter.from_array(image if hasattr(image, "shape") else np.asarray(image))
    decision, model_input = plan_scale(bundle.manifest, adapter, rescale=rescale, scale=scale,
                                       mpp=mpp, object_size=object_size,
                                       pixel_size_um=pixel_size_um)
    gh, gw = model_input.height, model_input.width
    # One intra-op thread throughout: on a busy 2-core machine two threads made the map 6x
    # slower (80 s against 14 s, benchmarks/domain_gap_map.py); restored afterwards.
    with one_thread():
        src, src_classes = replay_features(bundle, device=dev, cancel=cancel, with_classes=True)
        channels = int(src.shape[1])
        # blended features and logits + their copies, the pixel rows D1 samples, the mask (float32)
        k = max(2, len(bundle.class_names))
        check_memory(gh * gw * (12 * channels + 8 * k + 24), f"the domain-gap map of the {gh} x {gw} image",
                     budget=memory_budget)
        fmodel = _FeatureModel(bundle.model, family.features_and_infer)
        t_feat = time.perf_counter()
        progress_rows: list[tuple[int, int]] = [(0, 1)]

        def tiles(done: int, total: int) -> None:
            progress_rows.append((done, total))
            if tile_progress is not None:
                tile_progress(done, total)

        maps = run_tiled(fmodel, model_input, input_spec=bundle.input_spec, tile=tile or DEFAULT_TILE,
                         overlap=DEFAULT_OVERLAP, device=dev, batch=2, cancel=cancel, progress=tiles)
        done, total = progress_rows[-1]
        yield GapStep(done, total, {}, stage="features")
        tgt = torch.from_numpy(maps.pop("features"))[None]
        tgt_classes = torch.from_numpy(maps.pop("logits").argmax(axis=0))[None]
        seconds_features = time.perf_counter() - t_feat
        t_fit = time.perf_counter()
        d1 = yield from fit_d1_steps(src, tgt, steps=steps, window=window, batch=batch, lr=lr,
                                     hidden=hidden, seed=seed, device=dev, cancel=cancel,
                                     source_classes=src_classes, target_classes=tgt_classes)
        seconds_fit = time.perf_counter() - t_fit
        yield GapStep(steps, steps, {}, stage="map")
        with one_thread(), torch.no_grad():  # small operations: see fit_d1_steps
            gen = torch.Generator().manual_seed(seed + 1)
            shared = sorted(set(src_classes.unique().tolist()) & set(tgt_classes.unique().tolist()))
            if shared and d1.config.kernel == 1:  # per class, as fitted
                strata = (_pixel_rows(src), _class_pixels(src_classes, shared), _pixel_rows(tgt),
                          _class_pixels(tgt_classes, shared))
                fs, ft = _stratified(strata, 4 * batch * window * window, gen)
            else:
                fs, ft = _windows(src, 4 * batch, window, gen), _windows(tgt, 4 * batch, window, gen)
            acc = domain_accuracy(d1(fs.to(dev)), d1(ft.to(dev)))
            # the source's own level: how the replay crops themselves score (read the map against it)
            levels = [torch.tanh(local_feature_mask(d1, src[i : i + 1].to(dev))).mean()
                      for i in range(src.shape[0])]
            source_level = float(torch.stack(levels).mean())
            mask = mask_of_features(d1, tgt[0], device=dev, cancel=cancel)
        if smooth > 0:
            from scipy.ndimage import gaussian_filter

            mask = gaussian_filter(mask, sigma=float(smooth), mode="reflect").astype(np.float32)
        mask = back_to_image({"m": mask}, (gh, gw), (adapter.height, adapter.width), False)["m"]
        provenance = {
            "model": bundle.name,
            "model_sha256": bundle.sha256,
            "method": "domain-gap map: Mind the Gap's pixel-wise D1 (Su et al., 2023) fitted to the "
                      "frozen model, replay set (source) vs this image (target)",
            "mask": "tanh(|D1(f)|) in [0, 1): 0 = looks like the source",
            "smooth_sigma_px": float(smooth),
            "steps": steps, "window": window, "batch": f"{batch} + {batch}", "lr": lr,
            "d1": d1.config.as_dict(), "seed": seed,
            "replay_crops": int(src.shape[0]),
            "accuracy": round(acc, 4),
            "source_mask_mean": round(source_level, 4),
            "mask_mean": round(float(np.mean(mask)), 4),
            "scale": decision.as_dict() | {"model_grid_shape": [gh, gw]},
            "dcin": "none (the image as it is)",
            "device": str(dev),
            "seconds": {"features": round(seconds_features, 2), "fit": round(seconds_fit, 2),
                        "total": round(time.perf_counter() - t0, 2)},
        }
        return DomainGapMap(np.asarray(mask, np.float32), d1.cpu(), provenance)


def domain_gap_map(bundle: Any, image: Any, *, progress: Callable[[GapStep], Any] | None = None,
                   **kwargs: Any) -> DomainGapMap:
    """Fit D1 to ``bundle``'s frozen features (replay set vs ``image``) and draw the local mask.

    Parameters
    ----------
    bundle : Bundle
        A learned model with a replay set (any family whose ``features_and_infer`` is set).
    image : array-like
        ``(H, W[, C])`` image, any dtype.
    progress : callable, optional
        Called with every :class:`GapStep`.
    **kwargs
        ``steps`` (300), ``window`` (8), ``batch`` (64 + 64 windows), ``lr`` (1e-3),
        ``hidden`` (32),
        ``seed``, ``device``, ``tile``, ``cancel``, the model's scale as in
        :meth:`Bundle.predict` (``rescale``, ``scale``, ``mpp``, ``object_size``,
        ``pixel_size_um``), ``memory_budget``, ``tile_progress``, ``smooth`` (Gaussian sigma
        of the drawn map in model-grid pixels, :data:`DEFAULT_SMOOTH`; 0: none).

    Returns
    -------
    DomainGapMap
    """
    from napari_dgseg.core.steps import run_steps

    return run_steps(domain_gap_steps(bundle, image, **kwargs), progress)
