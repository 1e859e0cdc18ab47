"""``dgseg bank BUNDLE --source DIR``: add a DCIN reference bank to an existing bundle."""

from __future__ import annotations

import argparse

from napari_dgseg.cli._common import add_overwrite, bundle_output, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bank",
        help="compute the DCIN reference bank of a bundle from its training images",
        description="Compute the DCIN reference bank (histograms, embeddings, colour statistics, "
        "GRIS medoid) from the model's training images and write the bundle again, atomically.",
    )
    p.add_argument("bundle", help="bundle file or model name")
    p.add_argument("--source", nargs="+", required=True, metavar="DIR",
                   help="the training folders (images/ + labels/, labels are not used)")
    p.add_argument("--out", help="write here instead of replacing the bundle file")
    p.add_argument("--space", default="lab-reinhard", choices=["lab-reinhard", "cielab"])
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.color.bank import add_bank_to_bundle
    from napari_dgseg.core.train.data import load_sources

    bundle = load_bundle(args.bundle)
    # Without --out the bundle itself is rewritten (what `bank` is for); --out must be new.
    out = bundle_output(args.out, overwrite=args.overwrite) if args.out else bundle.path
    parent_sha = bundle.sha256
    domains = load_sources(args.source)
    images = [s.image for _, ss in domains for s in ss]
    names = [s.name for _, ss in domains for s in ss]
    bank = add_bank_to_bundle(bundle, images, names, space=args.space)
    bundle.manifest.setdefault("provenance", {})["bank_added"] = {
        "sources": [str(Path(s)) for s in args.source], "previous_sha256": parent_sha,
    }
    path = bundle.save(out, overwrite=args.overwrite or not args.out)
    print_json({"bundle": str(path), "sha256": bundle.sha256, "images": int(bank["hist"].shape[0]),
                "gris_reference": bundle.manifest["dcin"]["gris_reference"]})
    return 0
