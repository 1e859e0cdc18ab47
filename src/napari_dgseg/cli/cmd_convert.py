"""``dgseg convert CHECKPOINT --family F --out X.dgseg``: the one safe door for pickled checkpoints."""

from __future__ import annotations

import argparse

from napari_dgseg.cli._common import add_overwrite, bundle_output, print_json
from napari_dgseg.cli.cmd_train import parse_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a PyTorch checkpoint (state dict) into a bundle, loading it weights-only",
    )
    p.add_argument("checkpoint", help=".pt/.pth file holding a state dict of tensors")
    p.add_argument("--family", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="architecture as JSON (must match the weights)")
    p.add_argument("--classes", nargs="+", default=["background", "foreground"])
    p.add_argument("--task", default="")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.bundle import convert_checkpoint

    out = bundle_output(args.out, overwrite=args.overwrite)
    bundle = convert_checkpoint(args.checkpoint, args.family, config=parse_config(args.config),
                                class_names=args.classes, task=args.task)
    path = bundle.save(out, overwrite=args.overwrite)
    print_json({"bundle": str(path), "sha256": bundle.sha256, "family": bundle.family_name})
    return 0
