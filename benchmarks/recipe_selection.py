"""Choose the training recipe of the shipped models without touching the evaluation sets.

Leave-styles-out on the *training* renderer only: train on three of its five H&E domains
(``clean``, ``dark-stain``, ``warm-scanner``), measure on the other two (``pale-scanner``,
``blurry-jpeg``) and on the three seen ones (fresh tiles). The held-out renderer and the real
images are never looked at here; they are for ``benchmarks/generalization.py``, which reports the
chosen recipe. Variants differ in one choice at a time: input features, stain/camera
augmentation, object-size augmentation. A classical row (haematoxylin colour deconvolution +
Otsu) gives the bar.

Vessels (``--task vessels``) the same way on the training renderer's four fundus domains: train
on ``camera-a`` and ``handheld``, measure on ``camera-b`` and ``camera-c``; Dice and clDice; the
classical row is the green-channel top-hat (:func:`napari_dgseg.core.classical.classical_vessels`).

Prints JSON (also written to ``benchmarks/results/recipe_selection.json``, or
``recipe_selection_vessels.json``).

    python benchmarks/recipe_selection.py --data /work/data --iters 600
    python benchmarks/recipe_selection.py --task vessels --data /work/data --iters 500 --size 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit, load_average, machine_state  # noqa: E402

SEEN = ("clean", "dark-stain", "warm-scanner")
UNSEEN = ("pale-scanner", "blurry-jpeg")
VESSEL_SEEN = ("camera-a", "handheld")
VESSEL_UNSEEN = ("camera-b", "camera-c")

VARIANTS = {
    "rgb": {"features": "rgb", "augment": "none", "scale_range": None},
    "rgb+aug": {"features": "rgb", "augment": "stain", "scale_range": None},
    "stain+aug": {"features": "rgb+stain", "augment": "stain", "scale_range": None},
    "stain+aug+scale": {"features": "rgb+stain", "augment": "stain", "scale_range": (0.7, 1.4)},
}
VESSEL_VARIANTS = {
    "rgb": {"features": "rgb", "augment": "none", "scale_range": None},
    "rgb+aug": {"features": "rgb", "augment": "camera", "scale_range": None},
    "vessel+aug": {"features": "rgb+vessel", "augment": "camera", "scale_range": None},
    "vessel+aug+scale": {"features": "rgb+vessel", "augment": "camera", "scale_range": (0.7, 1.4)},
    "rgb+fundus": {"features": "rgb", "augment": "fundus", "scale_range": None},
    "vessel+fundus": {"features": "rgb+vessel", "augment": "fundus", "scale_range": None},
    "vessel+fundus+scale": {"features": "rgb+vessel", "augment": "fundus", "scale_range": (0.7, 1.4)},
}


def classical_instances(rgb8: np.ndarray) -> np.ndarray:
    """Haematoxylin by colour deconvolution, Otsu on tissue, connected components."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    h = rgb2hed(rgb8)[..., 0]
    mask = h > threshold_otsu(h)
    return label(remove_small_objects(mask, 10))


def score(instances: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from napari_dgseg.core import metrics

    sc = metrics.instance_scores(instances, gt)
    return {k: float(sc[k]) for k in ("dice", "aji", "pq")}


def vessel_score(mask: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from napari_dgseg.core import metrics

    return {"dice": float(metrics.dice(mask > 0, gt > 0)), "cldice": float(metrics.cldice(mask > 0, gt > 0))}


def evaluate(bundle, domains: dict[str, list], task: str = "nuclei",
             dcin: str = "none", rescale: str = "auto") -> dict[str, dict[str, float]]:
    from napari_dgseg.core.postprocess import semantic_to_instances

    out = {}
    for name, samples in domains.items():
        rows = []
        for s in samples:
            pred = bundle.predict(s.image, dcin=dcin, device="cpu", rescale=rescale)
            if task == "vessels":
                rows.append(vessel_score(pred.labels, s.labels))
                continue
            inst = pred.labels if bundle.family.output == "instances" else semantic_to_instances(pred.labels)
            rows.append(score(inst, s.labels))
        out[name] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    return out


def baseline(task: str, samples: list) -> dict[str, float]:
    """The classical row's mean scores on ``samples``."""
    if task == "vessels":
        from napari_dgseg.core.classical import classical_vessels

        rows = [vessel_score(classical_vessels(s.image), s.labels) for s in samples]
    else:
        rows = [score(classical_instances(s.image), s.labels) for s in samples]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["nuclei", "vessels"], default="nuclei")
    ap.add_argument("--data", default="/work/data",
                    help="folder with train-<task>/ and val-<task>/ (one sub-folder per domain)")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--family", default="unet")
    ap.add_argument("--variants", nargs="+", help="default: every variant of the task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", nargs="+", type=int, default=[16, 32, 64, 128])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a loaded machine)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/recipe_selection[_vessels].json)")
    args = ap.parse_args()
    vessels = args.task == "vessels"
    seen, unseen = (VESSEL_SEEN, VESSEL_UNSEEN) if vessels else (SEEN, UNSEEN)
    variants = VESSEL_VARIANTS if vessels else VARIANTS
    names = args.variants or list(variants)
    first = "dice"
    second = "cldice" if vessels else "aji"

    import torch

    from napari_dgseg.core.data.datasets import load_folder
    from napari_dgseg.core.train.source import train

    torch.set_num_threads(args.threads)
    load_before = load_average()
    data = Path(args.data)
    val = {d: load_folder(data / f"val-{args.task}" / d) for d in seen + unseen}
    results: dict[str, dict] = {"classical": {n: baseline(args.task, s) for n, s in val.items()}}
    print(json.dumps({"classical": results["classical"]}), file=sys.stderr, flush=True)
    for variant in names:
        t0 = time.perf_counter()
        bundle = train(args.family, [data / f"train-{args.task}" / d for d in seen], iters=args.iters,
                       size=args.size, batch=4, lr=args.lr, seed=args.seed,
                       config={"widths": list(args.widths)}, **variants[variant])
        seconds = round(time.perf_counter() - t0, 1)
        results[variant] = evaluate(bundle, val, args.task) | {"train_seconds": seconds}
        print(json.dumps({variant: results[variant]}), file=sys.stderr, flush=True)
    summary = {
        name: {
            f"unseen_{first}": round(float(np.mean([r[d][first] for d in unseen])), 4),
            f"unseen_{second}": round(float(np.mean([r[d][second] for d in unseen])), 4),
            f"seen_{first}": round(float(np.mean([r[d][first] for d in seen])), 4),
        }
        for name, r in results.items()
    }
    report = {"benchmark": "recipe_selection", "task": args.task, "family": args.family,
              "iters": args.iters, "crop": args.size, "widths": list(args.widths), "lr": args.lr,
              "seed": args.seed, "seen": seen, "unseen": unseen,
              "variants": {n: variants[n] for n in names},
              "results": results, "summary": summary, "machine": machine_state(load_before)}
    default = "recipe_selection_vessels.json" if vessels else "recipe_selection.json"
    emit(report, Path(args.out) if args.out else Path(__file__).parent / "results" / default)


if __name__ == "__main__":
    main()
