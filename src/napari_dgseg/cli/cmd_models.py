"""``dgseg models``: the shipped and user model bundles as JSON."""

from __future__ import annotations

import argparse

from napari_dgseg.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list shipped and user model bundles")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.bundle_index import list_bundles, shipped_dir, user_dir

    print_json({"shipped_dir": str(shipped_dir()), "user_dir": str(user_dir()),
                "models": list_bundles()})
    return 0
