"""The scale options shared by the commands that segment (``dgseg predict`` ...).

Kept free of torch and numpy imports so ``dgseg --help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Choices of ``--rescale`` (see :data:`napari_dgseg.core.scale.RESCALE_MODES`), plus ``shared``:
#: one estimated factor for every input of the batch (:mod:`napari_dgseg.core.scale_batch`).
RESCALE_CHOICES = ("auto", "metadata", "off", "shared")


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """``--rescale``, ``--scale``, ``--mpp``, ``--object-size`` and ``--fov``."""
    g = p.add_argument_group(
        "scale", "resample each tile to the model's training scale (docs/scale.md); give at most "
        "one of --scale, --mpp, --object-size")
    g.add_argument("--rescale", default="auto", choices=RESCALE_CHOICES,
                   help="auto (default): the file's pixel size, else estimated from the image; "
                        "metadata: the file's pixel size only; off: never resample; shared: as "
                        "auto, but inputs without a pixel size get one factor for the whole batch "
                        "(the median nucleus size over them: tiles of one slide)")
    g.add_argument("--scale", type=float, metavar="FACTOR",
                   help="resize factor applied before the model (2 = upsample twice)")
    g.add_argument("--mpp", type=float, metavar="UM",
                   help="the image's pixel size in micrometres (overrides the file's)")
    g.add_argument("--object-size", type=float, metavar="PX", dest="object_size",
                   help="typical object diameter in the image, pixels (nucleus, vessel calibre)")
    g.add_argument("--fov", default="auto", choices=("auto", "off"),
                   help="auto (default): vessel models mark nothing in a fundus photograph's dark "
                        "surround and its rim; off")


def scale_kwargs(args: argparse.Namespace, pixel_size_um: Any = None) -> dict[str, Any]:
    """Keyword arguments of :meth:`Bundle.predict` from the parsed options (``shared``: the
    batch's factor, ``args.shared_scale``, for an input without a pixel size of its own)."""
    kw = {"rescale": args.rescale, "scale": args.scale, "mpp": args.mpp,
          "object_size": args.object_size, "pixel_size_um": pixel_size_um, "fov": args.fov}
    if args.rescale == "shared":
        kw["rescale"] = "auto"
        shared = getattr(args, "shared_scale", None) or {}
        if not pixel_size_um and shared.get("factor") is not None:
            kw["scale"] = shared["factor"]
    return kw


def check_scale_args(args: argparse.Namespace, bundle: Any) -> None:
    """Refuse contradictory or impossible scale options once, before any file is read
    (raises :class:`~napari_dgseg.core.errors.InputError` with what to do)."""
    from napari_dgseg.core.errors import InputError
    from napari_dgseg.core.scale import resolve_scale

    given = [f"--{n}" for n, v in (("scale", args.scale), ("mpp", args.mpp),
                                   ("object-size", args.object_size)) if v is not None]
    if args.rescale == "shared" and given:
        raise InputError(f"--rescale shared estimates one factor for the batch; {given[0]} gives "
                         "it yourself: use one or the other")
    resolve_scale(bundle.scale, rescale="auto" if args.rescale == "shared" else args.rescale,
                  scale=args.scale, mpp=args.mpp, object_size=args.object_size)
