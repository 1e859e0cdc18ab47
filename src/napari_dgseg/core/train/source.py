"""Training any family on labelled source data (``dgseg train`` and the Python API).

One loop serves every family: balanced random crops from the source domains, flips and 90-degree
rotations, Adam with poly learning-rate decay (power 0.9), the family's loss (default:
cross-entropy + Dice, the ``Seg`` of the papers in docs/references.md), optional CQG (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025), a progress
callback and a cancel flag, deterministic for a given seed. The result is a :class:`Bundle` with
the training command, data, seed, losses and validation metrics in its provenance.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.bundle import Bundle
from napari_dgseg.core.cancel import check_cancel
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.family import Family, config_to_dict
from napari_dgseg.core.input_features import FEATURE_CHANNELS, FEATURES, input_channels
from napari_dgseg.core.registry import get_family
from napari_dgseg.core.train.data import (
    TASK_IS_INSTANCE,
    CropSampler,
    Source,
    infer_task,
    load_sources,
)

TrainProgress = Callable[[int, int, dict], Any]
#: Valid ``augment`` values (see :class:`~napari_dgseg.core.train.data.CropSampler`).
AUGMENTS = ("none", "camera", "stain", "stain-nuclei", "fundus")

CLASS_NAMES = {
    "nuclei": ("background", "nucleus"),
    "vessels": ("background", "vessel"),
    "binary": ("background", "foreground"),
}


#: Added to the family's description of a model trained with ``cqg=True``.
CQG_DESCRIPTION = (
    " trained with CQG colour-quality invariance (Shah, Fukuda & Cap 2025): two colour views of "
    "every crop must give the same mask"
)

def _check_cancel(cancel: Any) -> None:
    check_cancel(cancel, "training cancelled by the user; no model was saved")


def poly_lr(base: float, it: int, total: int, power: float = 0.9) -> float:
    """Poly decay ``base * (1 - it / total) ** power``."""
    return base * (1.0 - it / max(1, total)) ** power


def train(
    family: str,
    sources: Sequence[Source],
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    iters: int = 1000,
    size: int = 256,
    batch: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    val: Source | None = None,
    config: Mapping[str, Any] | None = None,
    cqg: bool = False,
    features: str = "rgb",
    augment: str = "none",
    scale_range: tuple[float, float] | None = None,
    pixel_size_um: float | None = None,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    device: str = "auto",
    progress: TrainProgress | None = None,
    cancel: Any = None,
    command: str | None = None,
    init: str | Path | Bundle | None = None,
) -> Bundle:
    """Train a model of ``family`` on labelled ``sources`` and return (and optionally save) it.

    Parameters
    ----------
    family : str
        Registry name (:func:`napari_dgseg.core.registry.family_names` lists them).
    sources : sequence
        Folders (``images/`` + ``labels/``, or folders of such domain folders) or lists of
        :class:`Sample`; each folder is one source domain, batches are balanced over domains.
    out : path, optional
        Where to save the bundle (atomic). Nothing is written when training is cancelled.
    overwrite : bool
        Replace an existing ``out`` (default False: it is kept and an error raised).
    iters, size, batch, lr, seed : training schedule (crop side ``size`` px).
    val : source, optional
        Labelled validation data; its Dice (and AJI/PQ for nuclei) go into the provenance.
    config : mapping, optional
        Architecture overrides for the family's config (``num_classes`` is set from the data).
    cqg : bool
        Colour-quality generalisation loss (Shah et al. 2025).
    features : str
        Network input (:data:`napari_dgseg.core.input_features.FEATURES`): ``rgb`` or
        ``rgb+stain`` (RGB beside per-image scaled H&E optical densities) or ``rgb+vessel`` (RGB
        beside the per-image scaled top-hat of the inverted green channel).
    augment : str
        ``none``, ``camera``, ``stain`` or ``fundus``
        (:class:`~napari_dgseg.core.train.data.CropSampler`).
    scale_range : (float, float), optional
        Object-size augmentation range (magnification factors; e.g. ``(0.7, 1.4)``).
    pixel_size_um : float, optional
        Pixel size of the training images in micrometres; recorded with the median object size
        measured on the training labels (the bundle's ``scale``, which inference resamples to).
    progress : callable
        ``progress(iteration, iters, logs)`` after every iteration.
    cancel : threading.Event or callable
        Checked every iteration; raises :class:`CancelledError`.
    init : bundle name, path or Bundle, optional
        Warm start: begin from this bundle's weights instead of a random initialisation (same
        family, architecture, classes and input features, else one clear error). Recorded as the
        new bundle's ``provenance.parent``; the schedule (``iters``, ``lr``) is the new run's.
    """
    if iters < 1:
        raise InputError(f"iters must be >= 1 (got {iters})")
    if augment not in AUGMENTS:
        raise InputError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTS)}")
    if scale_range is not None and not (0 < scale_range[0] <= scale_range[1]):
        raise InputError(f"scale range {scale_range} must be two positive factors, low <= high")
    spec = _input_spec(features)
    if batch < 1 or size < 32:
        raise InputError(f"batch must be >= 1 and size >= 32 (got batch={batch}, size={size})")
    fam = get_family(family)
    if fam.segment_image is not None:
        raise InputError(f"{family!r} is a classical method without a network: nothing to train")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    domains = load_sources(sources)
    guessed_task, instance, num_classes = infer_task(domains)
    if task is not None and task != guessed_task:
        instance = TASK_IS_INSTANCE[task]
        num_classes = 2 if task != "semantic" else num_classes
    task = task or guessed_task
    names = tuple(class_names) if class_names else CLASS_NAMES.get(task) or tuple(
        ["background"] + [f"class {i}" for i in range(1, num_classes)]
    )
    if len(names) != num_classes:
        num_classes = len(names)
    cfg_values = {**(config or {}), "num_classes": num_classes,
                  "in_channels": input_channels(spec)}
    cfg = fam.make_config(cfg_values)
    model = fam.build_model(cfg)
    parent = _warm_start(model, init, family, config_to_dict(cfg), spec) if init is not None else None
    divisor = int(model.divisor)
    if size % divisor:
        raise InputError(f"--size {size} must be a multiple of {divisor} for this model")
    dev = select_device(device)
    model.to(dev).train()
    sampler = CropSampler(domains, size=size, num_classes=num_classes, instance=instance, seed=seed,
                          augment=augment, scale_range=scale_range)
    params = list(fam.trainable_parameters(model))
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {"iters": iters, "generator": generator, "domains": len(domains),
                             "cqg": cqg, "input_spec": spec}
    history: list[dict[str, float]] = []
    for it in range(iters):
        _check_cancel(cancel)
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(lr, it, iters)
        b = sampler.batch(batch)
        b = {k: v.to(dev) for k, v in b.items()}
        state["iteration"] = it
        loss, logs = fam.training_loss(model, b, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logs = {"loss": float(loss.detach()), **logs, "lr": optimizer.param_groups[0]["lr"]}
        if not np.isfinite(logs["loss"]):
            raise InputError(f"training diverged at iteration {it} (loss {logs['loss']}); lower --lr")
        history.append(logs)
        if progress is not None:
            progress(it + 1, iters, logs)
    model.eval()
    val_metrics = {}
    if val is not None:
        val_domains = load_sources([val])
        val_metrics = evaluate_model(model, val_domains, task=task, num_classes=num_classes,
                                     device=dev, family=fam, config=config_to_dict(cfg),
                                     input_spec=spec)
    provenance = {
        "command": command or f"napari_dgseg.train({family!r}, ...)",
        "sources": [
            {"domain": n, "images": len(s), "path": str(_source_path(src))}
            for (n, s), src in zip(domains, _expand_sources(sources, domains), strict=False)
        ],
        "validation": str(val) if val is not None and not isinstance(val, (list, tuple)) else None,
        "seed": seed,
        "iterations": iters,
        "crop_size": size,
        "batch": batch,
        "lr": lr,
        "schedule": "Adam, poly decay power 0.9",
        "cqg": cqg,
        "features": spec["features"],
        "augment": augment,
        "scale_range": list(scale_range) if scale_range else None,
        "final_loss": _mean_tail(history, "loss"),
        "loss_curve": _thin(history, "loss"),
        "val_metrics": val_metrics,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parent": parent,
    }
    bundle = Bundle.create(
        model.cpu(), family, cfg, name=name or (Path(out).stem if out else f"{task}-{family}"),
        class_names=names, task=task, input_spec=spec, provenance=provenance,
        description=(f"{fam.name}{CQG_DESCRIPTION}" if cqg else fam.description),
        scale=training_scale(domains, task, pixel_size_um, scale_range),
    )
    bundle.set_extra("replay", make_replay_set(domains, size=min(192, max(size, 128)), seed=seed))
    from napari_dgseg.core.color.bank import add_bank_to_bundle

    add_bank_to_bundle(bundle, [s.image for _, ss in domains for s in ss],
                       [s.name for _, ss in domains for s in ss])
    fam.finish_training(bundle, domains, state)
    if out is not None:
        bundle.save(out, cancel=cancel, overwrite=overwrite)
    return bundle


def training_scale(
    domains: Sequence[tuple[str, list[Sample]]], task: str, pixel_size_um: float | None,
    scale_range: tuple[float, float] | None,
) -> dict[str, Any] | None:
    """The ``scale`` record of a trained bundle: pixel size, median object size, augmentation.

    Object sizes are measured on the training labels (:func:`~napari_dgseg.core.scale.
    measure_object_size`); tasks without a notion of object size record nothing (their
    default applies).
    """
    from napari_dgseg.core.scale import measure_object_size

    if task not in ("nuclei", "vessels"):
        return None
    labels = [s.labels for _, samples in domains for s in samples]
    size = measure_object_size(labels, task)
    if not np.isfinite(size):
        return None
    return {"pixel_size_um": pixel_size_um, "object_size_px": round(float(size), 2),
            "train_range": list(scale_range) if scale_range else None}


#: Crops kept in every bundle for label-free adaptation (MaNi needs labelled source batches).
REPLAY_CROPS = 32


def make_replay_set(
    domains: Sequence[tuple[str, list[Sample]]], *, size: int = 256, n: int = REPLAY_CROPS, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A small labelled source replay set stored in the bundle (``replay.safetensors``).

    ``n`` random crops, balanced over domains: ``images`` (n, s, s, 3) uint8, ``labels`` (n, s, s)
    int32 (as in the source: instance ids or class ids), ``domain`` (n,) int64. 24 crops of
    192 px: 2.7 MB of images before the zip's deflate, labels compress to little.
    """
    rng = np.random.default_rng(seed + 7919)
    images, labels, doms = [], [], []
    for i in range(n):
        d = i % len(domains)
        samples = domains[d][1]
        s = samples[int(rng.integers(0, len(samples)))]
        h, w = s.labels.shape
        c = min(size, h, w)
        y = int(rng.integers(0, h - c + 1))
        x = int(rng.integers(0, w - c + 1))
        img = s.image[y : y + c, x : x + c]
        lab = s.labels[y : y + c, x : x + c].astype(np.int32)
        if c < size:
            img = np.pad(img, ((0, size - c), (0, size - c), (0, 0)), mode="reflect")
            lab = np.pad(lab, ((0, size - c), (0, size - c)), mode="reflect")
        images.append(img)
        labels.append(lab)
        doms.append(d)
    return {
        "images": torch.from_numpy(np.stack(images).astype(np.uint8)),
        "labels": torch.from_numpy(np.stack(labels)),
        "domain": torch.tensor(doms, dtype=torch.int64),
    }


