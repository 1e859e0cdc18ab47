"""``dgseg evaluate PRED GT``: score predicted label maps against ground truth.

PRED and GT are two label files or two folders. Folders are paired by file stem; a trailing
``_labels`` on a prediction's stem is ignored (``x_labels.tif`` pairs with ``x.png``). Semantic
scores (per-class Dice, IoU, ASD) or instance scores (Dice, AJI, AJI+, DQ, SQ, PQ): ``--task``
chooses; by default (``auto``) the ground truth decides (:func:`detect_task`), a warning on stderr
says so, and the JSON records the task used and why (``"task"``, ``"task_source"``,
``"task_reason"``). Prints one JSON object: one row per image and the mean over images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_dgseg.cli._common import print_json
from napari_dgseg.core.errors import InputError

#: Label file types ``evaluate`` reads.
EVAL_EXTS = (".tif", ".tiff", ".png", ".npy")
INSTANCE_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="score predicted labels against ground truth (files or folders)",
        description=(
            "Score predicted label maps against ground truth. PRED and GT are two files or two "
            "folders (paired by file stem; a '_labels' suffix on prediction stems is ignored). "
            "Reads .tif/.tiff/.png/.npy. Prints one JSON object with a row per image and the "
            "mean over images."
        ),
    )
    p.add_argument("pred", metavar="PRED", help="predicted labels: a file or a folder")
    p.add_argument("gt", metavar="GT", help="ground-truth labels: a file or a folder")
    p.add_argument(
        "--task",
        choices=["auto", "semantic", "instance"],
        default="auto",
        help="semantic: per-class dice/iou/asd; instance: dice, aji, aji_plus, dq, sq, pq; auto "
        "(default): instance when the ground truth holds object ids (each id one connected "
        "region), else semantic (with a note on stderr)",
    )
    p.add_argument(
        "--instance",
        action="store_true",
        help="same as --task instance",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="semantic: number of classes including background (default: largest id + 1)",
    )
    p.add_argument(
        "--mask",
        default=None,
        metavar="MASK",
        help="field-of-view mask (non-zero = inside): one file for every image, or a folder "
        "paired by stem (a '_mask' suffix is ignored)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        default=1.0,
        help="pixel size for the surface distance (default 1: distances in pixels)",
    )
    p.set_defaults(func=run)


def _key(path: Path, suffix: str) -> str:
    stem = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = path.stem
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) and stem != suffix else stem


def _index(folder: Path, suffix: str, exts: tuple[str, ...], role: str) -> dict[str, Path]:
    files = sorted(
        f for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
    )  # fmt: skip
    if not files:
        raise InputError(
            f"{role} folder {folder} holds no label files ({', '.join(exts)}); point {role} "
            "at the folder with the label maps."
        )
    out: dict[str, Path] = {}
    for f in files:
        k = _key(f, suffix)
        if k in out:
            raise InputError(
                f"{role}: {out[k].name} and {f.name} in {folder} have the same stem {k!r}; keep "
                "one file per image."
            )
        out[k] = f
    return out


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def pair_files(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction and ground-truth files.

    Parameters
    ----------
    pred, gt : Path
        Two files or two folders.

    Returns
    -------
    list of (name, pred_path, gt_path)
        In name order.

    Raises
    ------
    InputError
        Missing paths, a file given with a folder, unpaired files on either side.
    """
    for role, p in (("PRED", pred), ("GT", gt)):
        if not p.exists():
            raise InputError(f"{role} {p}: no such file or folder.")
    if pred.is_file() and gt.is_file():
        return [(_key(gt, ""), pred, gt)]
    if pred.is_dir() != gt.is_dir():
        raise InputError(
            f"PRED {pred} is a {'folder' if pred.is_dir() else 'file'} but GT {gt} is a "
            f"{'folder' if gt.is_dir() else 'file'}; give two files or two folders."
        )
    p_idx = _index(pred, "_labels", EVAL_EXTS, "PRED")
    g_idx = _index(gt, "", EVAL_EXTS, "GT")
    no_gt = sorted(p_idx[k].name for k in p_idx.keys() - g_idx.keys())
    if no_gt:
        raise InputError(
            f"no ground truth in {gt} for prediction(s) {_shown(no_gt)} (pairs by file stem, a "
            "'_labels' suffix is ignored); add the ground truth or remove those predictions."
        )
    no_pred = sorted(g_idx[k].name for k in g_idx.keys() - p_idx.keys())
    if no_pred:
        raise InputError(
            f"no prediction in {pred} for ground truth {_shown(no_pred)} (pairs by file stem, a "
            "'_labels' suffix is ignored); predict those images or evaluate a folder without "
            "them."
        )
    return [(k, p_idx[k], g_idx[k]) for k in sorted(g_idx)]


