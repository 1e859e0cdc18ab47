"""HoVer-Net losses: NP cross-entropy + Dice, HV mean-squared error + gradient MSE.

``L = w_ce CE(np) + w_dice Dice(np) + w_mse MSE(hv) + w_msge MSGE(hv) [+ w_tp (CE + Dice)(tp)]``
with the reference weights 1, 1, 1, 1 (Graham et al. 2019). The MSGE compares the horizontal
derivative of the h map and the vertical derivative of the v map (5x5 Sobel-like kernels of the
reference, ``k_x = x / (x^2 + y^2)``) inside nuclei only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_dgseg.core.losses.segmentation import IGNORE_INDEX, ce_dice_loss


def gradient_kernels(size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``(kernel_h, kernel_v)`` of odd ``size``: ``x / (x^2 + y^2)`` and ``y / ...``."""
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    v, h = torch.meshgrid(r, r, indexing="ij")
    denom = h * h + v * v + 1e-15
    return h / denom, v / denom


def hv_gradients(hv: torch.Tensor, size: int = 5) -> torch.Tensor:
    """``(B, 2, H, W)``: d(h)/dx and d(v)/dy of an HV map ``(B, 2, H, W)``."""
    kh, kv = gradient_kernels(size)
    kh, kv = kh.to(hv), kv.to(hv)
    pad = size // 2
    gh = F.conv2d(hv[:, :1], kh.view(1, 1, size, size), padding=pad)
    gv = F.conv2d(hv[:, 1:2], kv.view(1, 1, size, size), padding=pad)
    return torch.cat([gh, gv], dim=1)


def hv_mse_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the ``valid`` pixels ``(B, H, W)`` bool of ``(B, 2, H, W)`` maps."""
    m = valid.unsqueeze(1).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (2.0 * m.sum()).clamp_min(1.0)


def hv_msge_loss(pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient error inside nuclei (``focus`` ``(B, H, W)`` bool), reference form."""
    g_pred = hv_gradients(pred)
    g_true = hv_gradients(target)
    m = focus.unsqueeze(1).to(pred.dtype)
    return ((g_pred - g_true) ** 2 * m).sum() / (m.sum() * 2.0 + 1e-8)


def hovernet_loss(
    outputs: dict[str, torch.Tensor],
    np_target: torch.Tensor,
    hv_target: torch.Tensor,
    *,
    tp_target: torch.Tensor | None = None,
    weights: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total HoVer-Net loss and its parts.

    Parameters
    ----------
    outputs : dict
        ``"np"`` NP logits ``(B, 2, H, W)``, ``"hv"`` ``(B, 2, H, W)``, optional ``"tp"`` type
        logits ``(B, T, H, W)``.
    np_target : Tensor
        ``(B, H, W)`` long 0/1 with ``255`` = ignore (padding).
    hv_target : Tensor
        ``(B, 2, H, W)`` from :func:`napari_dgseg.core.families.hovernet.targets.hv_targets`.
    tp_target : Tensor, optional
        ``(B, H, W)`` long type ids (255 = ignore); used only when ``outputs`` has ``"tp"``.
    weights : dict
        ``np`` (CE + Dice), ``mse``, ``msge``, ``tp``; missing keys weigh 1.

    Returns
    -------
    (Tensor, dict)
        The scalar loss and ``{"np", "hv_mse", "hv_msge"[, "tp"]}`` as floats.
    """
    w = {"np": 1.0, "mse": 1.0, "msge": 1.0, "tp": 1.0, **(weights or {})}
    valid = np_target != IGNORE_INDEX
    focus = np_target == 1
    l_np = ce_dice_loss(outputs["np"], np_target)
    l_mse = hv_mse_loss(outputs["hv"], hv_target, valid)
    l_msge = hv_msge_loss(outputs["hv"], hv_target, focus)
    loss = w["np"] * l_np + w["mse"] * l_mse + w["msge"] * l_msge
    logs = {
        "np": float(l_np.detach()),
        "hv_mse": float(l_mse.detach()),
        "hv_msge": float(l_msge.detach()),
    }
    if "tp" in outputs and tp_target is not None:
        l_tp = ce_dice_loss(outputs["tp"], tp_target)
        loss = loss + w["tp"] * l_tp
        logs["tp"] = float(l_tp.detach())
    return loss, logs
