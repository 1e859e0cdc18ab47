"""Loss terms of the SQ-VAE domain-generalisation model (Saito & Hotta, "Domain Generalization using Category Information Independent of Domain Differences", 2025, eqs. 1-12).

Each term is a plain typed function on tensors so it can be tested against hand-computed values;
:func:`napari_dgseg.core.families.sqvae.model.sqvae_training_loss` combines them with the weights of the
config. Where the paper's formula is unbounded or ambiguous, the docstring says what is done and
``docs/sqvae.md`` explains why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_dgseg.core.losses.segmentation import IGNORE_INDEX

__all__ = [
    "code_loss",
    "code_weights",
    "continuous_loss",
    "domain_loss",
    "group_mass",
    "log_mse_loss",
    "negative_entropy",
    "squared_correlation",
]


def _flatten_pixels(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B*H*W, C)``; ``(n, C)`` passes through."""
    if z.dim() == 4:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    if z.dim() == 2:
        return z
    raise ValueError(f"expected (B, C, H, W) or (n, C), got shape {tuple(z.shape)}")


def squared_correlation(a: torch.Tensor, b: torch.Tensor, *, ridge: float = 1e-3) -> torch.Tensor:
    """DeepCCA-style squared correlation between two sets of channels (eqs. 1 and 2).

    The canonical correlations ``rho_i`` of ``a`` and ``b`` are the singular values of
    ``T = S_aa^-1/2 S_ab S_bb^-1/2``; the loss is their mean square,
    ``||T||_F^2 / min(C_a, C_b) = trace(S_aa^-1 S_ab S_bb^-1 S_ba) / min(C_a, C_b)``, which is 0
    for uncorrelated halves and 1 for identical ones (whatever the number of channels). Channels
    are standardised first and ``ridge`` is added to the diagonals of ``S_aa`` and ``S_bb`` (the
    DeepCCA regulariser), so the value does not depend on the feature scale. The trace form uses
    Cholesky solves instead of an eigen-decomposition: same value, gradients stay finite when
    eigenvalues repeat.

    Parameters
    ----------
    a : Tensor
        ``(B, C_a, H, W)`` or ``(n, C_a)`` (e.g. Z1 or Z1').
    b : Tensor
        ``(B, C_b, H, W)`` or ``(n, C_b)``, same pixels as ``a``.
    ridge : float
        Added to the diagonal of both within-set correlation matrices.

    Returns
    -------
    Tensor
        Scalar in ``[0, 1)``.
    """
    x = _flatten_pixels(a).double()
    y = _flatten_pixels(b).double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"a and b cover different pixel counts ({x.shape[0]} vs {y.shape[0]})")
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two pixels to compute a correlation")
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    x = x / (x.pow(2).mean(dim=0, keepdim=True).sqrt() + 1e-8)
    y = y / (y.pow(2).mean(dim=0, keepdim=True).sqrt() + 1e-8)
    s_xx = x.T @ x / n + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    s_yy = y.T @ y / n + ridge * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    s_xy = x.T @ y / n
    lx = torch.linalg.cholesky(s_xx)
    ly = torch.linalg.cholesky(s_yy)
    # S_xx^-1 S_xy and S_yy^-1 S_yx, then the trace of their product.
    u = torch.cholesky_solve(s_xy, lx)
    v = torch.cholesky_solve(s_xy.T, ly)
    total = (u * v.T).sum()
    return (total / min(x.shape[1], y.shape[1])).to(a.dtype)


def _class_pixels(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of ``z`` ``(n, C)`` and their labels ``(n,)``, ignore pixels removed."""
    flat = _flatten_pixels(z)
    t = target.reshape(-1)
    keep = t != IGNORE_INDEX
    return flat[keep], t[keep]


def domain_loss(
    z1: torch.Tensor, target: torch.Tensor, t: torch.Tensor, *, margin: float = 16.0
) -> torch.Tensor:
    """L_domain with representative vectors ``t_k`` (eq. 3).

    ``sum_i { mean_{p: y_p = i} ||t_i - z_p||^2 - 1/2 sum_j min(||t_i - t_j||^2, margin) }``.
    The paper's push term ``-sum_j ||t_i - t_j||^2 / 2`` has no lower bound (the vectors would run
    off to infinity), so each squared distance is capped at ``margin``; the pull term is a mean
    over the class's pixels so its size does not depend on the crop size. Classes absent from the
    batch contribute no pull term.

    Parameters
    ----------
    z1 : Tensor
        ``(B, C1, H, W)`` class features Z1.
    target : Tensor
        ``(B, H, W)`` long class ids (255 = ignore).
    t : Tensor
        ``(K, C1)`` representative vectors.
    margin : float
        Cap of the squared distance between two representatives in the push term.
    """
    pix, lab = _class_pixels(z1, target)
    k = t.shape[0]
    pull = z1.new_zeros(())
    for i in range(k):
        sel = pix[lab == i]
        if sel.shape[0]:
            pull = pull + (sel - t[i]).pow(2).sum(dim=1).mean()
    d2 = (t[:, None, :] - t[None, :, :]).pow(2).sum(dim=-1)
    push = 0.5 * d2.clamp(max=margin).sum()
    return pull - push


def group_mass(probs: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probability mass of each class group: ``(B, N, H, W)`` -> ``(B, K, H, W)``.

    ``groups`` ``(N,)`` long gives the class group of each code.
    """
    b, n, h, w = probs.shape
    out = probs.new_zeros((b, num_classes, h, w))
    return out.index_add(1, groups.to(probs.device), probs)


