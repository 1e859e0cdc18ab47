"""DCIN at inference: choose references and build the colour branches for every tile.

Modes (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025):

``none``       the image as it is;
``gris``       transfer to the GRIS reference (the training histogram medoid);
``lris``       transfer to the training image whose embedding is cosine-nearest to the target's;
``full``       both branches, raw logits averaged; their disagreement is the uncertainty map;
``reference``  transfer to a reference the user chooses (an image or its (mean, std));
``auto``       what the model's manifest records under ``dcin.auto`` (``none`` or guarded
               ``full``, measured per model; scripts/record_dcin_auto.py); without a record,
               ``none`` for a model that reads per-image scaled features (it normalises
               colour itself); else ``full`` behind a guard
               (:mod:`napari_dgseg.core.color.guard`) when the bundle has a reference bank,
               else ``none``: a pilot pass on a few crops compares the
               normalized prediction with the original one and falls back to ``none`` when
               normalization would change the mask in a way the user cannot see.

Every mode works with every normalization method of :mod:`napari_dgseg.core.color.normalizers`
(``method=``; default :data:`~napari_dgseg.core.color.normalizers.DEFAULT_METHOD`).

The target's colour statistics come from its tissue pixels on a downsampled copy, computed once
per image or slide (or of ``stats_source``, e.g. the whole slide when a region is segmented) and
applied identically to every tile, so a slide has no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.color.bank import (
    BANK_FILE,
    downsample,
    image_embedding,
    reference_stats,
    validate_bank,
)
from napari_dgseg.core.color.normalizers import (
    DEFAULT_METHOD,
    get_normalizer,
    identity,
    tissue_samples,
)
from napari_dgseg.core.color.tissue import has_tissue, image_color_stats
from napari_dgseg.core.color.transfer import FLAT_STD, _reference_stats
from napari_dgseg.core.errors import BundleError, InputError
from napari_dgseg.core.input_features import needs_image_stats

DCIN_MODES = ("auto", "none", "gris", "lris", "full", "reference")

Branch = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DcinPlan:
    """What DCIN will do for one image.

    Attributes
    ----------
    mode : str
        The resolved mode (``auto`` already decided).
    branches : list of callables
        Input transforms for :func:`napari_dgseg.core.predict.run_tiled`.
    references : list of dict
        One per branch: ``{"branch", "reference", "mean", "std"}`` for display and provenance.
    target_mean, target_std : list of float
        The target's colour statistics (None for ``none``).
    notice : str or None
        Why normalisation was skipped (no tissue, flat image), for the user.
    """

    mode: str
    branches: list[Branch]
    references: list[dict] = field(default_factory=list)
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    space: str = "lab-reinhard"
    notice: str | None = None
    method: str = DEFAULT_METHOD
    #: The statistics the chosen method uses for the target (a flat vector, see Normalizer.fit).
    target_stats: list[float] | None = None
    #: Where the target statistics came from (``"image"``, or a description of ``stats_source``).
    stats_from: str = "image"
    #: The guard's record for ``auto`` (:class:`napari_dgseg.core.color.guard.GuardDecision`).
    guard: dict[str, Any] | None = None
    #: The mode asked for (``auto`` before it was resolved).
    requested: str = "auto"
    #: Why ``auto`` resolved as it did when no guard ran (recorded, not notified: it is the
    #: normal case for such models, not a problem to report).
    auto_reason: str | None = None

    def provenance(self) -> dict[str, Any]:
        extra = {"auto_reason": self.auto_reason} if self.auto_reason else {}
        return extra | {"mode": self.mode, "requested": self.requested, "method": self.method,
                "space": self.space, "references": self.references,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "target_stats": self.target_stats, "stats_from": self.stats_from,
                "guard": self.guard, "notice": self.notice}


_identity = identity  # the branch of mode none


def target_sample(adapter: Any, max_side: int = 1024) -> np.ndarray:
    """A strided uint8 RGB copy of the whole image (reads only the strided pixels of a slide)."""
    step = max(1, int(np.ceil(max(adapter.height, adapter.width) / max_side)))
    return adapter.to_rgb_uint8(np.asarray(adapter.image[::step, ::step]))


#: Values a bundle may record as what ``auto`` means for it (manifest ``dcin.auto``).
AUTO_CHOICES = ("none", "full")


def plan_dcin(bundle: Any, adapter: Any, mode: str = "auto", reference: Any = None, *,
              method: str | None = None, stats_source: Any = None, guard: bool | None = None,
              device: Any = "cpu", cancel: Any = None) -> DcinPlan:
    """Resolve ``mode`` for ``bundle`` and the image behind ``adapter`` into colour branches.

    Parameters
    ----------
    bundle : Bundle
        The model (its reference bank, colour space and network).
    adapter : ImageAdapter
        The image to segment.
    mode : str
        One of :data:`DCIN_MODES`.
    reference : array, path or (mean, std), optional
        The user's reference for ``mode="reference"``.
    method : str, optional
        Normalization method (:data:`~napari_dgseg.core.color.normalizers.METHODS`); default
        :data:`~napari_dgseg.core.color.normalizers.DEFAULT_METHOD`. A ``(mean, std)``
        reference only has Reinhard statistics, so it uses ``reinhard``.
    stats_source : array or ImageAdapter, optional
        The image whose tissue gives the target statistics (the whole image or slide, e.g. its
        lowest pyramid level, when only a region of it is segmented). Default: ``adapter``.
    guard : bool, optional
        Run the guard (:mod:`napari_dgseg.core.color.guard`); default: only for ``auto``.
    device, cancel
        Where the guard's pilot pass runs, and its cancel event.
    """
    from napari_dgseg.core.imageprep import ImageAdapter

    if mode not in DCIN_MODES:
        raise InputError(f"unknown DCIN mode {mode!r}; choose one of {list(DCIN_MODES)}")
    requested = mode
    normalizer = get_normalizer(method or DEFAULT_METHOD)
    bank = bundle.extra(BANK_FILE)
    space = (bundle.manifest.get("dcin") or {}).get("space", "lab-reinhard")
    if guard is None:
        guard = mode == "auto"
    preferred = (bundle.manifest.get("dcin") or {}).get("auto")
    if mode == "auto" and bank is not None and preferred in AUTO_CHOICES:
        # what ``auto`` means for this model was measured and recorded in its manifest
        # (``dcin.auto`` with ``dcin.auto_evidence``; scripts/record_dcin_auto.py)
        evidence = (bundle.manifest.get("dcin") or {}).get("auto_evidence", "")
        if preferred == "none":
            return DcinPlan(mode="none", branches=[_identity], space=space,
                            method=normalizer.name, requested=requested,
                            auto_reason="measured for this model: normalization does not help it"
                            + (f" ({evidence})" if evidence else ""))
        mode = "full"  # guarded, as ``auto`` always is
    elif mode == "auto" and bank is not None and needs_image_stats(bundle.input_spec):
        # A model that reads per-image scaled features (stain densities, the green top-hat) and
        # was trained under colour augmentation normalises colour itself: on the training
        # renderer's held-out domains DCIN lowered the H&E U-Nets (docs/dcin.md, "retrained
        # shipped U-Nets") and left the fundus RAM-SgCG unchanged within 0.001 Dice
        # (benchmarks/results/training_domains_vessels_dcin.json) at twice the cost.
        return DcinPlan(mode="none", branches=[_identity], space=space, method=normalizer.name,
                        requested=requested,
                        auto_reason="this model normalises colour itself (per-image scaled "
                        f"{bundle.input_spec.get('features')} input); choose a mode to force "
                        "normalization")
    if mode == "auto":
        mode = "full" if bank is not None else "none"
    if mode == "none":
        return DcinPlan(mode="none", branches=[_identity], space=space, method=normalizer.name,
                        requested=requested)
    if mode in ("gris", "lris", "full") and bank is None:
        raise InputError(
            f"model {bundle.name!r} has no DCIN reference bank, needed for mode {mode!r}; add one "
            "with `dgseg bank MODEL --source TRAINING_DIR`, or use mode 'reference' or 'none'"
        )
    if mode in ("gris", "lris", "full"):
        validate_bank(bank, bundle.name)
    stats_from = "image"
    if stats_source is not None:
        src = stats_source if isinstance(stats_source, ImageAdapter) else ImageAdapter.from_array(
            stats_source)
        stats_from = f"whole image {src.height} x {src.width}"
    else:
        src = adapter
    sample = target_sample(src)
    if not has_tissue(sample):
        # White background only: statistics of glass would turn it into tissue colours.
        return DcinPlan(mode="none", branches=[_identity], space=space, method=normalizer.name,
                        requested=requested,
                        notice=f"DCIN {mode} skipped: no tissue found (blank or white image)")
    t_mean, t_std = image_color_stats(sample, space=space)
    if (t_std < FLAT_STD).all():
        # A flat image: nothing to normalise (transfer would amplify noise).
        return DcinPlan(mode="none", branches=[_identity], space=space, method=normalizer.name,
                        requested=requested,
                        notice=f"DCIN {mode} skipped: the image is a single flat colour")
    if mode == "reference" and isinstance(reference, (tuple, list)):
        normalizer = get_normalizer("reinhard")  # only (mean, std) is known of the reference
    if space != "lab-reinhard":
        normalizer = get_normalizer("reinhard")  # the other methods work in l-alpha-beta / OD
    t_stats = normalizer.fit(*tissue_samples(sample))
    plan = DcinPlan(mode=mode, branches=[], target_mean=t_mean.tolist(), target_std=t_std.tolist(),
                    space=space, method=normalizer.name, target_stats=t_stats.tolist(),
                    stats_from=stats_from, requested=requested)
    names = (bundle.manifest.get("dcin") or {}).get("names") or []
    if mode == "reference":
        if reference is None:
            raise InputError("DCIN mode 'reference' needs a reference image (or its mean and std)")
        ref = _as_reference(reference)
        r_mean, r_std = _reference_stats(ref, space)
        if normalizer.name == "reinhard" and space != "lab-reinhard":
            plan.branches.append(_space_branch(t_mean, t_std, r_mean, r_std, space))
            r_stats = np.concatenate([r_mean, r_std])
        elif isinstance(ref, (tuple, list)):
            r_stats = np.concatenate([r_mean, r_std])
            plan.branches.append(normalizer.branch(np.concatenate([t_mean, t_std]), r_stats))
        else:
            r_stats = normalizer.fit(*tissue_samples(_uint8_sample(ref)))
            plan.branches.append(normalizer.branch(t_stats, r_stats))
        plan.references.append({"branch": "reference", "reference": _describe(reference),
                                "mean": r_mean.tolist(), "std": r_std.tolist(),
                                "stats": r_stats.tolist()})
        return plan
    picks: list[tuple[str, int]] = []
    if mode in ("gris", "full"):
        picks.append(("gris", int(bank["gris"][0])))
    if mode in ("lris", "full"):
        emb = image_embedding(bundle.model, downsample(sample, 512), bundle.input_spec)
        if bank["embedding"].shape[1] != emb.shape[0]:
            raise BundleError(
                f"model {bundle.name!r}: the DCIN reference bank holds {bank['embedding'].shape[1]}-"
                f"value embeddings but the model makes {emb.shape[0]}; rebuild it with "
                f"`dgseg bank {bundle.name} --source TRAINING_DIR`"
            )
        sims = bank["embedding"].numpy() @ emb
        picks.append(("lris", int(np.argmax(sims))))
    for branch_name, i in picks:
        r_mean = bank["mean"][i].double().numpy()
        r_std = bank["std"][i].double().numpy()
        if space != "lab-reinhard":
            plan.branches.append(_space_branch(t_mean, t_std, r_mean, r_std, space))
            r_stats, origin = np.concatenate([r_mean, r_std]), "bank"
        else:
            r_stats, origin = reference_stats(bank, i, normalizer)
            plan.branches.append(normalizer.branch(t_stats, r_stats))
        plan.references.append({
            "branch": branch_name,
            "reference": names[i] if i < len(names) else f"training image #{i}",
            "index": i,
            "mean": r_mean.tolist(),
            "std": r_std.tolist(),
            "stats": r_stats.tolist(),
            "stats_origin": origin,
        })
    if guard:
        from napari_dgseg.core.color.guard import (
            IN_DOMAIN_KEY,
            apply_guard,
            colour_shift,
            nearest_training_colours,
        )

        # how far the colours are, measured without the composition: balanced statistics
        balanced = get_normalizer("balanced")
        t_bal = t_stats if normalizer.name == "balanced" else balanced.fit(*tissue_samples(sample))
        refs = [{"stats": reference_stats(bank, r["index"], balanced)[0].tolist()}
                for r in plan.references]
        in_domain = (bundle.manifest.get("dcin") or {}).get(IN_DOMAIN_KEY)  # rule 0, if measured
        apply_guard(bundle, adapter, plan, device=device, cancel=cancel,
                    shift=colour_shift(t_bal, refs),
                    nearest=None if in_domain is None else nearest_training_colours(
                        bundle, sample, target=t_bal),
                    in_domain_shift=in_domain)
    return plan


def _space_branch(t_mean: np.ndarray, t_std: np.ndarray, r_mean: np.ndarray, r_std: np.ndarray,
                  space: str) -> Branch:
    """Reinhard transfer in a colour space other than l-alpha-beta (CIELAB banks)."""
    from napari_dgseg.core.color.transfer import transfer

    def branch(x: torch.Tensor) -> torch.Tensor:
        return transfer(x, t_mean, t_std, r_mean, r_std, space=space)

    return branch


def _uint8_sample(image: Any, max_side: int = 1024) -> np.ndarray:
    """A strided uint8 RGB copy of a reference image of any dtype."""
    from napari_dgseg.core.color.tissue import _as_uint8_rgb, _strided

    return np.ascontiguousarray(_as_uint8_rgb(np.asarray(_strided(image, max_side, "reference"))))


def _as_reference(reference: Any) -> Any:
    if isinstance(reference, (str,)) or hasattr(reference, "__fspath__"):
        from napari_dgseg.core.slide import open_image

        return np.asarray(open_image(reference).levels[-1])
    return reference


def _describe(reference: Any) -> str:
    if isinstance(reference, str) or hasattr(reference, "__fspath__"):
        return str(reference)
    if isinstance(reference, (tuple, list)):
        return "user (mean, std)"
    shape = getattr(reference, "shape", None)
    return f"user image {tuple(shape)}" if shape is not None else "user reference"


def normalized_image(adapter: Any, branch: Branch, *, block: int = 1024) -> np.ndarray:
    """The whole image through one branch, block by block (uint8 RGB, for display)."""
    out = np.zeros((adapter.height, adapter.width, 3), np.uint8)
    for y in range(0, adapter.height, block):
        for x in range(0, adapter.width, block):
            y1, x1 = min(y + block, adapter.height), min(x + block, adapter.width)
            rgb = torch.from_numpy(adapter.region(y, y1, x, x1)).permute(2, 0, 1)[None]
            with torch.inference_mode():
                res = branch(rgb)[0].permute(1, 2, 0).numpy()
            out[y:y1, x:x1] = np.round(res * 255.0).astype(np.uint8)
    return out
