"""Synthetic images with ground truth in named domains: H&E nuclei and fundus vessels.

Every claim the project makes about generalisation ("trained on one scanner, works on the next")
needs labelled data from several domains; none can be downloaded here, so the generator makes it.
This module is the public facade; the renderers live in :mod:`.synthetic_nuclei` (Beer-Lambert
H&E tiles with instance labels) and :mod:`.synthetic_vessels` (fundus photographs with vessel
labels and a field-of-view mask). A second, independently written *held-out* renderer
(:mod:`.heldout_nuclei`, :mod:`.heldout_vessels`; ``renderer="heldout"``) makes evaluation-only
styles (``ho-*``, ``hv-*``) that no model or parameter is trained or tuned on.

For a given seed the *geometry* (tissue, nuclei, vessel trees) is the same in every domain and
only the appearance changes, so domain statistics compare like with like. Everything is
deterministic per seed (:class:`numpy.random.Generator` streams, never global state).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from napari_dgseg.core.atomic import atomic_write
from napari_dgseg.core.data._synth_common import as_shape, check_seed, derive_seed
from napari_dgseg.core.data.heldout_nuclei import (
    HELDOUT_NUCLEI_STYLES,
    get_heldout_nuclei_style,
    make_heldout_nuclei,
)
from napari_dgseg.core.data.heldout_vessels import (
    HELDOUT_VESSEL_STYLES,
    get_heldout_vessel_style,
    make_heldout_vessels,
)
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.data.synthetic_nuclei import (
    DEFAULT_NUCLEI_DOMAIN,
    NUCLEI_DOMAINS,
    NucleiDomain,
    get_nuclei_domain,
    make_nuclei,
)
from napari_dgseg.core.data.synthetic_vessels import (
    DEFAULT_VESSEL_DOMAIN,
    VESSEL_DOMAINS,
    VesselDomain,
    get_vessel_domain,
    make_vessels,
)
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.outputs import refuse_existing

__all__ = [
    "DEFAULT_NUCLEI_DOMAIN",
    "DEFAULT_VESSEL_DOMAIN",
    "KINDS",
    "NUCLEI_DOMAINS",
    "VESSEL_DOMAINS",
    "NucleiDomain",
    "VesselDomain",
    "item_seed",
    "list_domains",
    "make_nuclei",
    "make_sample",
    "make_vessels",
    "write_dataset",
]

KINDS = ("nuclei", "vessels")
RENDERERS = ("training", "heldout")
Size = int | tuple[int, int]


def list_domains(*, include_heldout: bool = False) -> dict:
    """Names of the domains per kind; the first of each is the default training domain.

    Parameters
    ----------
    include_heldout : bool
        Also list the held-out renderer's styles under ``"evaluation_only"``.

    Returns
    -------
    dict
        ``{"nuclei": [...], "vessels": [...]}``, plus with ``include_heldout``
        ``"evaluation_only": {"renderer": "heldout", "nuclei": [...], "vessels": [...], "note"}``.
    """
    out: dict = {"nuclei": list(NUCLEI_DOMAINS), "vessels": list(VESSEL_DOMAINS)}
    if include_heldout:
        out["evaluation_only"] = {
            "renderer": "heldout",
            "nuclei": list(HELDOUT_NUCLEI_STYLES),
            "vessels": list(HELDOUT_VESSEL_STYLES),
            "note": "independent renderer for evaluation only: never train or tune on these "
            "(dgseg synth KIND --renderer heldout --domain NAME ...)",
        }
    return out


def resolve_renderer(kind: str, domain: str | None, renderer: str | None) -> str:
    """``renderer`` checked, or inferred from the domain name when None (``ho-*``/``hv-*``)."""
    if renderer is None:
        heldout = HELDOUT_NUCLEI_STYLES if kind == "nuclei" else HELDOUT_VESSEL_STYLES
        return "heldout" if domain in heldout else "training"
    if renderer not in RENDERERS:
        raise InputError(f"unknown renderer {renderer!r}; valid renderers: {list(RENDERERS)}")
    return renderer


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(
            f"unknown kind {kind!r}; valid kinds: {list(KINDS)} (e.g. dgseg synth nuclei)"
        )
    return kind


def make_sample(
    kind: str,
    size: Size = 256,
    domain: str | None = None,
    seed: int = 0,
    *,
    renderer: str | None = None,
) -> Sample:
    """One synthetic :class:`Sample` of ``kind``.

    Parameters
    ----------
    kind : str
        ``"nuclei"`` or ``"vessels"``.
    size : int or (int, int)
        Image side or ``(H, W)``.
    domain : str or None
        Domain name; None takes the kind's default (``clean`` / ``camera-a``).
    seed : int
        Non-negative seed.
    renderer : str or None
        ``"training"`` or ``"heldout"`` (evaluation-only styles); None infers it from ``domain``.

    Returns
    -------
    Sample
        ``image`` ``(H, W, 3)`` uint8; ``labels`` ``(H, W)`` int32 (instance ids for nuclei, 0/1
        for vessels); ``mask`` the field of view for vessels (None for nuclei); ``domain`` set.
    """
    _check_kind(kind)
    renderer = resolve_renderer(kind, domain, renderer)
    meta = {"synthetic": True, "kind": kind, "seed": seed, "size": list(as_shape(size)),
            "renderer": renderer}  # fmt: skip
    heldout = renderer == "heldout"
    if kind == "nuclei":
        if domain is None:
            domain = next(iter(HELDOUT_NUCLEI_STYLES)) if heldout else DEFAULT_NUCLEI_DOMAIN
        make = make_heldout_nuclei if heldout else make_nuclei
        image, labels = make(size, domain, seed)
        return Sample(
            image=image, labels=labels, name=f"nuclei_{domain}_{seed}", domain=domain, meta=meta
        )
    if domain is None:
        domain = next(iter(HELDOUT_VESSEL_STYLES)) if heldout else DEFAULT_VESSEL_DOMAIN
    image, labels, fov = (make_heldout_vessels if heldout else make_vessels)(size, domain, seed)
    return Sample(
        image=image,
        labels=labels.astype(np.int32),
        name=f"vessels_{domain}_{seed}",
        mask=fov,
        domain=domain,
        meta=meta,
    )


def item_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset made with ``seed`` (stable, distinct per pair)."""
    return derive_seed(check_seed(seed), index)


