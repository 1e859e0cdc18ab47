"""Label-free adaptation of a trained bundle to a new domain with MaNi (Sharma, Syed & Brown, "MaNi: Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023).

Each iteration takes ``batch`` labelled source crops and ``batch`` unlabelled target crops,
pairs them at random, and minimises ``Seg(source) + mi_weight * L_MI`` where ``L_MI`` is the
Jensen-Shannon mutual-information loss of :mod:`napari_dgseg.core.losses.mani` between the
pooled foreground/background features of source (ground truth masks) and target (the model's own
prediction, threshold 0.5). The first ``warmup`` fraction of the iterations uses the source
segmentation loss only. Adam, constant learning rate (1e-4 by default, as in the paper).

BatchNorm (issue 11): by default the network's BatchNorm layers stay in eval mode while MaNi
trains (``norm="frozen"``): every batch is normalised by the parent's running statistics, which
never move, and source and target go through the network in separate passes. Training mode on
the concatenated source + target batch (``norm="mixed"``, the behaviour before) normalised the
supervised loss with mixed-domain batch statistics and dragged the running statistics towards a
mixture that fits neither domain; ``benchmarks/norm_ablation.py`` measures the difference.
``norm="dual"`` keeps BatchNorm in eval mode with domain-specific statistics (DSBN: Chang, You,
Seo, Kwak & Han, "Domain-Specific Batch Normalization for Unsupervised Domain Adaptation", CVPR
2019): the target statistics are re-estimated on the training targets before MaNi (as
``method="stats"`` does, on a copy), source passes run with the parent's statistics, target
passes and the scored checkpoints with the target ones, and the returned model carries the target
statistics (checkpoint 0 stays the parent, with its own, so the selection can still return it).

``method="stats"`` is the fast alternative without training: the BatchNorm running statistics
are re-estimated on the target images (:mod:`napari_dgseg.core.train.norm_stats`).

Unlabelled model selection: a quarter of the unlabelled targets (at most 4) is held out; the
parent and a checkpoint every ``min(20, iters // 5)`` iterations are scored on them with the label-free
signals of :mod:`napari_dgseg.core.train.selection`, and (``select=True``, the default) the
best-scoring checkpoint before the first sign of drift is returned (the drift guard,
``selection.GUARD``: certainty or agreement fell below the parent's), which is the parent's
weights when nothing beat it. The signals of every checkpoint, the verdict, a warning and what
the guard did go into ``provenance["selection"]``.

Source data: a labelled folder when given, otherwise the replay set every trained bundle
carries (``bundle.extra("replay")``). Target images may come with corrected labels, which then
join the segmentation loss (as an extra labelled domain) and replace the pseudo-labels.

The parent bundle is never modified: the network is deep-copied, and the result is a new
:class:`Bundle` whose provenance names the parent's sha256, the target files, the iterations
and the loss curves. :func:`adapt_steps` is the generator the napari widget drives (one step per
iteration, optional previews); :func:`adapt` runs it to the end.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.bundle import SUFFIX, WEIGHTS, Bundle, sha256_bytes
from napari_dgseg.core.cancel import is_cancelled
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import CancelledError, InputError
from napari_dgseg.core.family import Family
from napari_dgseg.core.limits import safe_file_stem
from napari_dgseg.core.losses.mani import ManiModule
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.registry import families_supporting
from napari_dgseg.core.scale import SCALE_KEY
from napari_dgseg.core.train.data import CropSampler, infer_task, load_sources
from napari_dgseg.core.train.target_scale import check_target_scale, targets_at_scale

Target = str | Path | np.ndarray
AdaptProgress = Callable[[int, int, dict], Any]


@dataclass
class AdaptStep:
    """One adaptation iteration, as yielded by :func:`adapt_steps`.

    Attributes
    ----------
    iteration : int
        Iterations done (1-based).
    iters : int
        Iterations planned.
    logs : dict
        ``seg`` (source segmentation loss), ``mi`` (MI loss, 0 during warm-up), ``loss``.
    preview : np.ndarray or None
        ``(H, W)`` int32 labels of the preview image predicted by the current model, on the
        iterations where one was requested.
    """

    iteration: int
    iters: int
    logs: dict[str, float]
    preview: np.ndarray | None = None


@dataclass
class AdaptData:
    """Prepared inputs of an adaptation run (see :func:`prepare_data`)."""

    source: list[tuple[str, list[Sample]]]
    targets: list[Sample]
    instance: bool
    num_classes: int
    source_desc: str
    target_names: list[str] = field(default_factory=list)
    target_scale: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs
def replay_samples(bundle: Bundle) -> list[Sample]:
    """The bundle's labelled replay crops as samples.

    Raises
    ------
    InputError
        If the bundle has no replay set; the message asks for a source folder.
    """
    replay = bundle.extra("replay")
    if not replay or "images" not in replay or "labels" not in replay:
        raise InputError(
            f"model {bundle.name!r} carries no labelled source replay set (it was trained or "
            "converted without one), and MaNi needs labelled source data: give a labelled source "
            "folder (images/ + labels/) with --source DIR (widget: 'Source folder')"
        )
    images = replay["images"].numpy()
    labels = replay["labels"].numpy()
    return [
        Sample(images[i], labels[i].astype(np.int32), f"replay/{i}", domain="replay")
        for i in range(images.shape[0])
    ]


def read_targets(targets: Sequence[Target]) -> list[Sample]:
    """Target images from arrays, image files or folders (``DIR`` or ``DIR/images``).

    Returns unlabelled :class:`Sample` records (uint8 RGB); names are file stems or ``target<i>``.
    """
    from napari_dgseg.core.data.datasets import IMAGE_EXTS, read_array, to_rgb_uint8

    if targets is None or len(targets) == 0:
        raise InputError("no target images given; pass target image files or folders (--target)")
    out: list[Sample] = []
    for i, t in enumerate(targets):
        if isinstance(t, (str, Path)):
            p = Path(t)
            if p.is_dir():
                folder = p / "images" if (p / "images").is_dir() else p
                files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS)
                if not files:
                    raise InputError(f"target folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
                for f in files:
                    out.append(
                        Sample(
                            to_rgb_uint8(read_array(f), str(f)),
                            None,
                            f.stem,
                            domain="target",
                            meta={"image_path": str(f)},
                        )
                    )
            elif p.is_file():
                out.append(
                    Sample(
                        to_rgb_uint8(read_array(p), str(p)),
                        None,
                        p.stem,
                        domain="target",
                        meta={"image_path": str(p)},
                    )
                )
            else:
                raise InputError(
                    f"target {p} is neither an image file nor a folder; check the path"
                )
        else:
            arr = np.asarray(t)
            out.append(
                Sample(to_rgb_uint8(arr, f"target {i}"), None, f"target{i}", domain="target")
            )
    return out


def prepare_data(
    bundle: Bundle,
    targets: Sequence[Target],
    *,
    source: str | Path | Sequence[Sample] | None = None,
    target_labels: Sequence[np.ndarray | None] | None = None,
    size: int,
    target_scale: str = "native",
    device: Any = "cpu",
) -> AdaptData:
    """Load source and target data and check them against the crop ``size``.

    ``target_scale="model"`` resamples every target (and its corrected labels) by the factor the
    parent's inference applies to it (:mod:`napari_dgseg.core.train.target_scale`) before the
    crop-size check.
    """
    check_target_scale(target_scale)
    target_samples = read_targets(targets)
    if source is not None:
        domains = load_sources([source])
        task, instance, num_classes = infer_task(domains)
        desc = str(source) if isinstance(source, (str, Path)) else "<in-memory samples>"
    else:
        samples = replay_samples(bundle)
        domains = [("replay", samples)]
        instance = (
            bundle.manifest.get("task") == "nuclei" or bundle.family.target_kind == "instance"
        )
        num_classes = max(2, len(bundle.class_names))
        desc = (
            f"replay set of {bundle.name} ({len(samples)} crops of {samples[0].image.shape[0]} px)"
        )
    if target_labels is not None:
        if len(target_labels) != len(target_samples):
            raise InputError(
                f"target_labels has {len(target_labels)} entries for {len(target_samples)} targets; "
                "give one (or None) per target image"
            )
        for s, lab in zip(target_samples, target_labels, strict=True):
            if lab is None:
                continue
            lab = np.asarray(lab)
            if lab.shape != s.image.shape[:2]:
                raise InputError(
                    f"labels for target {s.name!r} have shape {lab.shape}, the image {s.image.shape[:2]}; "
                    "they must match"
                )
            s.labels = lab.astype(np.int32)
    names = [s.meta.get("image_path", s.name) for s in target_samples]
    target_samples, scale_report = targets_at_scale(bundle, target_samples, mode=target_scale,
                                                    min_side=size, device=device)
    for s in target_samples:
        h, w = s.image.shape[:2]
        if h < size or w < size:
            raise InputError(
                f"target {s.name!r} is {h}x{w} px, smaller than the crop size {size}: use a smaller "
                f"crop size (at most {min(h, w)}, a multiple of the model's divisor) or larger target images"
            )
    labelled = [Sample(s.image, s.labels, s.name, domain="target-labelled")
                for s in target_samples if s.labels is not None]
    if labelled:
        domains = [*domains, ("target-labelled", labelled)]
    return AdaptData(domains, target_samples, bool(instance), int(num_classes), desc, names,
                     scale_report)


# --------------------------------------------------------------------------- model plumbing
def check_adaptable(family: Family) -> None:
    """Refuse, with the families that can, a family that does not declare the ``mani`` capability.

    Raises
    ------
    InputError
        If ``family`` cannot be adapted with MaNi.
    """
    if not family.supports("mani"):
        raise InputError(
            f"the {family.name!r} family exposes no decoder feature map for MaNi adaptation; "
            f"adapt a model of one of these families instead: {families_supporting('mani')}"
        )


#: How BatchNorm behaves while MaNi trains: ``frozen`` (eval mode: the parent's running
#: statistics normalise every batch and are never updated), ``split`` (training mode, source and
#: target batches in separate passes so each is normalised by its own domain's batch statistics,
#: as domain-specific BatchNorm does; the running statistics drift towards both) or ``mixed``
#: (training mode on the concatenated source + target batch: the behaviour before issue 11) or
#: ``dual`` (eval mode, domain-specific statistics: the parent's for source passes, statistics
#: re-estimated on the training targets for target passes, checkpoints and the returned model).
NORM_MODES = ("frozen", "split", "mixed", "dual")
#: How the labelled source (replay) batches are augmented during MaNi: ``training`` repeats the
#: parent's own training augmentation (its recorded ``augment`` recipe and object-size range),
#: ``jitter`` is the older torch stain jitter (:func:`stain_jitter`), ``none`` the crops as stored.
SOURCE_AUGMENTS = ("training", "jitter", "none")
#: Share of the adapted weights in the returned model by default (None: the checkpoint the
#: label-free selection chooses). ``average=a`` returns ``a x last iterate + (1 - a) x parent``,
#: a weight-space average (WiSE-FT, Wortsman et al., "Robust fine-tuning of zero-shot models",
#: CVPR 2022). Averaging at 0.5 won on the benchmark's selection domains and then lost to the
#: selection on the held-out styles (docs/hovernet-mani.md), so it is an option, not the default.
DEFAULT_AVERAGE: float | None = None
#: Scale of the target crops (:data:`~napari_dgseg.core.train.target_scale.TARGET_SCALES`):
#: ``model`` resamples each target as the parent's inference would; ``native`` keeps its pixels.
DEFAULT_TARGET_SCALE = "model"
#: Where the target foreground that MaNi's MI term pools comes from: ``online``, the network's
#: own prediction at the same iteration (Sharma, Syed & Brown 2023, section 2: "we use a
#: segmentation network output from the same iteration as pseudo-labels"; the default), or
#: ``parent``, the frozen parent's prediction on the same crops (a fixed teacher: a mask that
#: grows with the adapted network cannot feed back into the term; docs/hovernet-mani.md).
PSEUDO_LABELS = {
    "online": "the adapted network's own prediction at each iteration (the paper)",
    "parent": "the frozen parent's prediction on the same target crops (fixed teacher)",
}
NORM_DOC = {
    "frozen": "BatchNorm in eval mode, the parent's running statistics kept",
    "split": "BatchNorm in training mode, separate source and target passes",
    "mixed": "BatchNorm in training mode on the concatenated source + target batch",
    "dual": "BatchNorm in eval mode with domain-specific statistics (DSBN, Chang et al., CVPR "
            "2019): the parent's for source passes, re-estimated on the training targets for "
            "target passes and the returned model",
}


def _train_mode(model: torch.nn.Module, norm: str) -> None:
    from napari_dgseg.core.train.norm_stats import freeze_batchnorm

    model.train()
    if norm in ("frozen", "dual"):
        freeze_batchnorm(model)


def _domain_statistics(bundle: Bundle, model: torch.nn.Module, images: Sequence[np.ndarray],
                       size: int, device: Any, cancel: Any) -> tuple[Any, dict[str, Any]]:
    """``norm="dual"``: the parent's (``source``) and the target (``target``) BatchNorm statistics.

    The target statistics are re-estimated on ``images`` (the training targets) with the function
    ``method="stats"`` uses, on a copy of ``model``; ``model`` is left with the source statistics.
    """
    from napari_dgseg.core.train.norm_stats import (
        DomainStatistics,
        batchnorm_layers,
        norm_kind,
        reestimate_batchnorm,
    )

    if not batchnorm_layers(model):
        raise InputError(
            f"model {bundle.name!r} has no BatchNorm running statistics (its normalisation is "
            f"{norm_kind(model)!r}), so domain-specific statistics cannot be used; adapt it with "
            "--norm frozen (default)"
        )
    twin = copy.deepcopy(model)
    report = reestimate_batchnorm(twin, images, bundle.input_spec, size=size, device=device,
                                  cancel=cancel)
    stats = DomainStatistics(model)
    stats.capture("source")
    stats.capture("target", twin)
    stats.use("source")
    return stats, report


def stain_jitter(rgb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random stain strength, tint and brightness of ``(B, 3, H, W)`` RGB in [0, 1] (per image).

    In optical density ``OD = -ln(rgb)`` (Beer-Lambert), every image's OD is scaled by a global
    stain strength in [0.5, 1.6] and a per-channel factor in [0.85, 1.15] (tint), then its
    brightness by [0.9, 1.1]: the pale, dark and tinted versions of the source a new scanner or
    stain batch produces. Applied to the labelled source batches during adaptation, so that the
    continued supervised training does not specialise the model on the source's one stain.
    """
    b = rgb.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        r = torch.rand(b, *shape, generator=generator)
        return (lo + (hi - lo) * r).to(rgb.device, rgb.dtype)

    od = -torch.log(rgb.clamp_min(1.0 / 255.0))
    od = od * u(0.5, 1.6, 1, 1, 1) * u(0.85, 1.15, 3, 1, 1)
    return (torch.exp(-od) * u(0.9, 1.1, 1, 1, 1)).clamp(0.0, 1.0)


