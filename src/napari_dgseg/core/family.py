"""The contract of a model family: everything generic code may ask about one kind of model.

A *family* is everything needed to build, train, adapt and run one kind of model from the frozen
config stored in a bundle. Each built-in family lives in its own folder under
:mod:`napari_dgseg.core.families` and builds one :class:`Family` in its ``__init__.py``;
:mod:`napari_dgseg.core.registry` maps names to families (built-in, entry points, the
``DGSEG_FAMILIES`` environment variable). Generic code (inference, training, adaptation, the
codebook analysis, the CLI and the widgets) never names a family and never probes a model with
``hasattr``: it calls the fields below. ``docs/families.md`` describes every field and how to add
a family.

Every callable field has a default that fits a U-Net-like semantic model (a
:class:`~napari_dgseg.core.models.base.SegModel` with ``features(x)`` and a 1x1 ``head``), so a
simple family declares only ``name``, ``config_cls``, ``build`` and ``description``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from napari_dgseg.core.augment_cqg import cqg_loss, cqg_views
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.losses.segmentation import ce_dice_loss
from napari_dgseg.core.models.base import normalise_input
from napari_dgseg.core.postprocess import semantic_postprocess

#: What ``labels`` of a prediction hold.
OUTPUT_KINDS = ("semantic", "instances")
#: What the training batches carry as ``target``.
TARGET_KINDS = ("semantic", "instance")
#: How tiled inference merges one output of ``infer``: averaged with the blending window
#: (``dense``, float ``(B, C, H, W)``) or taken from the tile whose centre is nearest
#: (``discrete``, integer ``(B, H, W)``).
INFER_KINDS = ("dense", "discrete")
#: Capabilities a family may declare: ``codebook`` (code-index maps, code usage and the
#: domain-shift score of :mod:`napari_dgseg.core.codebook`), ``mani`` (label-free adaptation with
#: MaNi through :attr:`Family.features_and_outputs`), ``local_mask`` (a per-pixel local feature
#: mask in the prediction).
CAPABILITIES = frozenset({"codebook", "mani", "local_mask"})

Outputs = dict[str, torch.Tensor]
LossResult = tuple[torch.Tensor, dict[str, float]]


# ----------------------------------------------------------------------------------- defaults
def head_features_and_outputs(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, Outputs]:
    """Default :attr:`Family.features_and_outputs`: ``model.features(x)`` then ``model.head``.

    Fits U-Net-like models: the last decoder map ``(B, F, H, W)`` (MaNi's projection input) and
    the logits computed from it, in one pass.
    """
    feats = model.features(x)
    return feats, {"logits": model.head(feats)}


def head_features_and_infer(
    model: Any, x: torch.Tensor, reweight: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, Outputs]:
    """Default :attr:`Family.features_and_infer`: ``model.features(x)``, then ``model.head``.

    The head reads ``reweight(features)`` when ``reweight`` is given (the target flow of local
    alignment, see :mod:`napari_dgseg.core.local_align`), the features otherwise; the features
    returned are the ones before reweighting. Fits U-Net-like models whose ``infer`` is
    ``{"logits": head(features(x))}``.
    """
    feats = model.features(x)
    used = feats if reweight is None else reweight(feats)
    return feats, {"logits": model.head(used)}


def segmentation_loss_from_outputs(
    model: Any, outputs: Outputs, batch: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> LossResult:
    """Default :attr:`Family.loss_from_outputs`: cross-entropy + Dice of ``outputs["logits"]``."""
    return ce_dice_loss(outputs["logits"], batch["target"]), {}


def segmentation_training_loss(
    model: Any, batch: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> LossResult:
    """Default :attr:`Family.training_loss`: cross-entropy + Dice on ``model(x)``.

    With ``state["cqg"]`` the colour-quality generalisation loss on two views (geometric, then
    photometric; see :mod:`napari_dgseg.core.augment_cqg`).
    """
    spec = state["input_spec"]
    x, y = batch["image"], batch["target"]
    if state.get("cqg"):
        x1, x2, y1 = cqg_views(x, y, state["generator"])
        logits1 = model(normalise_input(x1, spec))
        logits2 = model(normalise_input(x2, spec))
        loss, parts = cqg_loss(logits1, logits2, y1, ce_dice_loss)
        return loss, {k: float(v) for k, v in parts.items()}
    logits = model(normalise_input(x, spec))
    loss = ce_dice_loss(logits, y)
    return loss, {"seg": float(loss.detach())}


def loss_from_training_loss(
    training_loss: Callable[..., LossResult],
) -> Callable[..., LossResult]:
    """A :attr:`Family.loss_from_outputs` that ignores the outputs and recomputes ``training_loss``.

    For families whose loss needs passes of their own (RAM's mixed images, SQ-VAE's sampled
    codes): adaptation then uses the full training loss on the source batch.
    """

    def loss(model: Any, outputs: Outputs, batch: Mapping[str, Any], state: Mapping[str, Any]):
        return training_loss(model, batch, state)

    loss.__doc__ = f"``{getattr(training_loss, '__name__', 'training_loss')}`` on the batch."
    return loss


def no_finish(bundle: Any, domains: Any, state: Mapping[str, Any]) -> None:
    """Default :attr:`Family.finish_training`: the bundle needs nothing more."""


def declared_trainable_parameters(model: Any) -> Iterable[torch.nn.Parameter]:
    """Default :attr:`Family.trainable_parameters`: :meth:`SegModel.training_parameters`."""
    return model.training_parameters()


# ----------------------------------------------------------------------------------- contract
@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes
    ----------
    name : str
        Registry key, stored as ``family`` in every bundle.
    config_cls : type
        Frozen dataclass of the architecture; ``config_cls(**bundle.json["config"])`` rebuilds it.
    build : callable
        ``config -> SegModel`` (:class:`napari_dgseg.core.models.base.SegModel`).
    description : str
        One line for model pickers and ``dgseg models``.
    output : str
        ``"semantic"`` (class ids per pixel) or ``"instances"`` (instance ids per pixel).
    infer_outputs : mapping
        Every key ``model.infer`` returns -> ``"dense"`` (blended) or ``"discrete"`` (taken from
        the nearest tile centre). ``logits`` is always dense.
    capabilities : frozenset of str
        Names from :data:`CAPABILITIES`; ask with :meth:`supports`.
    features_and_outputs : callable
        ``(model, x) -> (features (B, F, H, W), outputs)``: the decoder features MaNi pools and the
        outputs (``"logits"`` at least) in one pass; used by adaptation (capability ``mani``).
    loss_from_outputs : callable
        ``(model, outputs, batch, state) -> (loss, logs)``: the supervised loss during adaptation,
        given the outputs of ``features_and_outputs`` on the source batch.
    training_loss : callable
        ``(model, batch, state) -> (loss, logs)``; ``state`` holds ``input_spec``, ``generator``,
        ``cqg``, ``iteration``, ``iters`` and ``domains``.
    target_kind : str
        What the training batches carry as ``target``: ``"semantic"`` class ids or ``"instance"``
        ids (families that derive their own targets from instances, such as HoVer-Net).
    postprocess : callable
        ``(maps, config) -> dict`` turning blended network maps into ``labels`` (and
        ``probabilities``, ``codebook_indices``, extras); default softmax + argmax of ``logits``.
    finish_training : callable
        ``(bundle, domains, state) -> None`` run once after training, before saving: a family
        adds what it needs to the bundle (extra tensor files, manifest entries).
    trainable_parameters : callable
        ``model -> iterable of parameters`` the optimiser updates (training and adaptation).
    features_and_infer : callable or None
        ``(model, x, reweight=None) -> (features (B, F, H, W), infer outputs)``: the same feature
        map as ``features_and_outputs`` and the outputs of ``model.infer`` (same keys), computed
        with the label predictor reading ``reweight(features)`` when ``reweight`` is given. Local
        alignment and local feature masks (:mod:`napari_dgseg.core.local_align`) go through it;
        ``None``: the family cannot reweight its features (no local alignment, no local masks).
    flip_signs : mapping
        For flip test-time augmentation: output key -> one entry per channel, ``"x"`` for a
        component along the image's width (negated when the image is flipped left-right),
        ``"y"`` along its height (negated when flipped up-down), ``""`` for a scalar. Outputs
        not named are scalar maps (probabilities, logits), which flips only move.
    segment_image : callable, optional
        ``(rgb_uint8 (H, W, 3), config) -> dict`` for a family without a network (the classical
        baselines): inference hands it the whole image instead of running tiles, and its dict
        holds ``labels`` (and optionally ``probabilities``) as :attr:`postprocess` would. Such a
        family cannot be trained or adapted.
    """

    name: str
    config_cls: type
    build: Callable[[Any], Any]
    description: str = ""
    output: str = "semantic"
    infer_outputs: Mapping[str, str] = field(default_factory=lambda: {"logits": "dense"})
    capabilities: frozenset[str] = frozenset()
    features_and_outputs: Callable[[Any, torch.Tensor], tuple[torch.Tensor, Outputs]] = (
        head_features_and_outputs
    )
    loss_from_outputs: Callable[..., LossResult] = segmentation_loss_from_outputs
    training_loss: Callable[..., LossResult] = segmentation_training_loss
    target_kind: str = "semantic"
    postprocess: Callable[..., dict[str, Any]] = semantic_postprocess
    finish_training: Callable[..., None] = no_finish
    trainable_parameters: Callable[[Any], Iterable[torch.nn.Parameter]] = (
        declared_trainable_parameters
    )
    segment_image: Callable[[Any, Any], dict[str, Any]] | None = None
    flip_signs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    features_and_infer: Callable[..., tuple[torch.Tensor, Outputs]] | None = (
        head_features_and_infer
    )

    def __post_init__(self) -> None:
        problems = []
        if not self.name or self.name != self.name.strip():
            problems.append(f"name {self.name!r} must be a non-empty word")
        if not dataclasses.is_dataclass(self.config_cls):
            problems.append("config_cls must be a dataclass")
        if self.output not in OUTPUT_KINDS:
            problems.append(f"output {self.output!r} must be one of {OUTPUT_KINDS}")
        if self.target_kind not in TARGET_KINDS:
            problems.append(f"target_kind {self.target_kind!r} must be one of {TARGET_KINDS}")
        bad = {k: v for k, v in self.infer_outputs.items() if v not in INFER_KINDS}
        if bad or self.infer_outputs.get("logits") != "dense":
            problems.append(f"infer_outputs needs 'logits': 'dense' and kinds in {INFER_KINDS}")
        if any(c not in ("x", "y", "") for v in self.flip_signs.values() for c in v):
            problems.append("flip_signs entries must be 'x', 'y' or '' per channel")
        unknown = sorted(set(self.capabilities) - CAPABILITIES)
        if unknown:
            problems.append(f"unknown capabilities {unknown}; valid: {sorted(CAPABILITIES)}")
        if problems:
            raise InputError(f"model family {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "infer_outputs", dict(self.infer_outputs))
        object.__setattr__(self, "flip_signs", {k: tuple(v) for k, v in self.flip_signs.items()})

    def supports(self, capability: str) -> bool:
        """Whether the family declares ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; valid: {sorted(CAPABILITIES)}")
        return capability in self.capabilities

    @property
    def discrete_outputs(self) -> tuple[str, ...]:
        """Keys of ``infer`` that tiled inference takes from the nearest tile (not averaged)."""
        return tuple(k for k, v in self.infer_outputs.items() if v == "discrete")

    def make_config(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build the frozen config from a mapping, refusing unknown keys with the valid ones."""
        values = dict(values or {})
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise InputError(
                f"unknown config key(s) {unknown} for family {self.name!r}; "
                f"valid keys: {sorted(fields)}"
            )
        for key, value in list(values.items()):
            if isinstance(value, list):
                values[key] = tuple(value)
        return self.config_cls(**values)

    def build_model(self, config: Any | Mapping[str, Any] | None = None) -> Any:
        """Build an untrained model of this family from a config object or mapping."""
        if config is None or isinstance(config, Mapping):
            config = self.make_config(config)
        return self.build(config)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a frozen config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
