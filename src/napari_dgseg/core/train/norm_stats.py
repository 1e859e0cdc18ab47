"""Normalisation statistics of a network: inspect, freeze and re-estimate them on target images.

Target-statistics adaptation ("AdaBN": Li, Wang, Shi, Liu & Hou, "Revisiting Batch
Normalization For Practical Domain Adaptation", 2016) replaces the BatchNorm running mean and
variance learned on the source by those of the target images, and changes nothing else. Done
right it needs three things this module takes care of:

1. every BatchNorm layer is visited: the statistics are gathered through ``model.infer`` (every
   output branch, e.g. HoVer-Net's NP *and* HV decoders), not ``model.forward`` (NP only); a
   layer that no pass reaches keeps its source statistics instead of being left reset;
2. the statistics are a cumulative average over all target batches (``momentum=None``), not an
   exponential average that forgets the first batches;
3. only normalisation layers run in training mode; dropout and everything else stay in eval.

Networks without running statistics (GroupNorm, InstanceNorm without ``track_running_stats``,
no normalisation) have nothing to re-estimate; :func:`reestimate_batchnorm` then returns the model
unchanged and says so in its report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_dgseg.core.models.base import normalise_input

_BN = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every normalisation layer of ``model`` that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def norm_kind(model: nn.Module) -> str:
    """``batch`` (running statistics), ``group``, ``instance``, ``none`` or ``mixed``."""
    kinds = set()
    for m in model.modules():
        if isinstance(m, _BN):
            kinds.add("batch")
        elif isinstance(m, nn.GroupNorm):
            kinds.add("group")
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            kinds.add("instance")
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in training mode with every BatchNorm in eval mode (running statistics used,
    never updated); the affine weights still receive gradients. Restores the modes on exit."""
    layers = batchnorm_layers(model)
    modes = [m.training for m in layers]
    for m in layers:
        m.eval()
    try:
        yield model
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm of ``model`` in eval mode (call after ``model.train()``)."""
    for m in batchnorm_layers(model):
        m.eval()
    return model


def _tiles(images: Sequence[np.ndarray], size: int | None) -> list[np.ndarray]:
    """Non-overlapping ``size`` crops covering each image (whole images when ``size`` is None)."""
    out = []
    for img in images:
        if size is None:
            out.append(img)
            continue
        h, w = img.shape[:2]
        ys = list(range(0, max(1, h - size + 1), size)) or [0]
        xs = list(range(0, max(1, w - size + 1), size)) or [0]
        for y in ys:
            for x in xs:
                crop = img[y : y + size, x : x + size]
                if crop.shape[:2] == (size, size):
                    out.append(crop)
    return out


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module,
    images: Sequence[np.ndarray],
    input_spec: Mapping[str, Any],
    *,
    size: int | None = 256,
    batch: int = 4,
    device: Any = "cpu",
    cancel: Any = None,
) -> dict[str, Any]:
    """Replace the BatchNorm running statistics of ``model`` (in place) by those of ``images``.

    Parameters
    ----------
    model : nn.Module
        A :class:`~napari_dgseg.core.models.base.SegModel` (its ``infer`` runs every branch).
    images : sequence of (H, W, 3) uint8
        Target images; cut into non-overlapping ``size`` crops (images smaller than ``size`` are
        skipped unless every image is: then they are used whole, cut to a multiple of the
        model's divisor, one per batch).
    input_spec : mapping
        The bundle's input normalisation.
    size : int or None
        Crop side (a multiple of the model's divisor); None uses whole images one at a time.
    batch : int
        Crops per forward pass (any size works: the average is over all crops).
    cancel : threading.Event or callable, optional
        Checked between batches; on cancel the previous statistics are restored and
        :class:`~napari_dgseg.core.errors.CancelledError` is raised.

    Returns
    -------
    dict
        ``layers`` (BatchNorm layers re-estimated), ``crops`` (crops seen), ``norm`` (the
        network's normalisation kind) and ``changed`` (mean absolute shift of the running means
        in units of the old standard deviation).
    """
    from napari_dgseg.core.cancel import check_cancel

    layers = batchnorm_layers(model)
    report: dict[str, Any] = {"norm": norm_kind(model), "layers": len(layers), "crops": 0}
    if not layers:
        report["changed"] = 0.0
        report["note"] = "no BatchNorm running statistics to re-estimate (GroupNorm or no norm)"
        return report
    crops = _tiles(images, size)
    if not crops:  # every image smaller than ``size``: whole images, cut to the model's divisor
        d = int(getattr(model, "divisor", 1))
        crops = [im[: im.shape[0] - im.shape[0] % d, : im.shape[1] - im.shape[1] % d]
                 for im in images if min(im.shape[:2]) >= d]
        batch = 1
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
              m.momentum) for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    try:
        for i in range(0, len(crops), batch):
            check_cancel(cancel, "statistics adaptation cancelled; the model is unchanged")
            arr = np.stack(crops[i : i + batch])
            x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            model.infer(normalise_input(x, input_spec))
    except BaseException:
        for m, (mean, var, n, mom) in zip(layers, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
            m.momentum = mom
        model.train(was_training)
        raise
    shifts = []
    for m, (mean, var, n, mom) in zip(layers, saved, strict=True):
        m.momentum = mom
        if int(m.num_batches_tracked) == 0:  # no pass reached it: keep the source statistics
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
            continue
        shifts.append(float(((m.running_mean - mean).abs() / var.clamp_min(1e-8).sqrt()).mean()))
    model.train(was_training)
    report["crops"] = len(crops)
    report["changed"] = round(float(np.mean(shifts)), 4) if shifts else 0.0
    report["untouched"] = len(layers) - len(shifts)
    return report


class DomainStatistics:
    """Several sets of BatchNorm running statistics for one network, swapped in per pass.

    Domain-specific BatchNorm (Chang, You, Seo, Kwak & Han, "Domain-Specific Batch Normalization
    for Unsupervised Domain Adaptation", CVPR 2019) normalises each domain with its own
    statistics while the convolutions are shared. Here the statistics are fixed sets (e.g. the
    parent's and those :func:`reestimate_batchnorm` measured on the target images) and the layers
    stay in eval mode, so nothing updates them; :meth:`use` makes one set current.

    :meth:`use` *rebinds* the layers' buffers to the stored tensors instead of copying into them,
    so a forward pass already recorded for backpropagation keeps the statistics it ran with (an
    in-place copy would invalidate its saved tensors). Loading a state dict into the network
    copies into whichever set is current; capture again after that if the sets are still needed.
    """

    def __init__(self, model: nn.Module):
        self.layers = batchnorm_layers(model)
        self.sets: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.current: str | None = None

    def capture(self, name: str, source: nn.Module | None = None) -> None:
        """Store a copy of the running statistics of ``source`` (default: the network) as ``name``.

        Raises
        ------
        ValueError
            If ``source`` does not have the network's BatchNorm layers (same number, same sizes).
        """
        layers = self.layers if source is None else batchnorm_layers(source)
        if len(layers) != len(self.layers) or any(
            a.running_mean.shape != b.running_mean.shape
            for a, b in zip(layers, self.layers, strict=True)
        ):
            raise ValueError(f"statistics {name!r} come from a network with other BatchNorm layers")
        device = self.layers[0].running_mean.device if self.layers else None
        self.sets[name] = [(m.running_mean.detach().clone().to(device),
                            m.running_var.detach().clone().to(device),
                            m.num_batches_tracked.detach().clone().to(device)) for m in layers]

    def use(self, name: str) -> None:
        """Make the statistics stored as ``name`` the ones every BatchNorm layer normalises with."""
        if self.current == name:
            return
        for m, (mean, var, count) in zip(self.layers, self.sets[name], strict=True):
            m.running_mean = mean
            m.running_var = var
            m.num_batches_tracked = count
        self.current = name