def _mask_for(
    mask_arg: Path | None, name: str, shape: tuple[int, ...], idx: dict[str, Path] | None
) -> np.ndarray | None:
    from napari_dgseg.core.data.datasets import read_mask

    if mask_arg is None:
        return None
    if idx is not None:
        if name not in idx:
            raise InputError(
                f"no mask for image {name!r} in {mask_arg} (pairs by stem, a '_mask' suffix is "
                "ignored); add it or pass one mask file for all images."
            )
        path = idx[name]
    elif mask_arg.is_file():
        path = mask_arg
    else:
        raise InputError(f"--mask {mask_arg}: no such file or folder.")
    mask = read_mask(path)
    if mask.shape != shape:
        raise InputError(
            f"mask {path} has shape {mask.shape} but the labels of {name!r} have shape {shape}; "
            "pass the field-of-view mask of the same images."
        )
    return mask


#: Fewest object ids in a ground-truth map for it to vote "instance" (a binary or two-class map
#: is semantic: one object per class is no evidence of instances).
MIN_INSTANCE_IDS = 3

#: Share of ids that must each be one connected region for a map to vote "instance".
SINGLE_REGION_SHARE = 0.9


def _single_region_share(gt: np.ndarray) -> tuple[int, float]:
    """Number of non-zero ids in ``gt`` and the share of them that are one 8-connected region."""
    from scipy import ndimage

    ids, inverse = np.unique(gt, return_inverse=True)
    dense = inverse.reshape(gt.shape).astype(np.int32)  # ids 0..n-1 (0 = background if present)
    offset = 1 if ids.size and ids[0] == 0 else 0
    n = int(ids.size - offset)
    if n == 0:
        return 0, 0.0
    if offset == 0:
        dense = dense + 1
    single = 0
    structure = np.ones((3, 3), bool)
    for index, box in enumerate(ndimage.find_objects(dense), start=1):
        if box is None:
            continue
        _, count = ndimage.label(dense[box] == index, structure=structure)
        single += int(count == 1)
    return n, single / n


def detect_task(gts: list[np.ndarray]) -> tuple[str, str]:
    """Decide whether ground-truth maps hold instance ids or semantic classes.

    A map whose largest id exceeds :data:`~napari_dgseg.core.metrics.MAX_SEMANTIC_CLASSES` votes
    "instance" (no class map has such ids). Otherwise a map votes "instance" when it holds at least :data:`MIN_INSTANCE_IDS` non-zero ids and at
    least :data:`SINGLE_REGION_SHARE` of them are each one connected region (objects); a map with
    as many ids that are split into several regions votes "semantic" (classes recur across the
    image); maps with fewer ids do not vote. The majority of votes decides; no votes: semantic.

    Returns
    -------
    task : {"instance", "semantic"}
    reason : str
        One sentence for the user and the JSON.
    """
    from napari_dgseg.core.metrics import MAX_SEMANTIC_CLASSES

    votes = {"instance": 0, "semantic": 0}
    for gt in gts:
        if gt.size and int(gt.max()) > MAX_SEMANTIC_CLASSES:  # no class map has ids this large
            votes["instance"] += 1
            continue
        n, share = _single_region_share(gt)
        if n < MIN_INSTANCE_IDS:
            continue
        votes["instance" if share >= SINGLE_REGION_SHARE else "semantic"] += 1
    if votes["instance"] > votes["semantic"]:
        return "instance", (
            f"{votes['instance']} of {len(gts)} ground-truth maps hold object ids (each id one "
            "connected region)"
        )
    if votes["semantic"]:
        return "semantic", (
            f"{votes['semantic']} of {len(gts)} ground-truth maps hold class ids that recur in "
            "several regions"
        )
    return "semantic", (
        f"the ground truth holds at most {MIN_INSTANCE_IDS - 1} ids per map (binary or "
        "few-class masks)"
    )