def training_recipe(bundle: Bundle) -> tuple[str, tuple[float, float] | None]:
    """The parent's training augmentation: ``(augment, scale_range)`` from its provenance.

    A bundle trained by ``dgseg train`` records ``augment`` and ``scale_range``; an adapted bundle
    carries its parent's under ``training_augment``. Older bundles record neither (``none``).
    """
    prov = bundle.provenance or {}
    rec = prov.get("training_augment") or prov
    augment = rec.get("augment") or "none"
    rng = rec.get("scale_range")
    scale_range = (float(rng[0]), float(rng[1])) if rng else None
    return str(augment), scale_range


def source_recipe(bundle: Bundle, source_augment: str | bool) -> tuple[str, tuple[float, float] | None, str]:
    """Sampler augmentation, object-size range and a description for ``source_augment``."""
    if source_augment is True:
        source_augment = "jitter"
    elif source_augment is False:
        source_augment = "none"
    if source_augment not in SOURCE_AUGMENTS:
        raise InputError(f"unknown source augmentation {source_augment!r}; valid: "
                         f"{', '.join(SOURCE_AUGMENTS)}")
    if source_augment == "training":
        augment, scale_range = training_recipe(bundle)
        rng = f", object size x{scale_range[0]:g}-{scale_range[1]:g}" if scale_range else ""
        return augment, scale_range, f"training: the parent's own augmentation ({augment}{rng})"
    if source_augment == "jitter":
        return "none", None, "jitter: stain jitter (OD strength 0.5-1.6, tint 0.85-1.15, brightness 0.9-1.1)"
    return "none", None, "none: replay crops as stored (flips and rotations only)"