def code_weights(probs: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Uncertainty weights of eqs. 11-12, generalised to K groups.

    ``dif = |max(P^0) - max(P^1)|`` per pixel (eq. 11), for K groups the gap between the largest
    and the second-largest group maximum; ``w = dif / max(dif)`` over all pixels of the batch
    (eq. 12). The weights are constants (no gradient); where every ``dif`` is 0 they are all 1.

    Parameters
    ----------
    probs : Tensor
        ``(B, N, H, W)`` code probabilities P1.
    groups : Tensor
        ``(N,)`` class group of each code.
    num_classes : int
        Number of groups K.

    Returns
    -------
    Tensor
        ``(B, H, W)`` weights in ``[0, 1]``.
    """
    p = probs.detach()
    b, n, h, w = p.shape
    idx = groups.to(p.device).view(1, n, 1, 1).expand(b, n, h, w)
    gmax = p.new_full((b, num_classes, h, w), -1.0).scatter_reduce(
        1, idx, p, reduce="amax", include_self=True
    )
    top2 = gmax.topk(2, dim=1).values
    dif = (top2[:, 0] - top2[:, 1]).abs()
    peak = dif.max()
    if float(peak) <= 0:
        return torch.ones_like(dif)
    return dif / peak


def code_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    groups: torch.Tensor,
    num_classes: int,
    *,
    weights: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """L_code (eq. 10): ``log(eps + mean_p w_p (1 - sum_{j in G(y_p)} P_pj)^2)``.

    The probability mass of the pixel's own class group should be 1. The log is taken of the
    weighted mean over pixels (the weights multiply inside the log as in eq. 10; a per-pixel log
    would cancel them from the gradient and is unbounded for perfect pixels); ``eps`` keeps it
    finite when every pixel is perfect.

    Parameters
    ----------
    probs : Tensor
        ``(B, N, H, W)`` code probabilities P1 (Gumbel-softmax in training).
    target : Tensor
        ``(B, H, W)`` long class ids (255 = ignore).
    groups : Tensor
        ``(N,)`` class group of each code.
    num_classes : int
        K.
    weights : Tensor, optional
        ``(B, H, W)`` per-pixel weights (eqs. 11-12, :func:`code_weights`); default all 1.
    """
    mass = group_mass(probs, groups, num_classes)
    valid = target != IGNORE_INDEX
    own = mass.gather(1, target.clamp(0, num_classes - 1).unsqueeze(1)).squeeze(1)
    w = torch.ones_like(own) if weights is None else weights.to(own.dtype)
    err = w * (1.0 - own).pow(2)
    count = valid.sum().clamp(min=1)
    mean = (err * valid).sum() / count
    return torch.log(eps + mean)


def log_mse_loss(x: torch.Tensor, x_rec: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Log-MSE reconstruction (eq. 9, SQ-VAE's Gaussian decoder): ``0.5 * log(mean (x - x')^2)``.

    SQ-VAE writes ``dim_x / 2 * log(sum (x - x')^2 / B)``; dividing by ``dim_x`` (= C H W) gives
    ``0.5 * log(MSE) + 0.5 * log(dim_x)``: the same gradient up to the factor ``1 / dim_x``, on the
    per-pixel scale of the other terms. The constant is dropped.

    Parameters
    ----------
    x, x_rec : Tensor
        ``(B, C, H, W)`` input and reconstruction.
    """
    return 0.5 * torch.log(F.mse_loss(x_rec, x) + eps)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """SQ-VAE's discrete KL term: ``mean over positions of sum_j p_j log p_j``, ``p = softmax``.

    Equals ``KL(p || uniform) - log N``: ``-log N`` for uniform code probabilities, 0 for one-hot.

    Parameters
    ----------
    logits : Tensor
        ``(B, N, H, W)`` code logits (no Gumbel noise, no temperature).
    """
    logp = torch.log_softmax(logits, dim=1)
    return (logp.exp() * logp).sum(dim=1).mean()


def continuous_loss(z: torch.Tensor, z_q: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """SQ-VAE's continuous KL term: ``mean over positions of 0.5 / sigma^2 * ||z - z_q||^2``.

    Parameters
    ----------
    z, z_q : Tensor
        ``(B, C, H, W)`` features and their (soft) quantisation.
    variance : Tensor
        Scalar ``sigma^2``.
    """
    return (0.5 / variance) * (z - z_q).pow(2).sum(dim=1).mean()