def _mean_rows(rows: list[dict]) -> dict:
    """Average every numeric leaf over rows (nested dicts keep their structure)."""
    out: dict = {}
    for key, val in rows[0].items():
        if isinstance(val, dict):
            out[key] = _mean_rows([r[key] for r in rows])
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


def _choose_task(args: argparse.Namespace, gts: list[np.ndarray]) -> tuple[str, str, str]:
    """``(task, source, reason)``: the task asked for, or the one the ground truth shows."""
    asked = "instance" if args.instance else args.task
    if args.instance and args.task == "semantic":
        raise InputError("--instance and --task semantic contradict each other; pass one.")
    if asked != "auto":
        return asked, "option", f"--task {asked} was given"
    if args.num_classes is not None:
        return "semantic", "option", "--num-classes was given"
    task, reason = detect_task(gts)
    other = "semantic" if task == "instance" else "instance"
    print(
        f"dgseg evaluate: scoring as {task}: {reason}. Pass --task {other} to score as {other}.",
        file=sys.stderr,
    )
    return task, "detected", reason


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one JSON object; returns 0."""
    from napari_dgseg.core.data.datasets import read_labels
    from napari_dgseg.core.metrics import instance_scores, semantic_scores

    pred_root, gt_root = Path(args.pred), Path(args.gt)
    mask_arg = Path(args.mask) if args.mask else None
    if args.num_classes is not None and args.num_classes < 2:
        raise InputError(f"--num-classes must be >= 2 (background + 1 class), got {args.num_classes}.")  # fmt: skip
    pairs = pair_files(pred_root, gt_root)
    mask_idx = None
    if mask_arg is not None and mask_arg.is_dir():
        from napari_dgseg.core.data.datasets import IMAGE_EXTS

        mask_idx = _index(mask_arg, "_mask", IMAGE_EXTS, "MASK")

    # read and check everything before computing anything (fail fast, name the files)
    loaded = []
    for name, p_path, g_path in pairs:
        pred = read_labels(p_path)
        gt = read_labels(g_path)
        if pred.shape != gt.shape:
            raise InputError(
                f"prediction {p_path} has shape {pred.shape} but ground truth {g_path} has shape "
                f"{gt.shape}; they must be label maps of the same image (same height and width)."
            )
        mask = _mask_for(mask_arg, name, gt.shape, mask_idx)
        loaded.append((name, p_path, g_path, pred, gt, mask))

    task, source, reason = _choose_task(args, [g for *_, g, _ in loaded])
    instance = task == "instance"
    num_classes = args.num_classes
    if not instance and num_classes is None:
        top = max(max(int(p.max(initial=0)), int(g.max(initial=0))) for *_, p, g, _ in loaded)
        num_classes = max(2, top + 1)

    rows = []
    for name, p_path, g_path, pred, gt, mask in loaded:
        try:
            if instance:
                if mask is not None:
                    pred = np.where(mask, pred, 0)
                    gt = np.where(mask, gt, 0)
                scores = instance_scores(pred, gt)
            else:
                scores = semantic_scores(pred, gt, num_classes, mask=mask, spacing=args.spacing)
        except InputError as exc:
            raise InputError(f"{p_path} vs {g_path}: {exc}") from exc
        rows.append({"name": name, "pred": str(p_path), "gt": str(g_path), **scores})

    if instance:
        mean = _mean_rows([{k: r[k] for k in INSTANCE_KEYS} for r in rows])
    else:
        mean = _mean_rows(
            [
                {k: r[k] for k in ("dice", "iou", "asd", "mean_dice", "mean_iou", "mean_asd")}
                for r in rows
            ]  # fmt: skip
        )
    result = {
        "task": task,
        "task_source": source,
        "task_reason": reason,
        "pred": str(pred_root),
        "gt": str(gt_root),
        "mask": str(mask_arg) if mask_arg else None,
        "num_classes": None if instance else num_classes,
        "n_images": len(rows),
        "images": rows,
        "mean": mean,
    }
    print_json(result)
    return 0
