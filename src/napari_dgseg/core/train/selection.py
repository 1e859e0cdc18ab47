"""Label-free model selection on a target domain: how much a model can be trusted there without labels.

An adapted model can only be judged on the target domain without labels, so adaptation scores
every checkpoint (the parent included) on a few held-out, unlabelled target tiles with signals
that need no ground truth:

``agreement``
    Mean Dice between the foreground predicted on a tile and on photometrically perturbed copies
    of it (brightness/contrast, haematoxylin/eosin strength, blur, noise). A model that has
    learned the target domain gives the same masks under changes that do not move a nucleus;
    test-time-augmentation consistency has been used this way for unsupervised model and
    checkpoint selection (e.g. Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
    Minimization", 2021, for entropy; Saito et al., "Tune it the Right Way: Unsupervised
    Validation of Domain Adaptation via Soft Neighborhood Density", 2021, for the principle).
``certainty``
    ``1 -`` the mean binary entropy (in bits) of the foreground probability.
``prior_match``
    How close the checkpoint's predicted foreground fraction is to that of a *target-statistics*
    copy of the parent (its BatchNorm statistics re-estimated on the training targets; Li et al.,
    "Revisiting Batch Normalization For Practical Domain Adaptation", 2016):
    ``-|f - f_ref| / f_ref``. Target statistics estimate the target's nucleus fraction well (their
    Dice is high in the benchmark) while MaNi checkpoints that drift into over- or
    under-segmentation move their fraction away from it; a class-prior check.
``score``
    The selection signal: ``prior_match`` (:data:`SCORE`). Chosen on the benchmark
    (``benchmarks/mani_adaptation.py``, Spearman with target Dice over all checkpoints): agreement
    and certainty were *not* usable there (Spearman -0.29 and -0.37 for hovernet): a model that
    drifts into over-segmentation (pale stroma called nuclei) is stable under perturbations and
    confident. They are still recorded. A degenerate model (everything background or everything
    foreground) is never selected: a checkpoint whose foreground fraction leaves ``[1/3, 3]``
    times the parent's is marked ``degenerate``.
``classical_agreement``
    Dice between the checkpoint's foreground and the classical method's on the same tiles
    (nuclei: haematoxylin colour deconvolution + Otsu; vessels: green-channel top-hat + Otsu;
    :mod:`napari_dgseg.core.classical`): a per-image adaptive reference that no adaptation can
    move, recorded for bundles whose task has a classical method.
``codebook_shift``
    For families with a codebook (SQ-VAE), the mean JS divergence of the tiles' code usage from
    the training usage; reported, not used in ``score`` (it measures the input, not the model).

The benchmark (``benchmarks/mani_adaptation.py``) reports the Spearman correlation between
``score`` and target Dice over the checkpoints of every run.

The best score alone once returned a drifted checkpoint on a held-out style (-0.22 Dice), so the
choice is guarded (:class:`DriftGuard`, default :data:`GUARD`, :func:`select_checkpoint`): a
checkpoint whose certainty fell more than 0.02 or whose agreement fell more than 0.01 below the
parent's shows drift, and neither it nor any later checkpoint is returned (early stopping at the
first sign of drift). The guard was chosen offline on the selection domains' stored checkpoints
and measured on the held-out styles' (``benchmarks/selection_rules.py``, docs/hovernet-mani.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Fractions of the parent's foreground area outside of which a checkpoint is degenerate.
DEGENERATE_RATIO = 3.0


@dataclass(frozen=True)
class Perturbation:
    """One photometric change: multiply H and E optical density, gamma, blur sigma, noise sigma."""

    h_gain: float
    e_gain: float
    gamma: float
    blur: float
    noise: float


#: The fixed perturbations every checkpoint is scored under (the same for all, so scores compare).
PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation(h_gain=0.75, e_gain=1.2, gamma=1.15, blur=0.0, noise=3.0),
    Perturbation(h_gain=1.25, e_gain=0.85, gamma=0.87, blur=0.8, noise=0.0),
    Perturbation(h_gain=1.0, e_gain=1.0, gamma=1.0, blur=1.3, noise=5.0),
)


def perturb(image: np.ndarray, p: Perturbation, seed: int = 0) -> np.ndarray:
    """Apply ``p`` to an ``(H, W, 3)`` uint8 RGB H&E image; returns uint8.

    The stain change scales the colour deconvolution of Ruifrok & Johnston ("Quantification of
    histochemical staining by color deconvolution", 2001): optical density is split into
    haematoxylin and eosin with :func:`skimage.color.rgb2hed`, scaled, and mixed back.
    """
    from scipy import ndimage as ndi
    from skimage.color import hed2rgb, rgb2hed

    img = image.astype(np.float32) / 255.0
    if p.h_gain != 1.0 or p.e_gain != 1.0:
        hed = rgb2hed(img)
        hed[..., 0] *= p.h_gain
        hed[..., 1] *= p.e_gain
        img = np.clip(hed2rgb(hed), 0.0, 1.0).astype(np.float32)
    if p.gamma != 1.0:
        img = img**p.gamma
    if p.blur > 0:
        img = ndi.gaussian_filter(img, (p.blur, p.blur, 0))
    if p.noise > 0:
        img = img + np.random.default_rng(seed).normal(0.0, p.noise / 255.0, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def foreground_probability(
    model: torch.nn.Module,
    image: np.ndarray,
    input_spec: Mapping[str, Any],
    *,
    device: Any = "cpu",
    discrete: Sequence[str] | None = None,
) -> np.ndarray:
    """``(H, W)`` float32 probability of "not background" from the model's blended logits."""
    from napari_dgseg.core.predict import run_tiled

    maps = run_tiled(
        model, image, input_spec=dict(input_spec), tile=512, overlap=32, device=device, batch=1,
        discrete=discrete,
    )
    logits = torch.from_numpy(np.asarray(maps["logits"], dtype=np.float32))
    return (1.0 - torch.softmax(logits, dim=0)[0]).numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def _entropy_bits(p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))


