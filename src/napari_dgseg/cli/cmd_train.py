"""``dgseg train FAMILY --source DIR [DIR ...] --out X.dgseg --iters N ...``"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_dgseg.cli._common import add_overwrite, bundle_output, command_line, print_json
from napari_dgseg.cli._progress import ProgressBar
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.registry import available_family_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model family on labelled source folders",
        description="Train a model on labelled folders (images/ + labels/; one domain per folder).",
    )
    p.add_argument("family", help="model family: " + ", ".join(available_family_names()))
    p.add_argument("--source", nargs="+", required=True, metavar="DIR",
                   help="labelled source folders (images/ + labels/), or folders of such folders")
    p.add_argument("--out", required=True, help="bundle to write (NAME.dgseg)")
    p.add_argument("--iters", type=int, default=1000, help="training iterations (default 1000)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    p.add_argument("--batch", type=int, default=4, help="crops per iteration (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", metavar="DIR", help="labelled validation folder (Dice in provenance)")
    p.add_argument("--cqg", action="store_true", help="colour-quality generalisation loss (DCIN paper)")
    p.add_argument("--features", choices=["rgb", "rgb+stain", "rgb+vessel"], default="rgb",
                   help="network input: RGB, RGB beside per-image scaled H&E stain densities "
                        "(rgb+stain), or RGB beside the per-image scaled green-channel top-hat "
                        "(rgb+vessel, fundus) (default rgb)")
    p.add_argument("--augment", choices=["none", "camera", "stain", "stain-nuclei", "fundus"],
                   default="none",
                   help="training augmentation: camera effects, H&E stain jitter + camera, "
                        "stain-nuclei (each nucleus's haematoxylin scaled on its own, then stain "
                        "jitter + camera), or fundus colour/illumination jitter + camera "
                        "(default none)")
    p.add_argument("--scale-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="object-size augmentation: magnify crops by a factor in [LOW, HIGH]")
    p.add_argument("--pixel-size", type=float, metavar="UM",
                   help="pixel size of the training images in micrometres (recorded in the "
                        "bundle; inference resamples images to it)")
    p.add_argument("--init", metavar="MODEL",
                   help="warm start from this bundle's weights (same family, --config, classes and "
                        "--features); e.g. to train a shipped model longer or on your own data")
    p.add_argument("--config", default=None,
                   help='architecture overrides as JSON, e.g. \'{"widths": [16, 32, 64, 128]}\'')
    p.add_argument("--task", choices=["nuclei", "vessels", "binary", "semantic"],
                   help="what the labels mean (default: guessed from the labels)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)


def parse_config(text: str | None) -> dict:
    """Parse the ``--config`` JSON object (a clear message when it is not one)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--config is not valid JSON ({exc.msg}); example: '{{\"widths\": [16, 32]}}'") from None
    if not isinstance(value, dict):
        raise InputError("--config must be a JSON object such as '{\"norm\": \"instance\"}'")
    return value


def run(args: argparse.Namespace) -> int:
    from napari_dgseg.core.outputs import bundle_lock
    from napari_dgseg.core.train.source import train

    command = command_line(args)
    config = parse_config(args.config)
    out = bundle_output(args.out, overwrite=args.overwrite)
    with bundle_lock(out, "train"):  # a second run saving this name is refused at once
        bundle = _train(args, train, out, config, command)
    prov = bundle.provenance
    print_json({
        "bundle": str(bundle.path),
        "family": bundle.family_name,
        "sha256": bundle.sha256,
        "iterations": prov.get("iterations"),
        "final_loss": prov.get("final_loss"),
        "val_metrics": prov.get("val_metrics"),
        "seconds": prov.get("seconds"),
    })
    return 0


def _train(args: argparse.Namespace, train: Any, out: Path, config: dict, command: str) -> Any:
    """Run ``train`` with the command's arguments (saving to ``out``)."""
    bar = None if args.quiet else ProgressBar(f"train {args.family}")
    return train(
        args.family,
        args.source,
        out=out,
        overwrite=args.overwrite,
        iters=args.iters,
        size=args.size,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        val=args.val,
        config=config,
        cqg=args.cqg,
        features=args.features,
        augment=args.augment,
        scale_range=tuple(args.scale_range) if args.scale_range else None,
        pixel_size_um=args.pixel_size,
        task=args.task,
        device=args.device,
        progress=bar,
        command=command,
        init=args.init,
    )
