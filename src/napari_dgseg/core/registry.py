"""Model families: name -> builder, config type, training loss and post-processing.

A *family* is everything needed to build, train and run one kind of model from the frozen config
stored in a bundle. Built-in families live one per module under :mod:`napari_dgseg.core.models`
and register themselves on import; :func:`get_family` imports them lazily so that listing or
loading one family never imports the others.

An unknown name raises :class:`~napari_dgseg.core.errors.InputError` listing the valid names
(the convention of timm's ``create_model``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from napari_dgseg.core.errors import InputError

#: Built-in family name -> module that registers it.
BUILTIN_FAMILIES: dict[str, str] = {
    "unet": "napari_dgseg.core.models.unet",
    "sqvae": "napari_dgseg.core.models.sqvae",
    "ram": "napari_dgseg.core.models.ram",
    "ram-sgcg": "napari_dgseg.core.models.ram",
    "hovernet": "napari_dgseg.core.models.hovernet",
}


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
        ``config -> torch.nn.Module`` following :class:`napari_dgseg.core.models.base.SegModel`.
    description : str
        One line for model pickers and ``dgseg models``.
    output : str
        ``"semantic"`` (class ids per pixel) or ``"instances"`` (instance ids per pixel).
    training_loss : callable or None
        ``(model, batch, state) -> (loss, logs)``; None means the default segmentation loss
        (cross-entropy + Dice on ``model(x)``).
    target_kind : str
        What the training batches carry as ``target``: ``"semantic"`` class ids or ``"instance"``
        ids (families that derive their own targets from instances, such as HoVer-Net).
    postprocess : callable or None
        ``(maps, config) -> dict`` turning blended network maps into ``labels`` (and
        ``probabilities``, ``codebook_indices``, ...); None means softmax + argmax of ``logits``.
    finish_training : callable or None
        ``(bundle, domains, state) -> None`` run once after training, before saving: a family
        adds what it needs to the bundle (extra tensor files, manifest entries).
    capabilities : frozenset of str
        What the family offers beyond segmentation (e.g. ``"codebook"``), asked through
        :meth:`supports` so that callers never test family names.
    """

    name: str
    config_cls: type
    build: Callable[[Any], Any]
    description: str
    output: str = "semantic"
    training_loss: Callable[..., Any] | None = None
    target_kind: str = "semantic"
    postprocess: Callable[..., Any] | None = None
    finish_training: Callable[..., Any] | None = None
    capabilities: frozenset[str] = frozenset()

    def supports(self, capability: str) -> bool:
        """True when the family declares ``capability`` (e.g. ``"codebook"``)."""
        return capability in self.capabilities

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


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family in the registry and return it."""
    _REGISTRY[family.name] = family
    return family


def _try_import(name: str) -> None:
    module = BUILTIN_FAMILIES.get(name)
    if module is None or name in _REGISTRY:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise


def family_names() -> list[str]:
    """Names of every family that can be built in this installation."""
    for name in BUILTIN_FAMILIES:
        _try_import(name)
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """Return the family registered under ``name``.

    Raises
    ------
    InputError
        If there is no such family; the message lists the valid names.
    """
    _try_import(name)
    if name not in _REGISTRY:
        raise InputError(f"unknown model family {name!r}; valid families: {family_names()}")
    return _REGISTRY[name]


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a frozen config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
