"""The guard behind DCIN ``auto``: normalize only where it cannot silently make things worse.

Colour normalization is on by default, so it decides the quality of every mask; but statistics
that describe the *composition* of a tissue as much as its colour can turn pink stroma
nucleus-dark on an image with few nuclei. Before the tiled run, the guard runs a **pilot pass**
on a few crops at the image's own resolution, once as the image is and once through the planned
colour branches, and compares what the model says (signals available at inference, no labels):

``agreement``
    Dice between the two foreground masks (foreground = any class but 0).
``fraction_none``, ``fraction_normalized``
    Foreground fractions of the two; their ratio says whether normalization grows or shrinks
    the mask.
``branch_disagreement``
    Mean disagreement (total-variation distance) between the normalized branches (GRIS vs
    LRIS), the uncertainty map of ``full``.
``colour_shift``
    How far the image's colours are from the references': the largest per-channel distance
    between the target's and a reference's l-alpha-beta means, in the reference's standard
    deviations, from composition-balanced statistics whatever the method. Small:
    the image already looks like the training images, and a large change of the mask must come
    from its composition, not its colours.

Decision, in this order:

0. for a model whose manifest records ``dcin.in_domain_shift`` (measured per model on selection
   tiles, ``benchmarks/dcin_in_domain.py``, written by ``scripts/record_dcin_auto.py``): the
   image's colours are those of a training image (the distance to the *nearest* image of the
   model's reference bank, :func:`nearest_training_colours`, is below that value): the model
   has seen these colours and normalization can only move them away from what it learned;
   **fall back** to ``none`` without a pilot pass (:func:`apply_guard`). Models without the
   record skip this rule (normalization can help an in-colour image for other reasons, e.g.
   contrast after blur, so the rule is only taken where it was measured);
1. the normalized mask is more than ``MAX_GROWTH`` times the original one (and at least
   ``MIN_GROWTH_POINTS`` of the pixels more), the failure normalization of a sparse image
   produces (stroma made nucleus-dark), while the colours are already close to the training
   colours (``colour_shift < COLOUR_SHIFT``): there is nothing for normalization to correct,
   so **fall back** to ``none``;
2. the two masks agree (``agreement >= AGREE``): normalization only refines; **keep** it;
3. the mask grows but the colours are far from the training colours (a different scanner or
   stain): the original prediction is the untrustworthy one; **keep** normalization;
4. the normalized branches disagree with each other (``branch_disagreement >
   MAX_BRANCH_DISAGREEMENT``): the references do not even agree on the answer; **fall back**;
5. otherwise **keep** it (normalization changes the mask, within limits, in the direction of
   fewer false nuclei or towards a consistent answer).

The thresholds are named constants, set on the training renderer's domains (see docs/dcin.md),
not on the images the benchmark reports. The decision, its reason and the signals go into
``provenance["dcin"]["guard"]`` and the Segment widget's DCIN panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "AGREE",
    "COLOUR_SHIFT",
    "IN_DOMAIN_KEY",
    "MAX_BRANCH_DISAGREEMENT",
    "MAX_GROWTH",
    "GuardDecision",
    "GuardSignals",
    "apply_guard",
    "decide",
    "nearest_training_colours",
    "pilot_windows",
]

#: Dice between the original and the normalized pilot masks above which normalization is kept.
AGREE: float = 0.8
#: Largest factor by which normalization may grow the foreground of an image whose colours are
#: already close to the training colours (with at least MIN_GROWTH_POINTS more pixels): such an
#: image has nothing for normalization to correct, so visible growth comes from its composition.
MAX_GROWTH: float = 1.05
#: ... and only when it grows it by at least this share of the pixels (tiny masks are noisy).
MIN_GROWTH_POINTS: float = 0.02
#: Colour distance (reference standard deviations) from which an image counts as out of domain.
COLOUR_SHIFT: float = 0.9
#: Manifest key (under ``dcin``) of a model's in-domain distance: the distance to the nearest
#: training image's colours (same units as COLOUR_SHIFT) below which an image counts as in the
#: training domain and is not normalized (rule 0; per model, from benchmarks/dcin_in_domain.py).
IN_DOMAIN_KEY: str = "in_domain_shift"
#: Largest mean GRIS/LRIS disagreement (0..1) the guard accepts.
MAX_BRANCH_DISAGREEMENT: float = 0.25
#: Side of a pilot crop (pixels) and how many crops at most.
PILOT_SIDE: int = 256
PILOT_CROPS: int = 2


@dataclass(frozen=True)
class GuardSignals:
    """What the pilot pass measured (fractions and agreement in ``[0, 1]``)."""

    fraction_none: float
    fraction_normalized: float
    agreement: float
    branch_disagreement: float | None
    pilot_pixels: int
    colour_shift: float = 0.0


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict: ``action`` is ``"keep"`` or ``"fallback"``, ``reason`` one line."""

    action: str
    reason: str
    signals: GuardSignals | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "reason": self.reason}
        if self.signals is not None:
            out["signals"] = {k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in asdict(self.signals).items()}
        return out