def label_free_signals(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    input_spec: Mapping[str, Any],
    *,
    device: Any = "cpu",
    threshold: float = 0.5,
    discrete: Sequence[str] | None = None,
    reference_foreground: float | None = None,
    classical_masks: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Label-free signals of ``model`` on unlabelled ``images`` (see the module docstring).

    Returns
    -------
    dict
        ``agreement``, ``certainty``, ``score`` (``agreement * certainty``) in [0, 1] and
        ``foreground`` (mean predicted foreground fraction).
    """
    was_training = model.training
    model.eval()
    agree, cert, fg, classical = [], [], [], []
    try:
        for i, img in enumerate(images):
            p0 = foreground_probability(model, img, input_spec, device=device, discrete=discrete)
            m0 = p0 >= threshold
            if classical_masks is not None:
                classical.append(_dice(m0, classical_masks[i]))
            cert.append(1.0 - _entropy_bits(p0))
            fg.append(float(m0.mean()))
            for j, pert in enumerate(PERTURBATIONS):
                pj = foreground_probability(model, perturb(img, pert, seed=97 * i + j),
                                            input_spec, device=device, discrete=discrete)
                agree.append(_dice(m0, pj >= threshold))
    finally:
        model.train(was_training)
    a, c = float(np.mean(agree)), float(np.mean(cert))
    f = float(np.mean(fg))
    sig = {"agreement": round(a, 4), "certainty": round(c, 4), "foreground": round(f, 4)}
    if classical:
        sig["classical_agreement"] = round(float(np.mean(classical)), 4)
    if reference_foreground is not None:
        ref = float(reference_foreground)
        sig["foreground_reference"] = round(ref, 4)
        sig["prior_match"] = round(-abs(f - ref) / max(ref, 1e-3), 4)
    return {**sig, "score": round(SCORES[SCORE](sig), 4)}


def reference_foreground(
    model: torch.nn.Module,
    train_images: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    input_spec: Mapping[str, Any],
    *,
    device: Any = "cpu",
    threshold: float = 0.5,
    discrete: Sequence[str] | None = None,
) -> float:
    """Foreground fraction of ``images`` predicted by a target-statistics copy of ``model``.

    The copy's BatchNorm statistics are re-estimated on ``train_images``
    (:func:`~napari_dgseg.core.train.norm_stats.reestimate_batchnorm`); a network without
    running statistics is used as it is. ``model`` itself is not changed.
    """
    import copy

    from napari_dgseg.core.train.norm_stats import reestimate_batchnorm

    ref = copy.deepcopy(model).to(device).eval()
    divisor = int(getattr(model, "divisor", 1))
    side = min(256, *(min(i.shape[:2]) for i in train_images))
    side = max(divisor, side - side % divisor)
    reestimate_batchnorm(ref, list(train_images), input_spec, size=side, device=device)
    fg = [float((foreground_probability(ref, img, input_spec, device=device, discrete=discrete)
                 >= threshold).mean()) for img in images]
    return float(np.mean(fg))


def classical_foreground(task: str | None, images: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """The classical method's foreground of every image for ``task`` (None without one)."""
    from napari_dgseg.core import classical

    if task == "nuclei":
        return [classical.classical_nuclei(np.asarray(im)[..., :3])[0] > 0 for im in images]
    if task == "vessels":
        return [classical.classical_vessels(np.asarray(im)[..., :3]) > 0 for im in images]
    return None


#: Candidate selection signals, each ``signals -> float`` (higher = better).
SCORES = {
    "prior_match": lambda s: float(s.get("prior_match", 0.0)),
    "agreement": lambda s: float(s["agreement"]),
    "certainty": lambda s: float(s["certainty"]),
    "agreement_x_certainty": lambda s: float(s["agreement"]) * float(s["certainty"]),
    "classical_agreement": lambda s: float(s.get("classical_agreement", 0.0)),
}
#: The signal adaptation selects by (``score``); chosen on the benchmark's Spearman correlations.
SCORE = "prior_match"
#: One line naming the selection signal (stored in adapted bundles' provenance).
SIGNAL_DOC = (
    f"score = {SCORE}: -|foreground fraction - that of the target-statistics copy of the parent| "
    "/ the latter; also recorded: agreement = Dice of foreground masks under 3 fixed photometric "
    "perturbations, certainty = 1 - mean binary entropy (bits); on held-out unlabelled target images"
)


@dataclass(frozen=True)
class DriftGuard:
    """When a scored checkpoint may replace the parent: guards against MaNi's drift.

    MaNi's MI term can drift into over-segmentation, and a drifting checkpoint can still match
    the reference nucleus fraction well (``prior_match``), so the best score alone is not safe.
    Drifting checkpoints lose certainty and stability under perturbations (certainty 0.92 ->
    0.5-0.6 on ``lymphoid-dense`` in ``docs/hovernet-mani.md``). A checkpoint is *drifted* when it
    is degenerate, or its ``certainty`` fell more than ``certainty_drop`` below the parent's, or
    its ``agreement`` more than ``agreement_drop`` below the parent's (``None``: that signal is
    not checked). A drifted checkpoint is never chosen; with ``stop_at_drift`` neither is any
    checkpoint after the first drifted one (early stopping at the first sign of drift, as a
    validation-based early stop would do with labels). A checkpoint replaces the parent only
    when its score beats the parent's by more than ``margin``.

    Chosen offline on the selection domains' stored checkpoints
    (``benchmarks/selection_rules.py``); :data:`GUARD` is the default.
    """

    margin: float = 0.0
    certainty_drop: float | None = None
    agreement_drop: float | None = None
    stop_at_drift: bool = False

    @property
    def name(self) -> str:
        """Short identifier, e.g. ``m0+c0.02+a0.01+stop`` (``-`` for an unchecked signal)."""
        c = "-" if self.certainty_drop is None else f"{self.certainty_drop:g}"
        a = "-" if self.agreement_drop is None else f"{self.agreement_drop:g}"
        return f"m{self.margin:g}+c{c}+a{a}" + ("+stop" if self.stop_at_drift else "")

    def describe(self) -> str:
        """One line saying what the guard checks (stored in the selection record)."""
        parts = ["never a degenerate checkpoint"]
        if self.certainty_drop is not None:
            parts.append(f"never one whose certainty fell more than {self.certainty_drop:g} "
                         "below the parent's")
        if self.agreement_drop is not None:
            parts.append(f"never one whose agreement fell more than {self.agreement_drop:g} "
                         "below the parent's")
        if self.stop_at_drift:
            parts.append("nothing after the first such checkpoint (early stop at drift)")
        parts.append("the parent unless the score beats the parent's"
                     + (f" by more than {self.margin:g}" if self.margin else ""))
        return "; ".join(parts)


#: No guard but the degenerate check: the best score wins (the rule before issue 11's study).
UNGUARDED = DriftGuard()
#: The default guard of ``adapt`` (chosen in ``benchmarks/selection_rules.py``; re-derived
#: 2026-12-02 by the same criterion on selection runs of the longer-trained parent scored through
#: the inference pipeline, which added the 0.005 margin; docs/hovernet-mani.md).
GUARD = DriftGuard(margin=0.005, certainty_drop=0.02, agreement_drop=0.01, stop_at_drift=True)


def drift_signs(row: Mapping[str, Any], parent: Mapping[str, Any], guard: DriftGuard,
                baseline: Mapping[str, Any] | None = None) -> list[str]:
    """Why ``row`` counts as drifted against ``parent`` under ``guard`` (empty: it does not).

    ``baseline``: the signals certainty and agreement are compared with (default ``parent``). A
    ``norm="dual"`` run passes the target-statistics model's (the parent with target BatchNorm
    statistics, the normalisation every dual checkpoint carries): the change of statistics alone
    lowers both signals, and that is not drift. The degenerate check stays against the parent.
    """
    base = parent if baseline is None else baseline
    signs = []
    if row.get("degenerate"):
        signs.append(f"degenerate (foreground {float(row['foreground']):.3f} against the "
                     f"parent's {float(parent['foreground']):.3f})")
    whose = "" if baseline is None else " (target-statistics baseline)"
    for key, limit in (("certainty", guard.certainty_drop), ("agreement", guard.agreement_drop)):
        if limit is None or key not in row or key not in base:
            continue
        fall = float(base[key]) - float(row[key])
        if fall > limit:
            signs.append(f"{key} fell {float(base[key]):.3f} -> {float(row[key]):.3f} "
                         f"(more than {limit:g}){whose}")
    return signs


def select_checkpoint(
    checkpoints: Sequence[Mapping[str, Any]], score: str = SCORE, guard: DriftGuard = GUARD,
    baseline: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Index of the checkpoint to return under ``guard``, and a record of why.

    Checkpoint 0 is the parent and always eligible. Among the eligible checkpoints (not drifted,
    and with ``stop_at_drift`` none after a drifted one) whose ``score`` beats the parent's by
    more than ``guard.margin``, the best wins; ties keep the earlier one; none keeps the parent.
    ``baseline`` (default: the parent) holds the certainty and agreement the guard compares
    with (:func:`drift_signs`); ``score``, margin and the degenerate check stay the parent's.

    Returns
    -------
    index, record
        ``record``: ``guard`` (its description), ``guard_name``, ``drifted`` (``iteration`` and
        ``signs`` of every drifted checkpoint), ``stopped_at`` (the iteration of the first drifted
        checkpoint when ``stop_at_drift`` ended the search, else None), ``passed_over`` (the
        iterations whose score was higher than the returned checkpoint's but that the guard ruled
        out) and ``note`` (one line, None when the guard changed nothing).
    """
    parent = checkpoints[0]
    parent_v = SCORES[score](parent)
    best, best_v = 0, parent_v
    drifted: list[dict[str, Any]] = []
    stopped_at = None
    ruled_out: list[int] = []
    for i, row in enumerate(checkpoints[1:], start=1):
        signs = drift_signs(row, parent, guard, baseline)
        if signs:
            drifted.append({"iteration": row.get("iteration", i), "signs": signs})
        if stopped_at is not None or signs:
            ruled_out.append(i)
            if signs and guard.stop_at_drift and stopped_at is None:
                stopped_at = row.get("iteration", i)
            continue
        v = SCORES[score](row)
        if v > best_v and v > parent_v + guard.margin:
            best, best_v = i, v
    passed = [checkpoints[i].get("iteration", i) for i in ruled_out
              if not checkpoints[i].get("degenerate") and SCORES[score](checkpoints[i]) > best_v
              and SCORES[score](checkpoints[i]) > parent_v + guard.margin]
    note = None
    if passed:
        signs_of = {d["iteration"]: d["signs"] for d in drifted}
        why = (f"drift from iteration {stopped_at} on: {'; '.join(signs_of[stopped_at])}"
               if stopped_at is not None else
               "; ".join(f"iteration {it}: {'; '.join(signs_of[it])}" for it in passed))
        note = f"the drift guard passed over checkpoint(s) {passed} with a higher {score} ({why})"
    described = guard.describe() + ("" if baseline is None else
                                    " (certainty and agreement compared with the "
                                    "target-statistics model's, not the parent's)")
    return best, {"guard": described, "guard_name": guard.name, "drifted": drifted,
                  "stopped_at": stopped_at, "passed_over": passed, "note": note}


def choose(checkpoints: Sequence[Mapping[str, Any]], score: str = SCORE,
           guard: DriftGuard = GUARD, baseline: Mapping[str, Any] | None = None) -> int:
    """Index of the checkpoint :func:`select_checkpoint` returns (the parent, index 0, on ties).

    ``guard=UNGUARDED`` is the plain best non-degenerate score.
    """
    return select_checkpoint(checkpoints, score, guard, baseline)[0]


def is_degenerate(signals: Mapping[str, float], parent: Mapping[str, float]) -> bool:
    """True when the foreground fraction left ``[1/DEGENERATE_RATIO, DEGENERATE_RATIO]`` x parent's."""
    f, f0 = float(signals["foreground"]), float(parent["foreground"])
    if f0 <= 1e-4:
        return f <= 1e-4
    return not (f0 / DEGENERATE_RATIO <= f <= f0 * DEGENERATE_RATIO)


def codebook_shift(bundle: Any, model: torch.nn.Module, images: Sequence[np.ndarray],
                   *, device: Any = "cpu") -> float | None:
    """Mean codebook shift score of ``images`` under ``model`` (None without a codebook record)."""
    if not bundle.family.supports("codebook"):
        return None
    from napari_dgseg.core import codebook as cb

    ref = cb.training_reference(bundle)
    if ref is None:
        return None
    cfg = bundle.config
    n_alpha = int(cfg.get("codebook_size", 64))
    n_beta = int(cfg.get("codebook_size_beta", 0) or n_alpha)  # as codebook.analyse_prediction
    scores = []
    for img in images:
        ua, ub = cb.image_usage(model, img, input_spec=dict(bundle.input_spec),
                                num_codes=(n_alpha, n_beta), device=device)
        scores.append(cb.shift_score(ua, ref["usage_alpha"], ub, ref.get("usage_beta")))
    return round(float(np.mean(scores)), 4)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 points."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    r = spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic
    return float(r) if np.isfinite(r) else float("nan")
