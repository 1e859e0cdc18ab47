"""The ``hovernet`` family: nucleus instances from NP + HV (+ optional TP) decoders.

HoVer-Net (Graham et al. 2019) predicts, per pixel, whether it belongs to a nucleus (NP branch,
2 classes), its horizontal and vertical distance to the nucleus centre (HV branch, 2 maps) and
optionally the nucleus type (TP branch). Instances come from the HV maps' discontinuities through
a marker-controlled watershed (:mod:`napari_dgseg.core.families.hovernet.postprocess`).

Here the encoder is the project's U-Net encoder (the same backbone as ``unet``, for fair
comparisons) and every branch is a U-Net decoder with its own 1x1 head. Two widths:

* CPU default ``widths=(16, 32, 64, 128)``: about 0.9 M parameters, trains on a 2-core CPU;
* paper-size GPU configuration ``widths=(64, 128, 256, 512, 1024)`` (``--config``
  ``'{"widths": [64, 128, 256, 512, 1024]}'``), about 50 M parameters like the reference.

Training batches carry instance ids (``batch["instances"]``); NP and HV targets are computed on
the fly (:mod:`napari_dgseg.core.families.hovernet.targets`). For MaNi the network exposes
:meth:`HoVerNet.features` (the NP branch's last decoder map) and :meth:`HoVerNet.mani_forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_dgseg.core.augment_cqg import cqg_loss, cqg_views
from napari_dgseg.core.families.hovernet.loss import hovernet_loss
from napari_dgseg.core.families.hovernet.postprocess import HoverPostConfig, hovernet_instances
from napari_dgseg.core.families.hovernet.targets import hv_targets
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX, ce_dice_loss
from napari_dgseg.core.models.base import SegModel, normalise_input
from napari_dgseg.core.models.blocks import Decoder, Encoder

#: The paper-size (GPU) encoder/decoder widths.
PAPER_WIDTHS = (64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class HoVerNetConfig:
    """Architecture, loss weights and post-processing of a HoVer-Net.

    Attributes
    ----------
    num_classes : int
        NP classes; 2 (background, nucleus). Set by the trainer.
    widths : tuple of int
        Channels per encoder stage (input divisor ``2 ** (len - 1)``); CPU default
        ``(16, 32, 64, 128)``, paper size :data:`PAPER_WIDTHS`.
    norm : str
        ``batch``, ``instance``, ``group`` or ``none``.
    in_channels : int
        Input channels (3).
    num_types : int
        Nucleus types of the optional TP branch (0 = no TP branch). The TP branch trains only
        on batches that carry ``"types"`` ``(B, H, W)``.
    w_np, w_mse, w_msge, w_tp : float
        Loss weights (reference: all 1).
    np_threshold, marker_threshold : float
        Post-processing thresholds (reference: 0.5, 0.4).
    min_size, sobel_size : int
        Post-processing sizes (reference: 10 px, 21).
    """

    num_classes: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128)
    norm: str = "batch"
    in_channels: int = 3
    num_types: int = 0
    w_np: float = 1.0
    w_mse: float = 1.0
    w_msge: float = 1.0
    w_tp: float = 1.0
    np_threshold: float = 0.5
    marker_threshold: float = 0.4
    min_size: int = 10
    sobel_size: int = 21

    def __post_init__(self) -> None:
        if self.num_classes != 2:
            raise ValueError(
                f"hovernet predicts nucleus vs background (num_classes=2), got {self.num_classes}; "
                "train it on instance labels (nuclei)"
            )
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two stages")
        if self.num_types < 0:
            raise ValueError("num_types must be >= 0")

    @property
    def post(self) -> HoverPostConfig:
        """The post-processing parameters."""
        return HoverPostConfig(
            self.np_threshold, self.min_size, self.sobel_size, self.marker_threshold
        )


class HoVerNet(SegModel):
    """Shared encoder; NP, HV (and TP) decoders with 1x1 heads.

    ``forward(x)`` returns the NP logits ``(B, 2, H, W)`` so generic code (default losses,
    evaluation) works; :meth:`branches` returns every head.
    """

    def __init__(self, config: HoVerNetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = 2
        self.divisor = 2 ** (len(config.widths) - 1)
        self.encoder = Encoder(config.in_channels, config.widths, config.norm)
        self.np_decoder = Decoder(config.widths, config.norm)
        self.hv_decoder = Decoder(config.widths, config.norm)
        self.np_head = nn.Conv2d(config.widths[0], 2, 1)
        self.hv_head = nn.Conv2d(config.widths[0], 2, 1)
        if config.num_types > 0:
            self.tp_decoder = Decoder(config.widths, config.norm)
            self.tp_head = nn.Conv2d(config.widths[0], config.num_types, 1)

    def mani_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One pass giving the NP features ``(B, widths[0], H, W)`` and every branch's output."""
        feats = self.encoder(x)
        np_feat = self.np_decoder(feats)
        out = {"np": self.np_head(np_feat), "hv": self.hv_head(self.hv_decoder(feats))}
        if self.config.num_types > 0:
            out["tp"] = self.tp_head(self.tp_decoder(feats))
        return np_feat, out

    def branches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"np": (B,2,H,W) logits, "hv": (B,2,H,W)[, "tp": (B,T,H,W) logits]}``."""
        return self.mani_forward(x)[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The NP branch's last decoder map ``(B, widths[0], H, W)`` (MaNi's projection input)."""
        return self.np_decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.np_head(self.features(x))

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Blendable maps: ``logits`` (NP logits), ``np`` (NP softmax), ``hv`` (+ ``tp`` softmax)."""
        return self.features_and_infer(x)[1]

    def features_and_infer(
        self, x: torch.Tensor, reweight: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NP features and :meth:`infer`'s maps, the NP head reading ``reweight(features)``.

        Only the NP branch's features are reweighted (local alignment acts on the features MaNi
        reads); the HV and TP branches are unchanged.
        """
        feats = self.encoder(x)
        np_feat = self.np_decoder(feats)
        np_logits = self.np_head(np_feat if reweight is None else reweight(np_feat))
        maps = {"logits": np_logits, "np": torch.softmax(np_logits, dim=1),
                "hv": self.hv_head(self.hv_decoder(feats))}
        if self.config.num_types > 0:
            maps["tp"] = torch.softmax(self.tp_head(self.tp_decoder(feats)), dim=1)
        return np_feat, maps


