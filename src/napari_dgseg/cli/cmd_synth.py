"""``dgseg synth nuclei|vessels --domain NAME --n N --size S --seed K --out DIR``."""

from __future__ import annotations

import argparse

from napari_dgseg.cli._common import add_overwrite, output_folder, print_json
from napari_dgseg.core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic images with ground truth in a named domain",
        description="Synthetic H&E nuclei (instance labels) or fundus vessels (binary labels + FOV) "
        "in named scanner/camera domains, deterministic per seed.",
    )
    p.add_argument("kind", nargs="?", choices=["nuclei", "vessels"])
    p.add_argument("--domain", help="domain name (see --list-domains); default: the first")
    p.add_argument("--renderer", choices=["training", "heldout"],
                   help="training renderer, or the independent held-out one (evaluation-only "
                   "styles ho-*/hv-*); default: inferred from --domain")  # fmt: skip
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (images/, labels/, masks/)")
    p.add_argument("--list-domains", action="store_true", help="print the domain names as JSON")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.data.synthetic import list_domains, write_dataset

    if args.list_domains:
        print_json(list_domains(include_heldout=True))
        return 0
    if not args.kind or not args.out:
        raise InputError("give KIND (nuclei or vessels) and --out DIR, or --list-domains")
    if args.domain:
        domain = args.domain
    elif args.renderer == "heldout":
        domain = list_domains(include_heldout=True)["evaluation_only"][args.kind][0]
    else:
        domain = list_domains()[args.kind][0]
    out = output_folder(args.out)
    print_json(
        write_dataset(
            args.kind, domain, args.n, args.size, args.seed, out, overwrite=args.overwrite,
            renderer=args.renderer,
        )
    )
    return 0
