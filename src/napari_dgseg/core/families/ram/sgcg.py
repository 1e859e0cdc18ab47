"""SgCG: semantic-guided contrastive generalisation in closed form ("SgCG: Semantic-Guided Contrastive Generalization for Medical Image Segmentation", anonymous ICLR 2025 submission, 2024, eqs. 1-13).

Per class ``k`` the running mean ``mu_k`` and covariance ``Sigma_k`` of the (projected,
L2-normalised) pixel features seen so far are kept with the exact pooled update of eqs. 2-3::

    mu    = (n mu_old + m mu_b) / (n + m)
    Sigma = (n Sigma_old + m Sigma_b) / (n + m) + n m (mu_old - mu_b)(mu_old - mu_b)^T / (n + m)^2

where ``m``, ``mu_b`` and ``Sigma_b`` are the count, mean and (population, ``1/m``) covariance of
class ``k`` in the new batch. The result equals the statistics of all features seen, in any
order. For a pixel feature ``q`` with class ``y`` the loss is the closed-form upper bound
(eqs. 10-11) of the expected contrastive loss (eq. 4) under Gaussian class distributions::

    L(q) = log sum_c exp(q.mu_c / tau + q^T Sigma_c q / (2 tau^2)) - q.mu_y / tau

Classes never seen yet (count 0) are left out of the sum. ``covariance="diag"`` keeps only the
variances (``q^T Sigma q = sum_d q_d^2 var_d``), ``"full"`` the whole ``D x D`` matrix.

Functions first (``batch_statistics``, ``merge_statistics``, ``sgcg_bound``), modules second
(:class:`ClassStatistics`, :class:`SgCGLoss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX

COVARIANCES = ("full", "diag")


def _check_covariance(kind: str) -> None:
    if kind not in COVARIANCES:
        raise InputError(f"SgCG covariance must be one of {COVARIANCES} (got {kind!r})")


def batch_statistics(
    features: Tensor, labels: Tensor, num_classes: int, covariance: str = "full"
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class count, mean and population covariance of one batch of features.

    Parameters
    ----------
    features : Tensor, shape (N, D)
    labels : Tensor, shape (N,)
        Class ids; ids outside ``[0, num_classes)`` (e.g. 255 = ignore) are skipped.
    num_classes : int
    covariance : ``"full"`` or ``"diag"``

    Returns
    -------
    count : Tensor, shape (C,), int64
    mean : Tensor, shape (C, D)
        Zero rows for absent classes.
    cov : Tensor, shape (C, D, D) (full) or (C, D) (diag)
        ``1/m`` covariance (eq. 3's ``Sigma'``); zero for absent classes.
    """
    _check_covariance(covariance)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise InputError(
            f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n, d = features.shape
    valid = (labels >= 0) & (labels < num_classes)
    feats = features[valid]
    lab = labels[valid].long()
    onehot = F.one_hot(lab, num_classes).to(features.dtype)  # (M, C)
    count = onehot.sum(0)  # (C,)
    safe = count.clamp(min=1.0)
    mean = onehot.t() @ feats / safe[:, None]  # (C, D)
    centred = feats - mean[lab]  # (M, D)
    if covariance == "full":
        # (C, D, D): sum_i onehot[i, c] centred[i] centred[i]^T
        cov = torch.einsum("mc,md,me->cde", onehot, centred, centred) / safe[:, None, None]
    else:
        cov = onehot.t() @ (centred * centred) / safe[:, None]
    return count.round().long(), mean, cov


def merge_statistics(
    n: Tensor, mean: Tensor, cov: Tensor, m: Tensor, mean_b: Tensor, cov_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Eqs. 2-3: pool running statistics ``(n, mean, cov)`` with a batch's ``(m, mean_b, cov_b)``.

    Parameters
    ----------
    n, m : Tensor, shape (C,)
        Counts so far and in the batch.
    mean, mean_b : Tensor, shape (C, D)
    cov, cov_b : Tensor, shape (C, D, D) or (C, D)
        Population covariances (full) or variances (diag).

    Returns
    -------
    (n + m, pooled mean, pooled covariance); classes with ``n + m = 0`` stay zero.
    """
    dtype = mean.dtype
    nf, mf = n.to(dtype), m.to(dtype)
    tot = nf + mf
    safe = tot.clamp(min=1.0)
    wa, wb = nf / safe, mf / safe
    new_mean = wa[:, None] * mean + wb[:, None] * mean_b
    delta = mean - mean_b  # (C, D)
    cross = nf * mf / (safe * safe)
    if cov.ndim == 3:
        outer = delta[:, :, None] * delta[:, None, :]
        new_cov = wa[:, None, None] * cov + wb[:, None, None] * cov_b + cross[:, None, None] * outer
    else:
        new_cov = wa[:, None] * cov + wb[:, None] * cov_b + cross[:, None] * delta * delta
    return n + m, new_mean, new_cov


def quadratic_form(q: Tensor, cov: Tensor) -> Tensor:
    """``q^T Sigma_c q`` for every pixel and class: ``(N, C)`` from ``q`` (N, D) and ``cov``.

    ``cov`` is ``(C, D, D)`` (full) or ``(C, D)`` (diagonal variances).
    """
    if cov.ndim == 3:
        return torch.einsum("nd,cde,ne->nc", q, cov, q)
    return (q * q) @ cov.t()


def sgcg_bound(
    q: Tensor,
    labels: Tensor,
    mean: Tensor,
    cov: Tensor,
    *,
    tau: float,
    present: Tensor | None = None,
) -> Tensor:
    """Closed-form SgCG loss per pixel (eq. 10).

    Parameters
    ----------
    q : Tensor, shape (N, D)
        Pixel features (L2-normalised in training; any values are accepted).
    labels : Tensor, shape (N,)
        Class id of every pixel, in ``[0, C)``.
    mean : Tensor, shape (C, D)
    cov : Tensor, shape (C, D, D) or (C, D)
    tau : float
        Temperature.
    present : Tensor, shape (C,), bool, optional
        Classes with statistics; the others are left out of the log-sum-exp. The pixels' own
        classes must be present.

    Returns
    -------
    Tensor, shape (N,)
        ``log sum_c exp(q.mu_c/tau + q^T Sigma_c q/(2 tau^2)) - q.mu_y/tau``.
    """
    if tau <= 0:
        raise InputError(f"SgCG temperature tau must be > 0 (got {tau})")
    lin = q @ mean.t() / tau  # (N, C)
    quad = quadratic_form(q, cov) / (2.0 * tau * tau)
    logits = lin + quad
    if present is not None:
        logits = logits.masked_fill(~present[None, :], float("-inf"))
    pos = lin.gather(1, labels.long()[:, None]).squeeze(1)
    return torch.logsumexp(logits, dim=1) - pos


def downsample_labels(
    target: Tensor, stride: int, num_classes: int, purity: float = 0.75
) -> Tensor:
    """Labels at ``1/stride`` resolution by majority; mixed cells become ``IGNORE_INDEX``.

    Parameters
    ----------
    target : Tensor, shape (B, H, W), long, ``IGNORE_INDEX`` = ignore
    stride : int
        1 returns ``target`` unchanged.
    purity : float
        A cell keeps its majority class only when that class covers >= ``purity`` of it.

    Returns
    -------
    Tensor, shape (B, H // stride, W // stride), long
    """
    if stride == 1:
        return target
    valid = (target >= 0) & (target < num_classes)
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    frac = F.avg_pool2d(onehot, stride)
    best, cls = frac.max(dim=1)
    return torch.where(best >= purity, cls, torch.full_like(cls, IGNORE_INDEX))


class ClassStatistics(nn.Module):
    """Running per-class count, mean and covariance (eqs. 2-3), kept as buffers.

    Parameters
    ----------
    num_classes : int
    dim : int
        Feature dimension D.
    covariance : ``"full"`` (``(C, D, D)``) or ``"diag"`` (``(C, D)``)

    Buffers ``count`` (C,) int64, ``mean`` (C, D), ``cov`` start at zero (as in the paper).
    """

    def __init__(self, num_classes: int, dim: int, covariance: str = "full") -> None:
        super().__init__()
        _check_covariance(covariance)
        self.num_classes = num_classes
        self.dim = dim
        self.covariance = covariance
        cov_shape = (num_classes, dim, dim) if covariance == "full" else (num_classes, dim)
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(num_classes, dim))
        self.register_buffer("cov", torch.zeros(cov_shape))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Fold a batch ``features`` (N, D) with ``labels`` (N,) into the statistics (detached)."""
        m, mean_b, cov_b = batch_statistics(
            features.detach().to(self.mean.dtype), labels, self.num_classes, self.covariance
        )
        n, mean, cov = merge_statistics(self.count, self.mean, self.cov, m, mean_b, cov_b)
        self.count.copy_(n)
        self.mean.copy_(mean)
        self.cov.copy_(cov)

    @property
    def present(self) -> Tensor:
        """``(C,)`` bool: classes with at least one feature seen."""
        return self.count > 0


class SgCGLoss(nn.Module):
    """SgCG as a module: update the statistics from detached features, then the mean bound.

    Parameters
    ----------
    num_classes, dim, covariance : see :class:`ClassStatistics`.
    tau : float
        Temperature.
    """

    def __init__(
        self, num_classes: int, dim: int, *, tau: float = 0.1, covariance: str = "full"
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise InputError(f"SgCG temperature tau must be > 0 (got {tau})")
        self.tau = tau
        self.stats = ClassStatistics(num_classes, dim, covariance)

    def forward(self, q: Tensor, labels: Tensor, *, update: bool = True) -> Tensor:
        """Mean bound over the labelled pixels of ``q`` (N, D); 0 (with a graph) if there are none.

        ``labels`` (N,) may hold ``IGNORE_INDEX`` (or any id outside ``[0, C)``): those pixels are
        skipped both in the update and in the loss.
        """
        if update:
            self.stats.update(q, labels)
        valid = (labels >= 0) & (labels < self.stats.num_classes)
        if valid.any():
            valid = valid & self.stats.present[labels.clamp(0, self.stats.num_classes - 1)]
        if not bool(valid.any()):
            return q.sum() * 0.0
        per_pixel = sgcg_bound(
            q[valid],
            labels[valid],
            self.stats.mean.to(q.dtype),
            self.stats.cov.to(q.dtype),
            tau=self.tau,
            present=self.stats.present,
        )
        return per_pixel.mean()