def targets_from_batch(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """NP target ``(B, H, W)`` (255 = ignore) and HV target ``(B, 2, H, W)`` of a training batch."""
    inst = batch["instances"]
    np_t = (inst > 0).long()
    if "target" in batch:
        np_t = torch.where(
            batch["target"] == IGNORE_INDEX, torch.full_like(np_t, IGNORE_INDEX), np_t
        )
    return np_t, hv_targets(inst)


def loss_from_outputs(
    model: HoVerNet, outputs: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The HoVer-Net loss of ``outputs`` (from :meth:`HoVerNet.branches`) against ``batch``."""
    cfg = model.config
    np_t, hv_t = targets_from_batch(batch)
    weights = {"np": cfg.w_np, "mse": cfg.w_mse, "msge": cfg.w_msge, "tp": cfg.w_tp}
    return hovernet_loss(outputs, np_t, hv_t, tp_target=batch.get("types"), weights=weights)


def features_and_outputs(
    model: HoVerNet, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NP features and every branch (NP logits also as ``logits``) in one pass, for MaNi."""
    feats, out = model.mani_forward(x)
    return feats, {**out, "logits": out["np"]}


def features_and_infer(
    model: HoVerNet, x: torch.Tensor, reweight: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Family.features_and_infer``: :meth:`HoVerNet.features_and_infer`."""
    return model.features_and_infer(x, reweight)


def adaptation_loss(
    model: HoVerNet,
    outputs: dict[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """``Family.loss_from_outputs``: the HoVer-Net loss of the outputs of one MaNi pass."""
    return loss_from_outputs(model, outputs, batch)


def training_loss(
    model: HoVerNet, batch: dict[str, torch.Tensor], state: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Family training loss: HoVer-Net loss on the batch; with CQG, CQG on NP + HV terms on x1."""
    spec = state["input_spec"]
    x = batch["image"]
    if not state.get("cqg"):
        loss, logs = loss_from_outputs(model, model.branches(normalise_input(x, spec)), batch)
        return loss, logs
    np_t, _ = targets_from_batch(batch)
    y = torch.stack([np_t, batch["instances"].long()], dim=1)
    x1, x2, y1 = cqg_views(x, y, state["generator"])
    sub = {"target": y1[:, 0], "instances": y1[:, 1]}
    out1 = model.branches(normalise_input(x1, spec))
    out2 = model.branches(normalise_input(x2, spec))
    loss_c, parts = cqg_loss(out1["np"], out2["np"], y1[:, 0], ce_dice_loss)
    # the family's own terms (HV) on the geometric view
    _, hv_t = targets_from_batch(sub)
    hv_only = {"np": out1["np"].detach(), "hv": out1["hv"]}
    cfg = model.config
    loss_hv, logs = hovernet_loss(
        hv_only, y1[:, 0], hv_t, weights={"np": 0.0, "mse": cfg.w_mse, "msge": cfg.w_msge}
    )
    logs.pop("np", None)
    return loss_c + loss_hv, {**parts, **logs}


def postprocess(
    maps: Mapping[str, np.ndarray], config: Mapping[str, Any] | HoVerNetConfig
) -> dict[str, np.ndarray]:
    """Blended maps -> ``labels`` (instances int32), ``probabilities`` (2, H, W), ``hv`` (2, H, W).

    Parameters
    ----------
    maps : mapping
        What :func:`napari_dgseg.core.predict.run_tiled` returns for a HoVer-Net: ``np``
        ``(2, H, W)`` blended probabilities (or ``logits``), ``hv`` ``(2, H, W)``.
    config : mapping or HoVerNetConfig
        The bundle's config (thresholds).
    """
    cfg = config if isinstance(config, HoVerNetConfig) else HoVerNetConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in dict(config).items()}
    )
    if "np" in maps:
        probs = np.asarray(maps["np"], dtype=np.float32)
    else:
        logits = np.asarray(maps["logits"], dtype=np.float32)
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        probs = e / e.sum(axis=0, keepdims=True)
    hv = np.asarray(maps["hv"], dtype=np.float32)
    labels = hovernet_instances(probs[1], hv, cfg.post)
    out = {"labels": labels, "probabilities": probs, "hv": hv}
    if "tp" in maps:
        out["types"] = np.asarray(maps["tp"]).argmax(axis=0).astype(np.int32)
    return out