def _warm_start(
    model: torch.nn.Module, init: str | Path | Bundle, family: str, config: Mapping[str, Any],
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Load ``init``'s weights into ``model`` after checking they fit; the provenance ``parent``."""
    from napari_dgseg.core.bundle import load_bundle

    parent = init if isinstance(init, Bundle) else load_bundle(init)
    if parent.family_name != family:
        raise InputError(f"--init {parent.name} is a {parent.family_name} model; this run trains "
                         f"{family}: pick a {family} bundle or drop --init")
    if parent.input_spec.get("features", "rgb") != spec.get("features"):
        raise InputError(f"--init {parent.name} reads {parent.input_spec.get('features', 'rgb')} "
                         f"input; pass --features {parent.input_spec.get('features', 'rgb')}")
    if dict(parent.config) != dict(config):
        diff = sorted(k for k in set(parent.config) | set(config)
                      if parent.config.get(k) != config.get(k))
        raise InputError(f"--init {parent.name} has another architecture ({', '.join(diff)} "
                         "differ): pass the same --config as it was trained with")
    model.load_state_dict(parent.state_dict())
    return {"name": parent.name, "sha256": parent.sha256, "kind": "warm start",
            "path": str(parent.path) if parent.path else None}


def _input_spec(features: str = "rgb") -> dict[str, Any]:
    from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC

    if features not in FEATURES:
        raise InputError(f"unknown input features {features!r}; valid: {', '.join(FEATURES)}")
    return {**DEFAULT_INPUT_SPEC, "features": features, "channels": FEATURE_CHANNELS[features]}


def evaluate_model(
    model: torch.nn.Module,
    domains: Sequence[tuple[str, list[Sample]]],
    *,
    task: str,
    num_classes: int,
    device: Any = "cpu",
    tile: int = 512,
    family: Family,
    config: Mapping[str, Any] | None = None,
    input_spec: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Dice (and, for nuclei, AJI and PQ) averaged over images.

    Labels come from the family's post-processing; nuclei instances of families whose output
    is semantic are the connected components of the foreground.
    """
    from napari_dgseg.core import metrics
    from napari_dgseg.core.postprocess import semantic_to_instances
    from napari_dgseg.core.predict import run_tiled

    rows: list[dict[str, float]] = []
    for _, samples in domains:
        for s in samples:
            maps = run_tiled(model, s.image, input_spec=dict(input_spec or _input_spec()),
                             tile=tile, overlap=32,
                             device=device, batch=2, discrete=family.discrete_outputs)
            labels = family.postprocess(maps, dict(config or {}))["labels"]
            if task == "nuclei":
                is_instances = family.output == "instances"
                inst = labels if is_instances else semantic_to_instances(labels)
                sc = metrics.instance_scores(inst, s.labels)
                rows.append({k: sc[k] for k in ("dice", "aji", "pq")})
            else:
                sc = metrics.semantic_scores(labels, s.labels, num_classes=num_classes, mask=s.mask)
                rows.append({"dice": sc["mean_dice"], "iou": sc["mean_iou"]})
    if not rows:
        return {}
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} | {"images": len(rows)}


def _expand_sources(sources: Sequence[Source], domains) -> list:
    out = []
    for src in sources:
        if isinstance(src, (str, Path)) and not (Path(src) / "images").is_dir():
            out.extend(Path(src) / n for n, _ in domains if (Path(src) / n).is_dir())
        else:
            out.append(src)
    return out


def _source_path(src: Any) -> Any:
    return src if isinstance(src, (str, Path)) else "<in-memory samples>"


def _mean_tail(history: list[dict], key: str, n: int = 20) -> float:
    vals = [h[key] for h in history[-n:] if key in h]
    return round(float(np.mean(vals)), 5) if vals else float("nan")


def _thin(history: list[dict], key: str, points: int = 50) -> list[list[float]]:
    if not history:
        return []
    step = max(1, len(history) // points)
    return [[i + 1, round(float(np.mean([h[key] for h in history[i : i + step]])), 5)]
            for i in range(0, len(history), step)]
