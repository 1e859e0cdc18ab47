"""Codebook analysis of models with a codebook: code usage, training usage, domain-shift score.

A model of a family with the ``codebook`` capability (an SQ-VAE) assigns every pixel a class code (``e_alpha``, shown as the codebook-index map)
and a domain code (``e_beta``). The *code usage* of an image is the fraction of its pixels using
each code. After training, :func:`store_training_usage` stores in the bundle
(``codebook.safetensors``):

* ``usage_alpha`` ``(N_alpha,)`` and ``usage_beta`` ``(N_beta,)``: the mean code usage over the
  training images;
* ``calibration_scores`` ``(n,)``: the shift score of each training-domain image against the usage
  of the *other* images (leave-one-out, so the image's own pixels never count in its reference);
* ``threshold`` ``(1,)``: ``max(mean + 3 sd, 1.5 max)`` of those scores (sd floor 1e-4): above
  it an image is flagged out of domain.

The *domain-shift score* (:func:`shift_score`) is the Jensen-Shannon divergence (base 2, in
[0, 1]) between an image's usage and the training usage, averaged over the two codebooks.
:func:`calibrate_shift` re-calibrates the threshold on a labelled-or-not validation set.

Also here: :func:`group_colors`, one hue family per class group, for the index-map display.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.registry import families_supporting

__all__ = [
    "CodebookReport",
    "analyse_prediction",
    "calibrate_shift",
    "code_groups",
    "code_groups_np",
    "code_usage",
    "group_colors",
    "image_usage",
    "js_divergence",
    "require_codebook",
    "shift_score",
    "store_training_usage",
    "training_reference",
]

EXTRA = "codebook"
#: Threshold = mean + THRESHOLD_SD * std of the calibration scores.
THRESHOLD_SD = 3.0
#: Lower bound of the std used for the threshold (few, very similar calibration images).
MIN_SD = 1e-4
#: The threshold is also at least MAX_FACTOR times the largest calibration score.
MAX_FACTOR = 1.5


def code_usage(indices: np.ndarray, num_codes: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Fraction of pixels using each code.

    Parameters
    ----------
    indices : np.ndarray
        ``(H, W)`` (or any shape) integer code indices in ``[0, num_codes)``.
    num_codes : int
        Codebook size N.
    mask : np.ndarray, optional
        Boolean, same shape: only these pixels count.

    Returns
    -------
    np.ndarray
        ``(N,)`` float64 summing to 1 (all zeros when no pixel counts).
    """
    idx = np.asarray(indices)
    if mask is not None:
        idx = idx[np.asarray(mask, dtype=bool)]
    idx = idx.ravel().astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_codes):
        raise InputError(
            f"code indices span [{idx.min()}, {idx.max()}] but the codebook has {num_codes} codes; "
            "was the index map made by another model?"
        )
    counts = np.bincount(idx, minlength=num_codes).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint supports).

    ``p`` and ``q`` are non-negative and normalised here (each to sum 1).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise InputError(f"usage histograms differ in length ({p.size} vs {q.size})")
    if p.sum() <= 0 or q.sum() <= 0:
        raise InputError("an empty usage histogram has no divergence; did the image have pixels?")
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0))


