"""``dgseg info BUNDLE``: the manifest of a bundle as JSON (hashes verified)."""

from __future__ import annotations

import argparse

from napari_dgseg.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model bundle's manifest as JSON")
    p.add_argument("bundle", help="bundle file or name of a shipped/user model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.bundle import load_bundle

    print_json(load_bundle(args.bundle).info())
    return 0