def weight_average(adapted: Mapping[str, torch.Tensor], parent: Mapping[str, torch.Tensor],
                   share: float) -> dict[str, torch.Tensor]:
    """``share * adapted + (1 - share) * parent`` for every floating-point entry (integer
    entries, such as BatchNorm's batch counters, stay the adapted model's)."""
    out = {}
    for key, value in adapted.items():
        if value.is_floating_point() and key in parent:
            out[key] = share * value + (1.0 - share) * parent[key].to(value.device, value.dtype)
        else:
            out[key] = value
    return out


def adapted_parameters(fam: Family, model: torch.nn.Module, freeze_encoder: bool) -> list:
    """The parameters MaNi trains: the family's trainable ones, less the encoder's when frozen.

    MaNi's instance-segmentation schedule (Sharma, Syed & Brown, 2023, section 3) first trains
    the decoders with the encoder frozen; a network without an ``encoder`` module cannot.
    """
    params = list(fam.trainable_parameters(model))
    if not freeze_encoder:
        return params
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise InputError(f"the {fam.name!r} family has no separate encoder to freeze; adapt it "
                         "without freezing the encoder")
    frozen = {id(q) for q in encoder.parameters()}
    return [q for q in params if id(q) not in frozen]


def _supervised_loss(fam: Family, model: torch.nn.Module, outputs: dict, batch: dict,
                     state: dict) -> tuple[torch.Tensor, dict]:
    """The family's supervised loss; a family that cannot train from its saved form says so."""
    try:
        return fam.loss_from_outputs(model, outputs, batch, state)
    except InputError as exc:
        raise InputError(
            f"the {fam.name!r} family cannot be adapted with MaNi from a saved model ({exc}); "
            "use the statistics method instead (dgseg adapt --method stats; widget: "
            "'Statistics only')"
        ) from exc


def _is_set(cancel: Any) -> bool:
    return is_cancelled(cancel)


def default_crop_size(bundle: Bundle, source_given: bool, requested: int | None) -> int:
    """Crop side: ``requested`` or 256, no larger than the replay crops, a multiple of the divisor."""
    divisor = int(bundle.model.divisor)
    size = requested if requested is not None else 256
    if requested is None and not source_given:
        replay = bundle.extra("replay")
        if replay is not None and "images" in replay:
            size = min(size, int(replay["images"].shape[1]))
    if size < 32 or size % divisor:
        raise InputError(
            f"crop size {size} must be >= 32 and a multiple of {divisor} for this model"
        )
    return size