def decide(s: GuardSignals) -> GuardDecision:
    """The rule of the module docstring, on measured signals."""
    pct = f"{100 * s.fraction_none:.1f} % -> {100 * s.fraction_normalized:.1f} %"
    grows = (s.fraction_normalized - s.fraction_none >= MIN_GROWTH_POINTS
             and s.fraction_normalized > MAX_GROWTH * s.fraction_none)
    if grows and s.colour_shift < COLOUR_SHIFT:
        return GuardDecision(
            "fallback", f"normalization would grow the foreground {pct} (Dice "
            f"{s.agreement:.2f} with the original) although the colours are close to the "
            f"training colours (shift {s.colour_shift:.2f}): not applied", s)
    if s.agreement >= AGREE:
        return GuardDecision("keep", f"normalized and original masks agree (Dice "
                                     f"{s.agreement:.2f}; foreground {pct})", s)
    if grows:
        return GuardDecision(
            "keep", f"colours far from the training colours (shift {s.colour_shift:.2f}); "
            f"normalization grows the foreground {pct}", s)
    if s.branch_disagreement is not None and s.branch_disagreement > MAX_BRANCH_DISAGREEMENT:
        return GuardDecision("fallback", f"the normalized branches disagree ({s.branch_disagreement:.2f}"
                                         f" mean difference): not applied", s)
    return GuardDecision("keep", f"normalization changes the mask within limits (foreground {pct}, "
                                 f"Dice {s.agreement:.2f})", s)