def shift_score(
    usage_alpha: np.ndarray,
    reference_alpha: np.ndarray,
    usage_beta: np.ndarray | None = None,
    reference_beta: np.ndarray | None = None,
) -> float:
    """Domain-shift score: mean JS divergence of the image's code usage from the training usage.

    Parameters
    ----------
    usage_alpha, reference_alpha : np.ndarray
        ``(N_alpha,)`` class-code usage of the image and of the training data.
    usage_beta, reference_beta : np.ndarray, optional
        ``(N_beta,)`` domain-code usage; when both are given the score is the mean of the two
        divergences, else the class-code divergence alone.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    scores = [js_divergence(usage_alpha, reference_alpha)]
    if usage_beta is not None and reference_beta is not None:
        scores.append(js_divergence(usage_beta, reference_beta))
    return float(np.mean(scores))


def code_groups(num_codes: int, num_classes: int) -> torch.Tensor:
    """Class group of each code: K contiguous groups, sizes differing by at most one.

    ``code_groups(10, 3)`` -> ``[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]`` (the first groups take the
    remainder). Returns a ``(num_codes,)`` long tensor.
    """
    if num_codes < num_classes:
        raise ValueError(f"{num_codes} codes cannot form {num_classes} non-empty groups")
    sizes = [
        num_codes // num_classes + (1 if k < num_codes % num_classes else 0)
        for k in range(num_classes)
    ]
    # output_size lets the network be built on the meta device (bundle size checks)
    return torch.repeat_interleave(torch.arange(num_classes), torch.tensor(sizes), output_size=num_codes)


def code_groups_np(num_codes: int, num_classes: int) -> np.ndarray:
    """Class group of each code ``(N,)`` int (K contiguous groups, as the model uses)."""
    return code_groups(num_codes, num_classes).numpy()


def group_colors(
    num_codes: int, num_classes: int, class_colors: dict[int, Sequence[int]] | None = None
) -> dict[int, tuple[float, float, float, float]]:
    """RGBA colour (floats in [0, 1]) of every code: one hue family per class group.

    Group ``g`` takes the hue of its class colour (``class_colors[g]``, 0-255 RGB) when given and
    saturated, else evenly spaced hues starting at blue for the background; the codes inside a
    group step through lightness (0.30 - 0.80) and saturation so that neighbouring codes differ
    while the whole group reads as one colour family.

    Returns
    -------
    dict
        ``{code index: (r, g, b, 1.0)}`` for every code.
    """
    groups = code_groups_np(num_codes, num_classes)
    hues = []
    for g in range(num_classes):
        hue = (0.6 + g / num_classes) % 1.0
        if class_colors and g in class_colors:
            r, gg, b = (float(v) / 255.0 for v in list(class_colors[g])[:3])
            h, lum, s = colorsys.rgb_to_hls(r, gg, b)
            if s > 0.25 and 0.1 < lum < 0.9 and all(abs(h - o) > 0.08 for o in hues):
                hue = h
        hues.append(hue)
    out: dict[int, tuple[float, float, float, float]] = {}
    for g in range(num_classes):
        members = np.flatnonzero(groups == g)
        n = len(members)
        for rank, code in enumerate(members):
            frac = rank / max(1, n - 1)
            # Interleave light and dark so adjacent code indices are easy to tell apart.
            light = 0.30 + 0.50 * (frac if rank % 2 == 0 else 1.0 - frac)
            sat = 0.95 - 0.35 * ((rank * 7) % 5) / 4.0
            hue = (hues[g] + 0.04 * (((rank * 3) % 5) - 2) / 2.0) % 1.0
            r, gg, b = colorsys.hls_to_rgb(hue, light, sat)
            out[int(code)] = (r, gg, b, 1.0)
    return out


@dataclass
class CodebookReport:
    """Code usage of one image against the training data.

    Attributes
    ----------
    usage : np.ndarray
        ``(N_alpha,)`` class-code usage of the image.
    reference : np.ndarray or None
        ``(N_alpha,)`` training usage (None when the bundle has none).
    domain_usage, domain_reference : np.ndarray or None
        The same for the domain codes ``e_beta``.
    score : float or None
        Domain-shift score (None without a training reference).
    threshold : float or None
        Calibrated warning threshold.
    groups : np.ndarray
        ``(N_alpha,)`` class group of each code.
    class_names : tuple of str
    """

    usage: np.ndarray
    reference: np.ndarray | None
    domain_usage: np.ndarray | None
    domain_reference: np.ndarray | None
    score: float | None
    threshold: float | None
    groups: np.ndarray
    class_names: tuple[str, ...] = ()
    extras: dict = field(default_factory=dict)

    @property
    def out_of_domain(self) -> bool:
        """True when the score exceeds the threshold."""
        return self.score is not None and self.threshold is not None and self.score > self.threshold

    @property
    def codes_used(self) -> int:
        """Number of class codes used by at least one pixel."""
        return int(np.count_nonzero(self.usage))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (what ``dgseg codebook`` prints per image)."""
        top = np.argsort(self.usage)[::-1][:10]
        return {
            "shift_score": None if self.score is None else round(self.score, 5),
            "threshold": None if self.threshold is None else round(self.threshold, 5),
            "out_of_domain": self.out_of_domain,
            "codes_used": self.codes_used,
            "codes_used_in_training": None
            if self.reference is None
            else int(np.count_nonzero(self.reference)),
            "top_codes": [
                {
                    "code": int(c),
                    "class": self._class_of(int(c)),
                    "fraction": round(float(self.usage[c]), 5),
                }
                for c in top
                if self.usage[c] > 0
            ],
            "usage": [round(float(v), 6) for v in self.usage],
        }

    def _class_of(self, code: int) -> str:
        g = int(self.groups[code])
        return self.class_names[g] if g < len(self.class_names) else str(g)


