"""``dgseg style train|apply``: global alignment by style transfer (Mind the Gap, stage 1).

Su, Yao, Yang, Wang, Yan, Sun & Huang, "Mind the Gap: Alleviating Local Imbalance for
Unsupervised Cross-Modality Medical Image Segmentation" (2023).

* ``dgseg style train --source DIR --target DIR --out S.dgstyle``: train the AdaIN auto-encoder
  on source images (a labelled folder's ``images/`` or any folder of images; labels unused) and
  unlabelled target tiles;
* ``dgseg style apply --style S.dgstyle --images DIR... --out FOLDER``: write the images rendered
  in the target style as ``FOLDER/images/<stem>.png``; label files found beside the inputs
  (``../labels/<stem>.*``) are copied to ``FOLDER/labels/``, so a labelled source folder becomes
  a labelled target-styled folder (``dgseg train`` / ``dgseg adapt --source`` read it);
* ``dgseg adapt --style S.dgstyle``: adaptation renders its labelled source crops in the target
  style on the fly.

torch is imported inside the commands, never at registration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_dgseg.cli._common import add_overwrite, command_line, output_file, print_json
from napari_dgseg.core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "style",
        help="style transfer between domains (train a style model, apply it)",
        description="Global alignment by style transfer (Mind the Gap, stage 1): an AdaIN "
        "auto-encoder whose style comes from the domain label renders source images in the "
        "target domain's style, structure kept.",
    )
    actions = p.add_subparsers(dest="style_command", metavar="ACTION")
    actions.required = True

    t = actions.add_parser("train", help="train a style model on source and target images",
                           description="Train a source <-> target style model (.dgstyle).")
    t.add_argument("--source", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="source images: folders (DIR or DIR/images; labels are not needed) or files")
    t.add_argument("--target", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="unlabelled target images: folders or files")
    t.add_argument("--out", required=True, help="style model to write (NAME.dgstyle)")
    t.add_argument("--preset", choices=("light", "full"), default="light",
                   help="light (default): small widths, trains on a CPU in minutes; full: the "
                   "paper's architecture, for a GPU")
    t.add_argument("--iters", type=int, default=400, help="iterations (default 400; paper 50k)")
    t.add_argument("--size", type=int, default=128, help="crop side in pixels (default 128)")
    t.add_argument("--batch", type=int, default=4, help="crops per domain per iteration (4 + 4)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(t)
    t.set_defaults(func=run_train)

    a = actions.add_parser("apply", help="render images in the target style",
                           description="Render source images in the style model's target style.")
    a.add_argument("--style", required=True, metavar="STYLE.dgstyle", help="style model")
    a.add_argument("--images", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="images: folders (DIR or DIR/images) or files")
    a.add_argument("--out", required=True, help="output folder (images/ and, when found, labels/)")
    a.add_argument("--direction", choices=("to-target", "to-source"), default="to-target",
                   help="to-target (default): source -> target style; to-source: the reverse")
    a.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    add_overwrite(a)
    a.set_defaults(func=run_apply)


# ---------------------------------------------------------------------------- inputs
def collect_images(items: list[str], flag: str) -> list[Path]:
    """Image files named by ``items`` (files, folders, or folders holding ``images/``)."""
    from napari_dgseg.core.data.datasets import IMAGE_EXTS

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            folder = p / "images" if (p / "images").is_dir() else p
            found = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise InputError(f"{flag} folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{flag} {p} is neither an image file nor a folder; check the path")
    return files


def read_rgb(path: Path) -> Any:
    """``(H, W, 3)`` uint8 RGB of an image file (one clear error when it cannot be read)."""
    from napari_dgseg.core.data.datasets import read_array, to_rgb_uint8

    return to_rgb_uint8(read_array(path), str(path))


def label_beside(image: Path) -> Path | None:
    """The label file of ``DIR/images/<stem>.*`` in ``DIR/labels/`` (``<stem>`` or ``<stem>_labels``)."""
    from napari_dgseg.core.data.datasets import LABEL_EXTS

    if image.parent.name != "images":
        return None
    folder = image.parent.parent / "labels"
    if not folder.is_dir():
        return None
    for stem in (image.stem, f"{image.stem}_labels"):
        for ext in LABEL_EXTS:
            cand = folder / f"{stem}{ext}"
            if cand.is_file():
                return cand
    return None


# ---------------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> int:
    from napari_dgseg.cli._progress import ProgressBar
    from napari_dgseg.core.outputs import bundle_lock
    from napari_dgseg.core.style.io import save_style, style_path
    from napari_dgseg.core.style.model import get_preset
    from napari_dgseg.core.style.train import train_style

    out = style_path(args.out)
    output_file(out, "--out", overwrite=args.overwrite)  # refused before training, not after
    cfg = get_preset(args.preset)
    sources = collect_images(args.source, "--source")
    targets = collect_images(args.target, "--target")
    src = [read_rgb(f) for f in sources]
    tgt = [read_rgb(f) for f in targets]
    smallest = min(min(im.shape[:2]) for im in src + tgt)
    if smallest < args.size:
        raise InputError(f"the smallest image is {smallest} px, smaller than the crop size "
                         f"{args.size}; pass --size {max(32, smallest - smallest % cfg.divisor)} "
                         "or larger images")
    bar = None if args.quiet else ProgressBar("style train")
    out.parent.mkdir(parents=True, exist_ok=True)
    with bundle_lock(out, "style train"):
        model = train_style(
            src, tgt, config=cfg, iters=args.iters, size=args.size, batch=args.batch,
            lr=args.lr, seed=args.seed, device=args.device, progress=bar,
            source_name=_name(args.source), target_name=_name(args.target),
            command=command_line(args),
        )
        model.provenance["preset"] = args.preset
        model.provenance["source"]["files"] = [str(f) for f in sources]
        model.provenance["target"]["files"] = [str(f) for f in targets]
        path = save_style(model, out, overwrite=args.overwrite)
    prov = model.provenance
    print_json({
        "style": str(path),
        "sha256": model.sha256,
        "preset": args.preset,
        "config": model.config.to_dict(),
        "source": {"name": prov["source"]["name"], "images": len(src)},
        "target": {"name": prov["target"]["name"], "images": len(tgt)},
        "iterations": prov["iterations"],
        "final": prov["final"],
        "seconds": prov["seconds"],
    })
    return 0


def _name(items: list[str]) -> str:
    p = Path(items[0])
    if p.name == "images":
        p = p.parent
    return p.name if len(items) == 1 else f"{p.name} (+{len(items) - 1})"


# ---------------------------------------------------------------------------- apply
def run_apply(args: argparse.Namespace) -> int:
    from napari_dgseg.cli._common import output_folder, run_batch
    from napari_dgseg.cli._inputs import report_batch
    from napari_dgseg.core.atomic import atomic_write
    from napari_dgseg.core.outputs import refuse_existing
    from napari_dgseg.core.style.io import load_style
    from napari_dgseg.core.style.transfer import colour_stats

    model = load_style(args.style)  # a bad style file fails before anything is written
    files = collect_images(args.images, "--images")
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"several inputs share the name(s) {dupes[:5]}; their outputs would "
                         "collide. Apply the folders one at a time with different --out")
    out = output_folder(args.out)
    jobs = [(f, label_beside(f)) for f in files]
    planned = [out / "images" / f"{f.stem}.png" for f in files]
    planned += [out / "labels" / f"{f.stem}{lab.suffix}" for f, lab in jobs if lab is not None]
    refuse_existing(planned, overwrite=args.overwrite)
    (out / "images").mkdir(exist_ok=True)
    if any(lab is not None for _, lab in jobs):
        (out / "labels").mkdir(exist_ok=True)
    in_stats, out_stats = [], []

    def process(job: tuple[Path, Path | None]) -> dict:
        from PIL import Image

        image_path, lab = job
        image = read_rgb(image_path)
        styled = model.transfer(image, args.direction, device=args.device)
        dest = out / "images" / f"{image_path.stem}.png"
        atomic_write(dest, lambda p: Image.fromarray(styled).save(p, format="PNG"),
                     overwrite=args.overwrite)
        row: dict[str, Any] = {"input": str(image_path), "output": str(dest)}
        if lab is not None:
            data = lab.read_bytes()
            ldest = out / "labels" / f"{image_path.stem}{lab.suffix}"
            atomic_write(ldest, lambda p: Path(p).write_bytes(data), overwrite=args.overwrite)
            row["labels"] = str(ldest)
        in_stats.append(colour_stats([image]))
        out_stats.append(colour_stats([styled]))
        return row

    rows, failed, skipped = run_batch("style apply", jobs, process, label=lambda j: str(j[0]))
    summary: dict[str, Any] = {
        "style": str(model.path),
        "sha256": model.sha256,
        "direction": args.direction,
        "domains": list(model.domains),
        "outputs": rows,
        "mean_rgb": {
            "inputs": _mean_of(in_stats),
            "outputs": _mean_of(out_stats),
            "style_target": model.provenance.get(
                "target" if args.direction == "to-target" else "source", {}).get("colour", {}).get("mean"),
        },
    }
    return report_batch(summary, [(f, f.stem) for f in files], failed, skipped)


def _mean_of(stats: list[dict]) -> list[float] | None:
    if not stats:
        return None
    return [round(sum(s["mean"][c] for s in stats) / len(stats), 2) for c in range(3)]
