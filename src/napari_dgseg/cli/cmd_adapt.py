"""``dgseg adapt --model M --target DIR_OR_FILES... [--source DIR] --out NEW.dgseg [--iters N]``

MaNi label-free adaptation (Sharma, Syed & Brown, "MaNi: Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023): a new bundle adapted to the target images; the parent
model file is never modified. ``--method stats`` re-estimates the BatchNorm statistics on the
targets instead. Either way the run judges itself on held-out target images with label-free
signals (``selection`` in the JSON) and, unless ``--no-select``, keeps the best checkpoint
before the first sign of drift (MaNi; the drift guard), which may be the parent's weights.
"""

from __future__ import annotations

import argparse
from typing import Any

from napari_dgseg.cli._common import add_overwrite, bundle_output, command_line, print_json
from napari_dgseg.cli._progress import ProgressBar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a model to unlabelled target images (MaNi)",
        description=(
            "Adapt a trained model to a new domain from unlabelled target images with MaNi "
            "(mutual information between source and target nucleus features). Source data: "
            "--source, or the labelled replay set stored in the bundle."
        ),
    )
    p.add_argument("--model", required=True, help="bundle path or name (see `dgseg models`)")
    p.add_argument(
        "--target",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="unlabelled target images: files, or folders of images (or DIR/images)",
    )
    p.add_argument(
        "--source",
        metavar="DIR",
        default=None,
        help="labelled source folder (images/ + labels/); default: the bundle's replay set",
    )
    p.add_argument("--out", required=True, help="new bundle to write (NEW.dgseg); never the parent")
    p.add_argument("--iters", type=int, default=200, help="iterations (default 200)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch", type=int, default=4, help="source crops and target crops per iteration (4 + 4)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="crop side (default 256, at most the replay crop side)",
    )
    p.add_argument(
        "--warmup", type=float, default=0.1, help="fraction of iterations on source only (0.1)"
    )
    p.add_argument("--mi-weight", type=float, default=1.0, help="weight of the MI loss (1)")
    p.add_argument(
        "--method",
        choices=("mani", "stats"),
        default="mani",
        help="mani (default): MaNi training; stats: re-estimate the BatchNorm statistics on the "
        "targets (seconds, no training)",
    )
    p.add_argument(
        "--norm",
        choices=("frozen", "split", "mixed", "dual"),
        default="frozen",
        help="BatchNorm during MaNi: frozen (default, parent statistics kept), split (training "
        "mode, separate source/target passes), mixed (training mode on source+target batches), "
        "dual (domain-specific statistics: the parent's for source passes, re-estimated on the "
        "targets for target passes; the new model carries the target statistics)",
    )
    p.add_argument(
        "--source-augment",
        choices=("training", "jitter", "none"),
        default="training",
        help="augmentation of the labelled source (replay) crops: training (default, the "
        "parent's own training augmentation), jitter (stain jitter only), none (as stored)",
    )
    p.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the decoders only (MaNi's first stage for instance segmentation)",
    )
    p.add_argument(
        "--pseudo-labels",
        choices=["online", "parent"],
        default="online",
        help="target foreground of the MI term: the adapted network's own prediction at each "
        "iteration (online, the paper's; default) or the frozen parent's (parent)",
    )
    p.add_argument(
        "--target-scale",
        choices=["model", "native"],
        default=None,
        help="scale of the target crops: model (each target resampled by the factor the "
        "parent's inference applies to it; default) or native (the images' own pixels)",
    )
    p.add_argument(
        "--average",
        type=float,
        default=None,
        metavar="A",
        help="return A x the last iterate + (1 - A) x the parent (weight averaging, WiSE-FT) "
        "instead of the checkpoint the label-free selection chooses",
    )
    p.add_argument(
        "--no-select",
        action="store_true",
        help="keep the last iterate instead of the checkpoint (parent included) with the best "
        "label-free signal on held-out targets before the first sign of drift",
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="target images held out for the label-free signal (default: a quarter, at most 4)",
    )
    p.add_argument(
        "--style",
        metavar="STYLE.dgstyle",
        default=None,
        help="style model from `dgseg style train`: the labelled source crops are rendered in "
        "the target's style before MaNi sees them (Mind the Gap's global alignment)",
    )
    p.add_argument(
        "--local-alignment",
        action="store_true",
        help="Mind the Gap's local alignment: a pixel-wise feature discriminator D1 (local "
        "feature mask, reweighted target features) and an output-space discriminator D2; the new "
        "bundle stores D1 and predicts local masks (predict --local-mask)",
    )
    p.add_argument(
        "--no-output-discriminator",
        action="store_true",
        help="with --local-alignment: D1 only, no D2",
    )
    p.add_argument("--d1-weight", type=float, default=0.01,
                   help="adversarial weight of D1 (default 0.01, as in the paper)")
    p.add_argument("--d2-weight", type=float, default=0.01,
                   help="adversarial weight of D2 (default 0.01, as in the paper)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.errors import InputError
    from napari_dgseg.core.outputs import bundle_lock
    from napari_dgseg.core.train.adapt import adapt

    parent = load_bundle(args.model)
    style = _style_transform(args)
    out = Path(args.out)
    for candidate in (out, out.with_name(out.name + ".dgseg")):
        if parent.path is not None and candidate.resolve() == Path(parent.path).resolve():
            raise InputError(
                f"--out {out} is the parent model itself; give a new file name (the parent is "
                "never overwritten)"
            )
    out = bundle_output(args.out, overwrite=args.overwrite)
    command = command_line(args)
    bar = None if args.quiet else ProgressBar("adapt")
    with bundle_lock(out, "adapt"):  # a second run saving this name is refused at once
        bundle = _adapt(args, adapt, parent, out, bar, command, style)
    prov = bundle.provenance
    print_json(
        {
            "bundle": str(bundle.path),
            "sha256": bundle.sha256,
            "parent": prov["parent"],
            "family": bundle.family_name,
            "targets": len(prov["targets"]),
            "source": prov["source"],
            "iterations": prov["iterations"],
            "final_seg": prov["final_seg"],
            "final_mi": prov["final_mi"],
            "method": args.method,
            "selection": {k: v for k, v in prov["selection"].items() if k != "checkpoints"},
            "local_alignment": prov.get("local_alignment"),
            "seconds": prov["seconds"],
        }
    )
    warning = prov["selection"].get("warning")
    note = prov["selection"].get("guard_note")
    if warning or note:
        import sys

        if warning:  # it carries the guard's note when the parent was kept
            print(f"warning: {warning}", file=sys.stderr)
        else:
            print(f"note: {note}", file=sys.stderr)
    return 0


def _style_transform(args: argparse.Namespace) -> Any:
    """The ``--style`` model's source-batch transform (None without ``--style``)."""
    if args.style is None:
        return None
    from napari_dgseg.core.errors import InputError
    from napari_dgseg.core.style.io import load_style

    if args.method != "mani":
        raise InputError("--style renders the labelled source crops MaNi trains on; it has no "
                         "effect with --method stats (drop --style or use --method mani)")
    return load_style(args.style).batch_transform("to-target")


def _adapt(args: argparse.Namespace, adapt: Any, parent: Any, out: Any, bar: Any, command: str,
           style: Any = None) -> Any:
    """Run ``adapt`` with the command's arguments (saving to ``out``)."""
    return adapt(
        parent,
        args.target,
        source=args.source,
        iters=args.iters,
        lr=args.lr,
        seed=args.seed,
        batch=args.batch,
        size=args.size,
        warmup=args.warmup,
        mi_weight=args.mi_weight,
        device=args.device,
        progress=bar,
        name=out.name[: -len(".dgseg")] if out.name.endswith(".dgseg") else out.name,
        out=out,
        overwrite=args.overwrite,
        command=command,
        method=args.method,
        norm=args.norm,
        select=not args.no_select,
        holdout=args.holdout,
        source_augment=args.source_augment,
        freeze_encoder=args.freeze_encoder,
        pseudo_labels=args.pseudo_labels,
        **({} if args.target_scale is None else {"target_scale": args.target_scale}),
        average=args.average,
        source_transform=style,
        local_alignment=args.local_alignment,
        output_discriminator=args.local_alignment and not args.no_output_discriminator,
        d1_weight=args.d1_weight,
        d2_weight=args.d2_weight,
    )
