"""Model families by name: the built-in ones, installed plugins and ``DGSEG_FAMILIES``.

A family (:class:`~napari_dgseg.core.family.Family`) is found by name from three sources, each
giving ``name -> "module:attribute"`` (the attribute is a :class:`Family`, or a function without
arguments returning one):

1. the built-in families, one folder each under :mod:`napari_dgseg.core.families`;
2. entry points of the group ``napari_dgseg.families`` of installed distributions, e.g. in a
   plugin's ``pyproject.toml``::

       [project.entry-points."napari_dgseg.families"]
       myfamily = "my_package.family:FAMILY"

3. the environment variable ``DGSEG_FAMILIES``: comma-separated ``name=module:attribute``
   entries (for a family in a folder on ``PYTHONPATH``, without installing anything).

Families load lazily: listing the names imports nothing (not even torch, so the CLI can list
them in its help), getting one imports only its module.
:func:`register_family` adds one in-process. An unknown name raises
:class:`~napari_dgseg.core.errors.InputError` listing the valid names (the convention of timm's
``create_model``). ``docs/families.md`` describes the contract and how to add a family.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from napari_dgseg.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from napari_dgseg.core.family import Family

__all__ = [
    "BUILTIN_FAMILIES",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "available_family_names",
    "families_supporting",
    "family_names",
    "get_family",
    "register_family",
]

#: Built-in family name -> ``module:attribute`` of its :class:`Family`.
BUILTIN_FAMILIES: dict[str, str] = {
    "unet": "napari_dgseg.core.families.unet:FAMILY",
    "sqvae": "napari_dgseg.core.families.sqvae:FAMILY",
    "ram": "napari_dgseg.core.families.ram:RAM",
    "ram-sgcg": "napari_dgseg.core.families.ram:RAM_SGCG",
    "hovernet": "napari_dgseg.core.families.hovernet:FAMILY",
    "classical-he": "napari_dgseg.core.families.classical:HE",
    "classical-fundus": "napari_dgseg.core.families.classical:FUNDUS",
}
#: Entry-point group third-party packages register families under.
ENTRY_POINT_GROUP = "napari_dgseg.families"
#: Environment variable of extra ``name=module:attribute`` families (comma-separated).
ENV_VAR = "DGSEG_FAMILIES"

_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family in this process's registry and return it."""
    from napari_dgseg.core.family import Family

    if not isinstance(family, Family):
        raise InputError(f"register_family needs a Family, got {type(family).__name__}")
    _REGISTRY[family.name] = family
    return family


def _env_targets() -> dict[str, str]:
    out: dict[str, str] = {}
    for item in os.environ.get(ENV_VAR, "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or ":" not in target or not name.strip():
            raise InputError(
                f"{ENV_VAR} entry {item!r} is not name=module:attribute "
                "(e.g. myfamily=my_package.family:FAMILY)"
            )
        out[name.strip()] = target.strip()
    return out


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _targets() -> dict[str, str]:
    """Every known name -> ``module:attribute``: ``DGSEG_FAMILIES`` first, then the built-in
    families, then entry points (a plugin cannot silently replace a built-in family)."""
    return {**_entry_point_targets(), **BUILTIN_FAMILIES, **_env_targets()}


def _load(name: str, target: str) -> Family:
    from napari_dgseg.core.family import Family

    module_name, _, attr = target.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"model family {name!r}: cannot load {target!r} ({exc})") from exc
    family = value if isinstance(value, Family) else value() if callable(value) else value
    if not isinstance(family, Family):
        raise InputError(f"model family {name!r}: {target!r} is not a Family")
    if family.name != name:
        raise InputError(
            f"model family {name!r}: {target!r} is registered under {name!r} but is named "
            f"{family.name!r}; use the same name"
        )
    return register_family(family)


def available_family_names() -> list[str]:
    """Names of every known family, without importing any of them (for help texts)."""
    return sorted(set(_targets()) | set(_REGISTRY))


def family_names() -> list[str]:
    """Names of every family that can be built in this installation (imports them all)."""
    for name, target in _targets().items():
        if name not in _REGISTRY:
            _load(name, target)
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """Return the family registered under ``name``.

    Raises
    ------
    InputError
        If there is no such family; the message lists the valid names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _env_targets().get(name) or BUILTIN_FAMILIES.get(name)
    if target is None:
        target = _entry_point_targets().get(name)
    if target is None:
        raise InputError(
            f"unknown model family {name!r}; valid families: {available_family_names()}"
        )
    return _load(name, target)


def families_supporting(capability: str) -> list[str]:
    """Names of the families that declare ``capability`` (imports every family)."""
    return [n for n in family_names() if _REGISTRY[n].supports(capability)]