def require_codebook(bundle: Any) -> None:
    """Refuse a bundle whose family has no codebook, naming the families that have one.

    Raises
    ------
    InputError
        If ``bundle.family`` does not declare the ``codebook`` capability.
    """
    if not bundle.family.supports("codebook"):
        raise InputError(
            f"model {bundle.name!r} is a {bundle.family_name!r} model, which has no codebook; "
            f"codebook maps need a model of one of these families: "
            f"{families_supporting('codebook')} (see `dgseg models`)"
        )


def training_reference(bundle: Any) -> dict[str, np.ndarray] | None:
    """The stored training usage of a bundle: ``usage_alpha``, ``usage_beta``, ``threshold``,
    ``calibration_scores`` as numpy arrays, or None when the bundle has no codebook record."""
    extra = bundle.extra(EXTRA)
    if not extra:
        return None
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in extra.items()}


def analyse_prediction(prediction: Any, bundle: Any) -> CodebookReport:
    """Code usage and shift score of a :class:`Prediction` made by a bundle with a codebook."""
    require_codebook(bundle)
    cfg = bundle.config
    n_alpha = int(cfg.get("codebook_size", 64))
    n_beta = int(cfg.get("codebook_size_beta", 0) or n_alpha)
    if prediction.codebook_indices is None:
        raise InputError(
            "the prediction holds no codebook indices; run the model on the image again"
        )
    usage = prediction.extras.get("code_usage")
    if usage is None:
        usage = code_usage(prediction.codebook_indices, n_alpha)
    dom = prediction.extras.get("domain_code_usage")
    if dom is None and prediction.extras.get("domain_code_indices") is not None:
        dom = code_usage(prediction.extras["domain_code_indices"], n_beta)
    ref = training_reference(bundle)
    score = threshold = None
    ref_a = ref_b = None
    if ref is not None:
        ref_a, ref_b = ref["usage_alpha"], ref.get("usage_beta")
        score = shift_score(usage, ref_a, dom, ref_b)
        threshold = float(ref["threshold"][0])
    return CodebookReport(
        usage=np.asarray(usage, np.float64),
        reference=ref_a,
        domain_usage=None if dom is None else np.asarray(dom, np.float64),
        domain_reference=ref_b,
        score=score,
        threshold=threshold,
        groups=code_groups_np(n_alpha, len(bundle.class_names) or int(cfg["num_classes"])),
        class_names=bundle.class_names,
    )