# --------------------------------------------------------------------------- the loop
def adapt_steps(
    bundle: Bundle,
    targets: Sequence[Target],
    *,
    source: str | Path | Sequence[Sample] | None = None,
    target_labels: Sequence[np.ndarray | None] | None = None,
    iters: int = 200,
    lr: float = 1e-4,
    seed: int = 0,
    batch: int = 4,
    size: int | None = None,
    warmup: float = 0.1,
    mi_weight: float = 1.0,
    device: str = "auto",
    cancel: Any = None,
    stop_on_cancel: bool = False,
    preview: np.ndarray | None = None,
    preview_every: int = 0,
    name: str | None = None,
    command: str | None = None,
    method: str = "mani",
    norm: str = "frozen",
    select: bool = True,
    holdout: int | None = None,
    select_every: int | None = None,
    checkpoint_hook: Callable[[int, torch.nn.Module], Any] | None = None,
    source_augment: str | bool = "training",
    source_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    local_alignment: bool = False,
    output_discriminator: bool | None = None,
    d1_weight: float = 0.01,
    d2_weight: float = 0.01,
    freeze_encoder: bool = False,
    pseudo_threshold: float = 0.5,
    average: float | None = DEFAULT_AVERAGE,
    pseudo_labels: str = "online",
    target_scale: str = DEFAULT_TARGET_SCALE,
) -> Generator[AdaptStep, None, Bundle]:
    """Generator form of :func:`adapt`: yields an :class:`AdaptStep` per iteration, returns the bundle.

    With ``stop_on_cancel`` a set ``cancel`` ends the run early and the bundle of the iterations
    done so far is returned (its provenance says so); otherwise :class:`CancelledError` is raised.
    ``preview`` ``(H, W, 3)`` uint8 is segmented every ``preview_every`` iterations (and at the end).
    ``method="stats"`` re-estimates the BatchNorm statistics on the target images instead (one
    step, no training). The label-free selection signals of :mod:`napari_dgseg.core.train.selection`
    are computed on held-out target images for the parent and every ``select_every`` iterations;
    steps where they were computed carry them in ``logs`` (``signal``, ``agreement``,
    ``certainty``). ``checkpoint_hook(iteration, model)`` is called (model in eval mode) after
    every scoring, e.g. by the benchmark to measure each checkpoint against labels.
    ``local_alignment`` / ``output_discriminator`` add Mind the Gap's D1 / D2
    (:mod:`napari_dgseg.core.local_align`; see :func:`adapt`).
    """
    if method not in METHODS:
        raise InputError(f"unknown adaptation method {method!r}; valid: {', '.join(METHODS)}")
    if norm not in NORM_MODES:
        raise InputError(f"unknown norm mode {norm!r}; valid: {', '.join(NORM_MODES)}")
    if iters < 1:
        raise InputError(f"iters must be >= 1 (got {iters})")
    if batch < 1:
        raise InputError(f"batch must be >= 1 (got {batch})")
    if not (lr > 0):
        raise InputError(f"learning rate must be > 0 (got {lr})")
    if not 0.0 <= warmup < 1.0:
        raise InputError(f"warmup must be a fraction in [0, 1) (got {warmup})")
    if average is not None and not 0.0 < average <= 1.0:
        raise InputError(f"average must be in (0, 1] (got {average}); 1 keeps the adapted weights")
    if not 0.0 < pseudo_threshold < 1.0:
        raise InputError(f"pseudo-label threshold must be in (0, 1) (got {pseudo_threshold})")
    if pseudo_labels not in PSEUDO_LABELS:
        raise InputError(f"unknown pseudo-label source {pseudo_labels!r}; valid: "
                         f"{', '.join(PSEUDO_LABELS)}")
    check_target_scale(target_scale)
    fam = bundle.family
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dev = select_device(device)
    spec = bundle.input_spec
    if method == "stats" and (local_alignment or output_discriminator):
        raise InputError("local alignment trains discriminators against the network; it needs "
                         "the MaNi method (--method mani), not statistics only")
    if method == "stats":
        return (yield from _stats_steps(bundle, targets, holdout=holdout, select=select,
                                        device=dev, cancel=cancel, name=name, command=command,
                                        t0=t0, size=size, hook=checkpoint_hook,
                                        target_scale=target_scale))
    check_adaptable(fam)
    src_augment, src_scale, src_desc = source_recipe(bundle, source_augment)
    crop = default_crop_size(bundle, source is not None, size)
    data = prepare_data(bundle, targets, source=source, target_labels=target_labels, size=crop,
                        target_scale=target_scale, device=dev)
    train_targets, held, held_out = split_holdout(data.targets, holdout)
    model = copy.deepcopy(bundle.model).to(dev)
    _train_mode(model, norm)
    # pseudo_labels="parent": the target foreground comes from the parent, frozen (never trained,
    # eval mode, its own statistics), so the mask the MI term pools cannot grow with the model
    teacher = copy.deepcopy(bundle.model).to(dev).eval() if pseudo_labels == "parent" else None
    domains, dual_report = (_domain_statistics(bundle, model, [s.image for s in train_targets],
                                               crop, dev, cancel)
                            if norm == "dual" else (None, None))

    def use(name: str) -> None:  # norm="dual": the statistics of the domain the next pass sees
        if domains is not None:
            domains.use(name)

    probe = normalise_input(torch.full((1, 3, crop, crop), 0.8, device=dev), spec)
    with torch.no_grad():
        model.eval()
        feats, _ = fam.features_and_outputs(model, probe)
        _train_mode(model, norm)
    mani = ManiModule(int(feats.shape[1]), threshold=pseudo_threshold).to(dev).train()
    aligner = _local_aligner(fam, int(feats.shape[1]), data.num_classes, local_alignment,
                             output_discriminator, d1_weight, d2_weight, norm, dev)
    # what the adapted bundle will predict with (with D1: the reweighted target flow)
    scored = model if aligner is None else aligner.scored_model(model)
    params = adapted_parameters(fam, model, freeze_encoder)
    optimizer = torch.optim.Adam([*params, *mani.parameters()], lr=lr)
    src_sampler = CropSampler(
        data.source, size=crop, num_classes=data.num_classes, instance=data.instance, seed=seed,
        augment=src_augment, scale_range=src_scale,
    )
    tgt_pool = [
        Sample(
            s.image,
            s.labels if s.labels is not None else np.full(s.image.shape[:2], -1, np.int32),
            s.name,
            domain="target",
        )
        for s in train_targets
    ]
    tgt_sampler = CropSampler(
        [("target", tgt_pool)],
        size=crop,
        num_classes=data.num_classes,
        instance=data.instance,
        seed=seed + 1,
    )
    state = {
        "iters": iters,
        "generator": torch.Generator().manual_seed(seed),
        "domains": len(data.source),
        "cqg": False,
        "input_spec": spec,
    }
    n_warm = int(np.ceil(warmup * iters))
    every = select_every if select_every else max(1, min(SELECT_EVERY, iters // 5))
    judge = _Judge(bundle, [_score_view(s.image) for s in held], dev, held_out, checkpoint_hook,
                   [s.image for s in train_targets])
    judge.score(scored, 0)  # the parent, with its own statistics
    _train_mode(model, norm)
    history: list[dict[str, float]] = []
    stopped = False
    for it in range(iters):
        if _is_set(cancel):
            if not stop_on_cancel:
                raise CancelledError("adaptation cancelled by the user; no model was saved")
            stopped = True
            break
        state["iteration"] = it
        sb = {k: v.to(dev) for k, v in src_sampler.batch(batch).items()}
        if src_desc.startswith("jitter"):
            sb["image"] = stain_jitter(sb["image"], state["generator"])
        if source_transform is not None:  # e.g. target-styled replay (core/style, Mind the Gap)
            sb["image"] = source_transform(sb["image"])
        xs = normalise_input(sb["image"], spec)
        use("source")
        if it < n_warm:
            _, out_s = fam.features_and_outputs(model, xs)
            seg, _ = _supervised_loss(fam, model, out_s, sb, state)
            mi = torch.zeros((), device=dev)
            mi_logs = {"mi": 0.0}
        else:
            tb = {k: v.to(dev) for k, v in tgt_sampler.batch(batch).items()}
            xt = normalise_input(tb["image"], spec)
            if norm == "mixed":
                feats, out = fam.features_and_outputs(model, torch.cat([xs, xt]))
                out_s = {k: v[:batch] for k, v in out.items()}
                f_s, f_t, logit_t = feats[:batch], feats[batch:], out["logits"][batch:]
            else:
                f_s, out_s = fam.features_and_outputs(model, xs)
                use("target")
                if aligner is not None:  # Mind the Gap's target flow (reweighted with D1)
                    f_t, out_t = aligner.target_flow(model, xt)
                else:
                    f_t, out_t = fam.features_and_outputs(model, xt)
                logit_t = out_t["logits"]
            seg, _ = _supervised_loss(fam, model, out_s, sb, state)
            pseudo_from = logit_t
            if teacher is not None:
                with torch.no_grad():
                    pseudo_from = fam.features_and_outputs(teacher, xt)[1]["logits"]
            mi, mi_logs = mani(f_s, sb["target"], f_t, pseudo_from, tb["target"])
        adv, adv_logs = torch.zeros((), device=dev), {}
        if aligner is not None and it >= n_warm:
            adv, adv_logs = aligner.segmenter_loss(f_t, logit_t)
        loss = seg + mi_weight * mi + adv
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if aligner is not None and it >= n_warm:
            adv_logs.update(aligner.discriminator_step(f_s, out_s["logits"], f_t, logit_t))
        logs = {
            "loss": float(loss.detach()),
            "seg": float(seg.detach()),
            "mi": float(mi_logs.get("mi", 0.0)),
            "warmup": float(it < n_warm),
            **adv_logs,
        }
        if not np.isfinite(logs["loss"]):
            raise InputError(
                f"adaptation diverged at iteration {it + 1} (loss {logs['loss']}); lower the learning rate"
            )
        history.append(logs)
        last = it + 1 == iters
        use("target")  # checkpoints and previews: the model for the target domain
        if (it + 1) % every == 0 or last:
            sig = judge.score(scored, it + 1)
            logs.update({"signal": sig["score"], "agreement": sig["agreement"],
                         "certainty": sig["certainty"]})
            _train_mode(model, norm)
        shot = None
        if preview is not None and ((preview_every > 0 and (it + 1) % preview_every == 0) or last):
            shot = predict_labels(scored, bundle, preview, device=dev)
            _train_mode(model, norm)
        yield AdaptStep(it + 1, iters, logs, shot)
    use("target")
    if stopped and history and judge.checkpoints[-1]["iteration"] != len(history):
        judge.score(scored, len(history))
    model.eval()
    if average is not None and history:
        parent_state = bundle.model.state_dict()
        partner = parent_state
        if domains is not None:  # average the weights, keep the target statistics
            partner = {**parent_state, **{k: v for k, v in model.state_dict().items()
                                          if k.endswith(("running_mean", "running_var",
                                                         "num_batches_tracked"))}}
        model.load_state_dict(weight_average(model.state_dict(), partner, average))
        final = judge.returned(scored, len(history))
        if final["degenerate"]:  # the average drifted too: the parent's weights are returned
            model.load_state_dict({k: v.to(dev) for k, v in parent_state.items()})
            final = dict(judge.checkpoints[0], returned_parent=True)
        selection = judge.summary(False, final=final, average=average)
    else:
        selection = judge.summary(select)
        if select and judge.best_state is not None:  # None: every checkpoint degenerate, keep last
            scored.load_state_dict(judge.best_state)
    provenance = {
        "command": command or "napari_dgseg.adapt(...)",
        "method": "MaNi (Sharma, Syed & Brown, MICCAI 2023): JSD mutual information, concat critic, projection 1x1+BN+ReLU",
        "norm": f"{norm}: {NORM_DOC[norm]}",
        "target_statistics": dual_report,
        "parent": {
            "name": bundle.name,
            "sha256": parent_sha256(bundle),
            "path": str(bundle.path) if bundle.path else None,
        },
        "parent_training": {
            k: bundle.provenance.get(k) for k in ("command", "sources", "val_metrics")
        },
        "targets": data.target_names,
        "target_scale": data.target_scale,
        "labelled_targets": [s.name for s in data.targets if s.labels is not None],
        "source": data.source_desc,
        "iterations": len(history),
        "iters_planned": iters,
        "stopped_early": stopped,
        "warmup_iterations": n_warm,
        "mi_weight": mi_weight,
        "lr": lr,
        "batch": f"{batch} source + {batch} target",
        "crop_size": crop,
        "seed": seed,
        "optimizer": "Adam, constant learning rate",
        "source_augment": src_desc,
        "pseudo_label_threshold": pseudo_threshold,
        "pseudo_labels": f"{pseudo_labels}: {PSEUDO_LABELS[pseudo_labels]}",
        "weight_average": None if average is None else
        f"{average:g} x the last iterate + {1 - average:g} x the parent (WiSE-FT)",
        "trained_parameters": "decoders and heads (encoder frozen)" if freeze_encoder else "all",
        "training_augment": dict(zip(("augment", "scale_range"), training_recipe(bundle), strict=True)),
        "source_transform": getattr(source_transform, "description", repr(source_transform))
        if source_transform is not None else None,
        "final_seg": _mean_tail(history, "seg"),
        "final_mi": _mean_tail([h for h in history if not h["warmup"]], "mi"),
        "losses": {"seg": _thin(history, "seg"), "mi": _thin(history, "mi")},
        "selection": selection,
        "local_alignment": None if aligner is None else {
            **aligner.provenance(),
            "final": {k: _mean_tail(history, k) for k in ("adv_d1", "adv_d2", "d1", "d2",
                                                           "d1_accuracy", "mask_mean")},
        },
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    result = make_adapted_bundle(bundle, model.cpu(), mani.cpu(), provenance, name=name)
    if aligner is not None:
        aligner.attach(result)
    return result


def _local_aligner(fam: Family, channels: int, num_classes: int, local_alignment: bool,
                   output_discriminator: bool | None, d1_weight: float, d2_weight: float,
                   norm: str, dev: Any) -> Any:
    """Mind the Gap's D1/D2 for this run (:mod:`napari_dgseg.core.local_align`), or None."""
    use_d2 = local_alignment if output_discriminator is None else bool(output_discriminator)
    if not (local_alignment or use_d2):
        return None
    if norm == "mixed":
        raise InputError("local alignment needs separate source and target passes; use "
                         "--norm frozen (default) or split")
    from napari_dgseg.core.local_align.adaptation import LocalAligner

    return LocalAligner(fam, channels, num_classes, local_alignment=bool(local_alignment),
                        output_discriminator=use_d2, d1_weight=d1_weight, d2_weight=d2_weight,
                        device=dev)


def _stats_steps(
    bundle: Bundle,
    targets: Sequence[Target],
    *,
    holdout: int | None,
    select: bool,
    device: Any,
    cancel: Any,
    name: str | None,
    command: str | None,
    t0: float,
    size: int | None,
    hook: Callable[[int, torch.nn.Module], Any] | None = None,
    target_scale: str = DEFAULT_TARGET_SCALE,
) -> Generator[AdaptStep, None, Bundle]:
    """``method="stats"``: target BatchNorm statistics (one step), judged like MaNi checkpoints."""
    from napari_dgseg.core.train.norm_stats import batchnorm_layers, norm_kind, reestimate_batchnorm

    if not batchnorm_layers(bundle.model):
        raise InputError(
            f"model {bundle.name!r} has no BatchNorm running statistics (its normalisation is "
            f"{norm_kind(bundle.model)!r}), so target-statistics adaptation cannot change it; "
            "use the MaNi method instead (--method mani)"
        )
    samples = read_targets(targets)
    names = [s.meta.get("image_path", s.name) for s in samples]
    divisor = int(bundle.model.divisor)
    side = size or 256
    if side % divisor:
        raise InputError(f"crop size {side} must be a multiple of {divisor} for this model")
    samples, scale_report = targets_at_scale(bundle, samples, mode=target_scale, min_side=32,
                                             device=device)
    train_targets, held, held_out = split_holdout(samples, holdout)
    model = copy.deepcopy(bundle.model).to(device).eval()
    from napari_dgseg.core.train.selection import UNGUARDED

    # Target statistics change certainty and agreement by design (a new normalisation, not a
    # drift), and the drift guard was chosen on MaNi checkpoints: only the degenerate check here.
    judge = _Judge(bundle, [_score_view(s.image) for s in held], device, held_out, hook,
                   [s.image for s in train_targets], guard=UNGUARDED)
    judge.score(model, 0)
    report = reestimate_batchnorm(model, [s.image for s in train_targets], bundle.input_spec,
                                  size=side, device=device, cancel=cancel)
    sig = judge.score(model, 1)
    logs = {"loss": 0.0, "seg": 0.0, "mi": 0.0, "warmup": 0.0, "stats": 1.0, "signal": sig["score"],
            "agreement": sig["agreement"], "certainty": sig["certainty"]}
    yield AdaptStep(1, 1, logs, None)
    selection = judge.summary(select)
    if select:
        model.load_state_dict(judge.best_state)
    provenance = {
        "command": command or "napari_dgseg.adapt(..., method='stats')",
        "method": "target statistics: BatchNorm running mean/var re-estimated on the target images "
        "(Li et al., 'Revisiting Batch Normalization For Practical Domain Adaptation', 2016)",
        "parent": {"name": bundle.name, "sha256": parent_sha256(bundle),
                   "path": str(bundle.path) if bundle.path else None},
        "parent_training": {
            k: bundle.provenance.get(k) for k in ("command", "sources", "val_metrics")
        },
        "targets": names,
        "target_scale": scale_report,
        "labelled_targets": [],
        "source": "none (no training)",
        "iterations": 1,
        "iters_planned": 1,
        "stopped_early": False,
        "statistics": report,
        "crop_size": side,
        "final_seg": None,
        "final_mi": None,
        "selection": selection,
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    return make_adapted_bundle(bundle, model.cpu(), None, provenance, name=name)


#: Adaptation methods: MaNi (default) and target statistics.
METHODS = ("mani", "stats")
#: Most iterations between two scored checkpoints (fewer when ``iters // 5`` is smaller): MaNi
#: can peak early and drift after (benchmarks/mani_adaptation.py), so checkpoints stay dense.
SELECT_EVERY = 20
#: Most target images the signals read when none are held out.
MAX_SCORED = 4
#: Largest side of a held-out image the selection signals read (centre crop).
SCORE_SIDE = 384


def split_holdout(
    samples: Sequence[Sample], holdout: int | None
) -> tuple[list[Sample], list[Sample], bool]:
    """Split targets into training images and held-out images for the selection signals.

    ``holdout=None`` holds out a quarter of the unlabelled targets (at most 4) when there are at
    least 4; with fewer the signals read the targets (at most :data:`MAX_SCORED`; ``held_out``
    False: they were also trained on, which the provenance says). ``holdout=0`` does the same.
    """
    samples = list(samples)
    unlabelled = [i for i, s in enumerate(samples) if s.labels is None]
    n = min(4, len(unlabelled) // 4) if holdout is None else int(holdout)
    if n < 0:
        raise InputError(f"holdout must be >= 0 (got {holdout})")
    if n == 0 or len(samples) - n < 1 or n > len(unlabelled):
        return samples, samples[-MAX_SCORED:], False
    held_idx = set(unlabelled[-n:])
    train = [s for i, s in enumerate(samples) if i not in held_idx]
    held = [s for i, s in enumerate(samples) if i in held_idx]
    return train, held, True


def _score_view(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = SCORE_SIDE
    if h <= s and w <= s:
        return image
    y, x = max(0, (h - s) // 2), max(0, (w - s) // 2)
    return image[y : y + s, x : x + s]


class _Judge:
    """Scores checkpoints with the label-free signals and keeps the chosen one's weights.

    The choice is :func:`~napari_dgseg.core.train.selection.select_checkpoint` under ``guard``
    (default :data:`~napari_dgseg.core.train.selection.GUARD`: no checkpoint after the first sign
    of drift).
    """

    def __init__(self, bundle: Bundle, images: list[np.ndarray], device: Any, held_out: bool,
                 hook: Callable[[int, torch.nn.Module], Any] | None = None,
                 train_images: Sequence[np.ndarray] = (), guard: Any = None):
        from napari_dgseg.core.train.selection import GUARD, reference_foreground

        self.bundle, self.images, self.device, self.held_out = bundle, images, device, held_out
        self.guard = GUARD if guard is None else guard  # selection.DriftGuard
        self.hook = hook
        self.reference = reference_foreground(
            bundle.model, list(train_images) or images, images, bundle.input_spec,
            device=device, discrete=bundle.family.discrete_outputs)
        from napari_dgseg.core.train.selection import classical_foreground

        self.classical = classical_foreground(bundle.manifest.get("task"), images)
        self.checkpoints: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best: dict[str, Any] | None = None

    def _row(self, model: torch.nn.Module, iteration: int) -> dict[str, Any]:
        """The label-free signals of ``model`` on the held-out images, and whether it is
        degenerate against the parent (checkpoint 0; the first row is the parent)."""
        from napari_dgseg.core.train.selection import is_degenerate, label_free_signals

        sig = label_free_signals(model, self.images, self.bundle.input_spec, device=self.device,
                                 discrete=self.bundle.family.discrete_outputs,
                                 reference_foreground=self.reference,
                                 classical_masks=self.classical)
        parent = self.checkpoints[0] if self.checkpoints else sig
        return {"iteration": iteration, **sig, "degenerate": bool(is_degenerate(sig, parent))}

    def score(self, model: torch.nn.Module, iteration: int) -> dict[str, Any]:
        row = self._row(model, iteration)
        if self.bundle.family.supports("codebook"):  # reported beside the score, not used in it
            from napari_dgseg.core.train.selection import codebook_shift

            row["codebook_shift"] = codebook_shift(self.bundle, model, self.images,
                                                   device=self.device)
        self.checkpoints.append(row)
        # The drift-guarded choice over the checkpoints so far (selection.GUARD): the choice over
        # a longer run is either the earlier choice or the new checkpoint, so keeping the weights
        # whenever the new one is chosen keeps the chosen checkpoint's weights.
        from napari_dgseg.core.train.selection import select_checkpoint

        if select_checkpoint(self.checkpoints, guard=self.guard)[0] == len(self.checkpoints) - 1:
            self.best = row
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.hook is not None:
            was = model.training
            model.eval()
            self.hook(iteration, model)
            model.train(was)
        return row

    def returned(self, model: torch.nn.Module, iteration: int) -> dict[str, Any]:
        """Signals of the model the run returns (a weight average): scored like a checkpoint,
        not a candidate for selection and not passed to the hook."""
        return self._row(model, iteration)

    def summary(self, select: bool, final: dict[str, Any] | None = None,
                average: float | None = None) -> dict[str, Any]:
        from napari_dgseg.core.train.selection import SIGNAL_DOC, select_checkpoint

        parent, last = self.checkpoints[0], self.checkpoints[-1]
        chosen = self.best if select and self.best is not None else last
        if final is not None:  # the weight average of the last iterate and the parent
            chosen = final
        parent_kept = bool(select and chosen["iteration"] == 0) or bool(chosen.get("returned_parent"))
        verdict = "better" if chosen["score"] > parent["score"] else "not better"
        guard = select_checkpoint(self.checkpoints, guard=self.guard)[1]
        guard_note = guard["note"] if select and final is None else None
        return {
            "signal": SIGNAL_DOC,
            "held_out_images": len(self.images),
            "held_out": self.held_out,
            "reference_foreground": round(self.reference, 4),
            "parent": {k: parent[k] for k in ("score", "agreement", "certainty", "foreground")},
            "adapted": {k: chosen[k] for k in ("score", "agreement", "certainty", "foreground")},
            "chosen_iteration": chosen["iteration"],
            "selected": select and final is None,
            "returned": ("the parent's weights" if parent_kept else
                         f"weight average: {average:g} x iteration {chosen['iteration']} + "
                         f"{1 - average:g} x the parent" if final is not None else
                         f"checkpoint {chosen['iteration']}"),
            "returned_parent_weights": parent_kept,
            "verdict": verdict,
            "warning": None if verdict == "better" else (
                "the adapted model does not look better than its parent on held-out target "
                "images by the label-free signal; "
                + (f"{guard_note}; " if guard_note else "")
                + ("the parent's weights were kept" if parent_kept else "check before using it")
            ),
            "guard": guard["guard"] if select and final is None else None,
            "guard_fired": bool(guard_note),
            "guard_note": guard_note,
            "drifted": guard["drifted"],
            "stopped_at": guard["stopped_at"],
            "checkpoints": self.checkpoints,
        }


def adapt(
    bundle: Bundle,
    targets: Sequence[Target],
    *,
    source: str | Path | Sequence[Sample] | None = None,
    target_labels: Sequence[np.ndarray | None] | None = None,
    iters: int = 200,
    lr: float = 1e-4,
    seed: int = 0,
    batch: int = 4,
    size: int | None = None,
    warmup: float = 0.1,
    mi_weight: float = 1.0,
    device: str = "auto",
    progress: AdaptProgress | None = None,
    cancel: Any = None,
    name: str | None = None,
    out: str | Path | None = None,
    command: str | None = None,
    overwrite: bool = False,
    method: str = "mani",
    norm: str = "frozen",
    select: bool = True,
    holdout: int | None = None,
    select_every: int | None = None,
    checkpoint_hook: Callable[[int, torch.nn.Module], Any] | None = None,
    source_augment: str | bool = "training",
    source_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    local_alignment: bool = False,
    output_discriminator: bool | None = None,
    d1_weight: float = 0.01,
    d2_weight: float = 0.01,
    freeze_encoder: bool = False,
    pseudo_threshold: float = 0.5,
    average: float | None = DEFAULT_AVERAGE,
    pseudo_labels: str = "online",
    target_scale: str = DEFAULT_TARGET_SCALE,
) -> Bundle:
    """Adapt ``bundle`` to unlabelled ``targets`` with MaNi and return a new bundle.

    Parameters
    ----------
    bundle : Bundle
        The trained (parent) model; never modified.
    targets : sequence
        Target images: ``(H, W[, C])`` arrays, image files, or folders of images.
    source : path or samples, optional
        Labelled source folder (images/ + labels/); default: the bundle's replay set.
    target_labels : sequence, optional
        One ``(H, W)`` label map (instance ids for nuclei) or None per target: corrected masks
        used as labelled target data.
    iters, lr, seed, batch, size, warmup, mi_weight :
        Schedule: iterations, Adam learning rate (1e-4), seed, crops per domain per iteration
        (4 + 4), crop side (default 256, at most the replay crop side), warm-up fraction (0.1),
        weight of the MI loss (1).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    progress : callable
        ``progress(iteration, iters, logs)`` after every iteration.
    cancel : threading.Event or callable
        Checked every iteration and before the final rename of ``out``; raises
        :class:`CancelledError` and leaves every file as it was.
    name : str, optional
        Name of the new bundle (default ``<parent>-adapted``).
    out : path, optional
        Save the new bundle there (atomically); an existing file is kept (an error) unless
        ``overwrite``.
    method : str
        ``mani`` (default) or ``stats`` (target BatchNorm statistics only, no training).
    norm : str
        BatchNorm during MaNi (:data:`NORM_MODES`): ``frozen`` (default), ``split``, ``mixed``,
        ``dual`` (domain-specific statistics; the returned model carries the target statistics).
    select : bool
        Keep the checkpoint (the parent included) with the best label-free signal on held-out
        target images among those before the first sign of drift (default; the drift guard
        :data:`~napari_dgseg.core.train.selection.GUARD`); False keeps the last iterate. Either way
        ``provenance["selection"]`` holds the signals of the parent and of every checkpoint.
    holdout : int, optional
        Target images held out for the signal (default: a quarter, at most 4, when >= 4).
    select_every : int, optional
        Iterations between scored checkpoints (default ``min(20, iters // 5)``, at least 1).
    source_augment : str
        How the labelled source batches are augmented (:data:`SOURCE_AUGMENTS`): ``training``
        (default) repeats the parent's own training augmentation (stain, camera, object size),
        so that continued supervised training on the replay set keeps the invariances the parent
        was trained for; ``jitter`` a plain stain jitter; ``none`` the crops as stored. ``True`` /
        ``False`` mean ``jitter`` / ``none``.
    source_transform : callable, optional
        Applied to every labelled source batch ``(B, 3, H, W)`` in [0, 1] after the stain
        jitter, e.g. a style model's ``batch_transform()`` that renders the source crops in the
        target's style (:mod:`napari_dgseg.core.style`); labels are kept as they are.
    local_alignment : bool
        Mind the Gap's D1 (Su et al., 2023; :mod:`napari_dgseg.core.local_align`): a
        pixel-wise feature discriminator whose mask ``m = |D1(f_t)|`` reweights the target
        features (``f + f * tanh(m)``) and whose adversarial loss aligns them. The adapted bundle
        stores D1 and declares the ``local_mask`` capability; its predictions reweight too.
    output_discriminator : bool, optional
        Mind the Gap's D2 on the softmax maps; default: on with ``local_alignment``.
    d1_weight, d2_weight : float
        Adversarial weights ``lambda_d1``, ``lambda_d2`` (paper: 0.01 each).
    freeze_encoder : bool
        Train the decoders (and heads) only, as MaNi's first stage for instance segmentation.
    average : float or None
        Return ``average * last iterate + (1 - average) * parent`` (WiSE-FT), judged like a
        checkpoint (its signals are ``selection["adapted"]``; if its foreground is degenerate the
        parent's weights are returned) instead of the checkpoint ``select`` chooses. Default
        :data:`DEFAULT_AVERAGE` (None).
    pseudo_threshold : float
        Target foreground probability at or above which a pixel joins the pseudo-labelled target
        foreground of the MI term (MaNi: 0.5).
    pseudo_labels : str
        Whose prediction gives that foreground (:data:`PSEUDO_LABELS`): ``online`` (the adapted
        network's own, as in the paper; default) or ``parent`` (the frozen parent's).
    target_scale : str
        ``model``: every target image (and its corrected labels) is first resampled by the factor
        the parent's inference applies to it, so the crops show nuclei at the size the model
        segments them at; ``native``: the images as they are. Default
        :data:`DEFAULT_TARGET_SCALE`; recorded in ``provenance["target_scale"]`` with the factors.

    Returns
    -------
    Bundle
        The adapted model, with provenance (parent sha256, targets, iterations, losses).
    """
    gen = adapt_steps(
        bundle,
        targets,
        source=source,
        target_labels=target_labels,
        iters=iters,
        lr=lr,
        seed=seed,
        batch=batch,
        size=size,
        warmup=warmup,
        mi_weight=mi_weight,
        device=device,
        cancel=cancel,
        name=name,
        command=command,
        method=method,
        norm=norm,
        select=select,
        holdout=holdout,
        select_every=select_every,
        checkpoint_hook=checkpoint_hook,
        source_augment=source_augment,
        source_transform=source_transform,
        local_alignment=local_alignment,
        output_discriminator=output_discriminator,
        d1_weight=d1_weight,
        d2_weight=d2_weight,
        freeze_encoder=freeze_encoder,
        pseudo_threshold=pseudo_threshold,
        average=average,
        pseudo_labels=pseudo_labels,
        target_scale=target_scale,
    )
    from napari_dgseg.core.steps import run_steps

    result: Bundle = run_steps(gen, None if progress is None else
                               lambda step: progress(step.iteration, step.iters, step.logs))
    if out is not None:
        result.save(out, cancel=cancel, overwrite=overwrite)
    return result


# --------------------------------------------------------------------------- results
def predict_labels(
    model: torch.nn.Module, bundle: Bundle, image: np.ndarray, *, device: Any = "cpu"
) -> np.ndarray:
    """Labels ``(H, W)`` int32 of ``image`` by ``model`` with ``bundle``'s post-processing."""
    from napari_dgseg.core.predict import run_tiled

    fam = bundle.family
    maps = run_tiled(
        model, image, input_spec=bundle.input_spec, tile=512, overlap=32, device=device, batch=1,
        discrete=fam.discrete_outputs,
    )
    fields = fam.postprocess(maps, bundle.postprocess_config)
    return np.asarray(fields["labels"], dtype=np.int32)


def parent_sha256(bundle: Bundle) -> str:
    """sha256 of the parent's file (or of its serialised bytes when it was never saved)."""
    if bundle.sha256:
        return bundle.sha256
    return sha256_bytes(copy.copy(bundle).to_bytes())


#: Manifest records an adapted bundle takes from its parent (:func:`make_adapted_bundle`).
INHERITED_RECORDS = (SCALE_KEY, "inference", "dcin")


def make_adapted_bundle(
    parent: Bundle,
    model: torch.nn.Module,
    mani: ManiModule | None,
    provenance: dict,
    *,
    name: str | None = None,
) -> Bundle:
    """New bundle: adapted weights, the parent's extra files (replay set, bank), and the MaNi head.

    The parent's records of how the model is used carry over (:data:`INHERITED_RECORDS`: its
    training scale, its measured inference choices, its colour-normalisation bank record), so the
    adapted model is resampled, normalised and post-processed as its parent is; its evaluation
    records do not (they describe the parent's weights).
    """
    extras = {}
    for fname in parent.tensor_files:
        if fname != WEIGHTS:
            extras[fname] = parent.extra(fname)
    if mani is not None:
        extras["mani"] = {k: v.detach().cpu().contiguous() for k, v in mani.state_dict().items()}
    how = "MaNi-adapted" if mani is not None else "target-statistics-adapted"
    fam = parent.family
    bundle = Bundle.create(
        model,
        parent.family_name,
        fam.make_config(parent.config),
        name=name or f"{_base_name(parent.name)}-adapted",
        class_names=parent.class_names,
        class_colors=[parent.class_colors[i] for i in sorted(parent.class_colors)],
        task=str(parent.manifest.get("task", "")),
        input_spec=parent.input_spec,
        provenance=provenance,
        extras=extras,
        description=f"{parent.manifest.get('description', '')} ({how} from {parent.name})",
        scale=parent.manifest.get(SCALE_KEY),
    )
    for key in INHERITED_RECORDS[1:]:
        if key in parent.manifest:
            bundle.manifest[key] = copy.deepcopy(parent.manifest[key])
    return bundle


def _base_name(name: str) -> str:
    # The name comes from a bundle someone else made: never let it name a folder or climb out.
    return re.sub(r"-adapted(-\d+)?$", "", safe_file_stem(name))


def next_version_path(parent_name: str, folder: str | Path) -> Path:
    """``folder/<parent>-adapted-<n>.dgseg`` with the smallest ``n >= 1`` not yet taken."""
    folder = Path(folder)
    base = _base_name(parent_name)
    n = 1
    while (folder / f"{base}-adapted-{n}{SUFFIX}").exists():
        n += 1
    return folder / f"{base}-adapted-{n}{SUFFIX}"


def _mean_tail(history: list[dict], key: str, n: int = 20) -> float | None:
    vals = [h[key] for h in history[-n:] if key in h]
    return round(float(np.mean(vals)), 5) if vals else None


def _thin(history: list[dict], key: str, points: int = 100) -> list[list[float]]:
    step = max(1, len(history) // points)
    return [
        [i + 1, round(float(np.mean([h[key] for h in history[i : i + step]])), 5)]
        for i in range(0, len(history), step)
    ]