def write_dataset(
    kind: str,
    domain: str,
    n: int,
    size: int,
    seed: int,
    out: str | Path,
    *,
    overwrite: bool = True,
    renderer: str | None = None,
) -> dict:
    """Write ``n`` images of one domain as ``out/images/*.png`` + ``out/labels/*.tif``.

    Parameters
    ----------
    kind : str
        ``"nuclei"`` or ``"vessels"``.
    domain : str
        Domain name (see :func:`list_domains`).
    n : int
        Number of images (>= 1).
    size : int
        Image side in pixels.
    seed : int
        Dataset seed; image ``i`` uses :func:`item_seed` ``(seed, i)``, so the same arguments give
        byte-identical files.
    out : str or Path
        Output folder (created).
    overwrite : bool
        Replace existing files (the API default, kept for scripts that regenerate a dataset).
        ``dgseg synth`` passes False unless ``--overwrite``: then, when any of the files exists,
        nothing is written and :class:`~napari_dgseg.core.errors.OutputExistsError` names it.
    renderer : str or None
        ``"training"`` or ``"heldout"``; None infers it from ``domain``. Held-out datasets say
        ``"evaluation_only": true`` in their summary.

    Returns
    -------
    dict
        ``{"kind", "domain", "n", "size", "seed", "out", "domain_params", "files"}`` where
        ``files`` lists the stems ``<kind>_<domain>_<i:04d>``. Labels are int32 instance ids for
        nuclei, uint8 0/1 for vessels; vessels also get ``out/masks/<stem>.png`` (FOV, 0/255).
        The summary is also written to ``out/synth.json``.
    """
    import tifffile
    from PIL import Image

    _check_kind(kind)
    renderer = resolve_renderer(kind, domain, renderer)
    if renderer == "heldout":
        get = get_heldout_nuclei_style if kind == "nuclei" else get_heldout_vessel_style
    else:
        get = get_nuclei_domain if kind == "nuclei" else get_vessel_domain
    params = get(domain)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be a whole number >= 1 (got {n!r})")
    as_shape(size)
    check_seed(seed)
    out = Path(out)
    subs = ("images", "labels") + (("masks",) if kind == "vessels" else ())
    planned = [out / "synth.json"]
    for i in range(n):
        stem = f"{kind}_{domain}_{i:04d}"
        planned += [out / "images" / f"{stem}.png", out / "labels" / f"{stem}.tif"]
        planned += [out / "masks" / f"{stem}.png"] if kind == "vessels" else []
    refuse_existing(planned, overwrite=overwrite)
    try:
        for sub in subs:
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output folder {out}: {exc.strerror}; choose another --out"
        ) from None
    files = []
    for i in range(n):
        sample = make_sample(kind, size, domain, item_seed(seed, i), renderer=renderer)
        stem = f"{kind}_{domain}_{i:04d}"
        atomic_write(
            out / "images" / f"{stem}.png",
            lambda p, im=sample.image: Image.fromarray(im).save(p, format="PNG"),
        )
        lab = sample.labels.astype(np.int32 if kind == "nuclei" else np.uint8)
        atomic_write(
            out / "labels" / f"{stem}.tif",
            lambda p, lb=lab: tifffile.imwrite(p, lb, compression="zlib"),
        )
        if kind == "vessels":
            m = sample.mask.astype(np.uint8) * 255
            atomic_write(
                out / "masks" / f"{stem}.png",
                lambda p, mm=m: Image.fromarray(mm).save(p, format="PNG"),
            )
        files.append(stem)
    summary = {
        "kind": kind,
        "domain": domain,
        "n": n,
        "size": size,
        "seed": seed,
        "out": str(out),
        "domain_params": asdict(params),
        "renderer": renderer,
        "evaluation_only": renderer == "heldout",
        "files": files,
    }
    atomic_write(out / "synth.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    return summary