def image_usage(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    input_spec: dict,
    num_codes: tuple[int, int],
    device: Any = "cpu",
    tile: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Class- and domain-code usage ``((N_alpha,), (N_beta,))`` of one image (tiled inference)."""
    from napari_dgseg.core.predict import run_tiled

    maps = run_tiled(
        model, image, input_spec=input_spec, tile=tile, overlap=32, device=device, batch=2
    )
    return (
        code_usage(maps["codebook_indices"], num_codes[0]),
        code_usage(maps["domain_code_indices"], num_codes[1]),
    )


def _leave_one_out_scores(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Score of each row against the mean of the other rows (``(n, N)`` usages)."""
    n = alpha.shape[0]
    if n < 2:
        return np.zeros(0)
    sa, sb = alpha.sum(0), beta.sum(0)
    return np.array(
        [
            shift_score(alpha[i], (sa - alpha[i]) / (n - 1), beta[i], (sb - beta[i]) / (n - 1))
            for i in range(n)
        ]
    )


def _threshold(scores: np.ndarray) -> float:
    """``max(mean + 3 sd, 1.5 max)`` of the calibration scores (at most 1; 1 without scores)."""
    if scores.size == 0:
        return 1.0
    sd = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    value = max(scores.mean() + THRESHOLD_SD * max(sd, MIN_SD), MAX_FACTOR * scores.max())
    return float(min(1.0, value))


def _samples(domains: Iterable[Any], per_domain: int) -> list[Sample]:
    out: list[Sample] = []
    for item in domains:
        samples = item[1] if isinstance(item, tuple) else [item]
        out.extend(list(samples)[:per_domain])
    return out


def store_training_usage(
    bundle: Any,
    domains: Sequence[tuple[str, Sequence[Sample]]],
    *,
    per_domain: int = 12,
    device: Any = "auto",
) -> dict[str, np.ndarray]:
    """Compute and store the training code usage and the shift threshold (``finish_training``).

    Parameters
    ----------
    bundle : Bundle
        A freshly trained bundle of a family with a codebook.
    domains : sequence of (name, samples)
        The training domains; up to ``per_domain`` images of each are run through the model.
    device : str
        Inference device.

    Returns
    -------
    dict
        What was stored (numpy): ``usage_alpha``, ``usage_beta``, ``calibration_scores``,
        ``threshold``.
    """
    samples = _samples(domains, per_domain)
    return _store(bundle, samples, device)


def calibrate_shift(bundle: Any, samples: Sequence[Sample], *, device: Any = "auto") -> dict:
    """Re-calibrate the warning threshold on in-domain validation images (labels not needed).

    The training usage stays; each validation image is scored against it and the threshold
    becomes ``max(mean + 3 sd, 1.5 max)`` of those scores. Save the bundle afterwards to keep the result.
    """
    require_codebook(bundle)
    ref = training_reference(bundle)
    if ref is None:
        raise InputError(f"model {bundle.name!r} has no training code usage; retrain it")
    alpha, beta = _usages(bundle, samples, device)
    scores = np.array(
        [
            shift_score(a, ref["usage_alpha"], b, ref["usage_beta"])
            for a, b in zip(alpha, beta, strict=True)
        ]
    )
    stored = {**ref, "calibration_scores": scores, "threshold": np.array([_threshold(scores)])}
    bundle.set_extra(
        EXTRA, {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in stored.items()}
    )
    return stored


def _usages(bundle: Any, samples: Sequence[Sample], device: Any) -> tuple[np.ndarray, np.ndarray]:
    from napari_dgseg.core.device import select_device

    if not samples:
        raise InputError("no images to compute the code usage from")
    cfg = bundle.config
    n_alpha = int(cfg["codebook_size"])
    n_beta = int(cfg.get("codebook_size_beta", 0) or n_alpha)
    dev = select_device(device)
    model = bundle.model
    rows = [
        image_usage(
            model, s.image, input_spec=bundle.input_spec, num_codes=(n_alpha, n_beta), device=dev
        )
        for s in samples
    ]
    model.cpu()
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _store(bundle: Any, samples: Sequence[Sample], device: Any) -> dict:
    require_codebook(bundle)
    alpha, beta = _usages(bundle, samples, device)
    scores = _leave_one_out_scores(alpha, beta)
    stored = {
        "usage_alpha": alpha.mean(0),
        "usage_beta": beta.mean(0),
        "calibration_scores": scores,
        "threshold": np.array([_threshold(scores)]),
    }
    bundle.set_extra(
        EXTRA, {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in stored.items()}
    )
    return stored