def pilot_windows(height: int, width: int, tissue: np.ndarray | None = None,
                  side: int = PILOT_SIDE, count: int = PILOT_CROPS) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` crops ``(y0, y1, x0, x1)`` of ``side`` pixels, where there is most tissue.

    Candidates lie on a regular 3 x 3 grid over the image; ``tissue`` (a boolean mask of any
    resolution covering the image) ranks them. An image no larger than ``1.5 * side`` per side is
    one crop: itself.
    """
    if height <= 1.5 * side and width <= 1.5 * side:
        return [(0, height, 0, width)]
    sh, sw = min(side, height), min(side, width)
    ys = np.linspace(0, height - sh, 3).round().astype(int)
    xs = np.linspace(0, width - sw, 3).round().astype(int)
    cands = [(int(y), int(y) + sh, int(x), int(x) + sw) for y in ys for x in xs]
    if tissue is None or tissue.size == 0:
        score = [0.0] * len(cands)
    else:
        fy, fx = tissue.shape[0] / height, tissue.shape[1] / width
        score = [float(tissue[int(y0 * fy):max(int(y0 * fy) + 1, int(y1 * fy)),
                              int(x0 * fx):max(int(x0 * fx) + 1, int(x1 * fx))].mean())
                 for y0, y1, x0, x1 in cands]
    order = sorted(range(len(cands)), key=lambda i: (-score[i], i))
    return [cands[i] for i in order[:count]]


def _foreground(logits: np.ndarray) -> np.ndarray:
    if logits.shape[0] == 1:
        return logits[0] > 0
    return logits.argmax(axis=0) > 0


def colour_shift(target_stats: Sequence[float], references: Sequence[dict]) -> float:
    """Largest standardized distance between the target's and any reference's colour means."""
    t = np.asarray(target_stats, dtype=np.float64)[:3]
    out = 0.0
    for ref in references:
        s = np.asarray(ref.get("stats") or list(ref["mean"]) + list(ref["std"]), np.float64)
        out = max(out, float(np.max(np.abs(t - s[:3]) / np.maximum(s[3:6], 1e-6))))
    return out


def nearest_training_colours(bundle: Any, rgb8: np.ndarray,
                             target: np.ndarray | None = None) -> tuple[float, str] | None:
    """Colour distance from an image to the *nearest* image of the model's reference bank.

    The bank holds one entry per training image (``dgseg bank``), so a small distance says the
    image's colours are those of a training image: the model has seen them and there is nothing
    for normalization to correct. Distances are :func:`colour_shift`'s (composition-balanced
    l-alpha-beta means, in the reference's standard deviations). Returns ``(distance, name of
    the nearest training image)``, or None when the bundle has no bank or the image no tissue.
    ``target``: the image's composition-balanced statistics when the caller has them already.
    """
    from napari_dgseg.core.color.bank import BANK_FILE, reference_stats
    from napari_dgseg.core.color.normalizers import get_normalizer, tissue_samples

    bank = bundle.extra(BANK_FILE)
    if bank is None or "mean" not in bank:
        return None
    balanced = get_normalizer("balanced")
    if target is None:
        samples = tissue_samples(np.asarray(rgb8))
        if len(samples[0]) == 0:
            return None
        target = balanced.fit(*samples)
    names = (bundle.manifest.get("dcin") or {}).get("names") or []
    best, best_i = np.inf, 0
    for i in range(int(bank["mean"].shape[0])):
        d = colour_shift(target, [{"stats": reference_stats(bank, i, balanced)[0].tolist()}])
        if d < best:
            best, best_i = d, i
    return float(best), (names[best_i] if best_i < len(names) else f"training image #{best_i}")


def measure(bundle: Any, adapter: Any, branches: Sequence[Any], *, device: Any = "cpu",
            cancel: Any = None, tissue: np.ndarray | None = None,
            shift: float = 0.0) -> GuardSignals | None:
    """Run the pilot pass; None when the model has no class logits to compare."""
    from napari_dgseg.core.predict import run_tiled

    windows = pilot_windows(adapter.height, adapter.width, tissue)
    fg0, fg1, tv = [], [], []
    for y0, y1, x0, x1 in windows:
        crop = adapter.region(y0, y1, x0, x1)  # float RGB in [0, 1], read as inference reads it
        common = dict(input_spec=bundle.input_spec, tile=max(y1 - y0, x1 - x0, 64), overlap=0,
                      device=device, batch=1, cancel=cancel,
                      discrete=bundle.family.discrete_outputs)
        plain = run_tiled(bundle.model, crop, **common)
        normed = run_tiled(bundle.model, crop, branches=list(branches), **common)
        if "logits" not in plain or "logits" not in normed:
            return None
        fg0.append(_foreground(plain["logits"]).ravel())
        fg1.append(_foreground(normed["logits"]).ravel())
        if "uncertainty" in normed:
            tv.append(normed["uncertainty"].ravel())
    a, b = np.concatenate(fg0), np.concatenate(fg1)
    total = a.sum() + b.sum()
    agreement = 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)
    return GuardSignals(
        fraction_none=float(a.mean()),
        fraction_normalized=float(b.mean()),
        agreement=agreement,
        branch_disagreement=float(np.concatenate(tv).mean()) if tv else None,
        pilot_pixels=int(a.size),
        colour_shift=float(shift),
    )


def apply_guard(bundle: Any, adapter: Any, plan: Any, *, device: Any = "cpu",
                cancel: Any = None, shift: float | None = None,
                nearest: tuple[float, str] | None = None,
                in_domain_shift: float | None = None) -> GuardDecision:
    """Measure, decide, and change ``plan`` in place (fall back to the identity branch).

    ``shift`` is the colour distance (:func:`colour_shift`); default: from the plan's own
    statistics (:func:`~napari_dgseg.core.color.dcin.plan_dcin` passes the composition-balanced
    one). ``nearest`` is :func:`nearest_training_colours` of the image: below
    ``in_domain_shift`` (the model's record, None: rule 0 off) the guard falls back at once,
    without the pilot pass.
    """
    from napari_dgseg.core.color.normalizers import identity
    from napari_dgseg.core.color.tissue import tissue_mask

    if nearest is not None and in_domain_shift is not None and nearest[0] < in_domain_shift:
        decision = GuardDecision(
            "fallback", f"the colours are those of training image {nearest[1]} (distance "
            f"{nearest[0]:.2f} < {in_domain_shift:.2f}): the model knows them, nothing to "
            "correct; not applied", None)
        plan.guard = {**decision.as_dict(), "nearest_training_shift": round(nearest[0], 4),
                      "nearest_training_image": nearest[1],
                      "not_applied": {"mode": plan.mode, "references": plan.references}}
        plan.mode, plan.branches, plan.references = "none", [identity], []
        return decision
    step = max(1, int(np.ceil(max(adapter.height, adapter.width) / 256)))
    small = adapter.to_rgb_uint8(np.asarray(adapter.image[::step, ::step]))
    tissue = tissue_mask(small, fallback=False)
    with torch.inference_mode():
        if shift is None:
            shift = colour_shift(plan.target_stats, plan.references) if plan.target_stats else 0.0
        signals = measure(bundle, adapter, plan.branches, device=device, cancel=cancel,
                          tissue=tissue, shift=shift)
    if signals is None:
        decision = GuardDecision("keep", "the model has no class logits to compare; not checked",
                                 None)
    else:
        decision = decide(signals)
    plan.guard = decision.as_dict()
    if nearest is not None:
        plan.guard["nearest_training_shift"] = round(nearest[0], 4)
        plan.guard["nearest_training_image"] = nearest[1]
    if decision.action == "fallback":
        plan.guard["not_applied"] = {"mode": plan.mode, "references": plan.references}
        plan.mode = "none"
        plan.branches = [identity]
        plan.references = []
    return decision
