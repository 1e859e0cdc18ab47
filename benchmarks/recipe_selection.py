"""Choose the training recipe of the shipped nuclei models without touching the evaluation sets.

Leave-styles-out on the *training* renderer only: train on three of its five H&E domains
(``clean``, ``dark-stain``, ``warm-scanner``), measure on the other two (``pale-scanner``,
``blurry-jpeg``) and on the three seen ones (fresh tiles). The held-out renderer and the real
images are never looked at here; they are for ``benchmarks/generalization.py``, which reports the
chosen recipe. Variants differ in one choice at a time: input features, stain/camera
augmentation, object-size augmentation. A classical row (haematoxylin colour deconvolution +
Otsu) gives the bar.

Prints JSON (also written to ``benchmarks/results/recipe_selection.json``).

    python benchmarks/recipe_selection.py --data /work/data --iters 600
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

VARIANTS = {
    "rgb": {"features": "rgb", "augment": "none", "scale_range": None},
    "rgb+aug": {"features": "rgb", "augment": "stain", "scale_range": None},
    "stain+aug": {"features": "rgb+stain", "augment": "stain", "scale_range": None},
    "stain+aug+scale": {"features": "rgb+stain", "augment": "stain", "scale_range": (0.7, 1.4)},
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


def evaluate(bundle, domains: dict[str, list]) -> dict[str, dict[str, float]]:
    from napari_dgseg.core.postprocess import semantic_to_instances

    out = {}
    for name, samples in domains.items():
        rows = []
        for s in samples:
            pred = bundle.predict(s.image, dcin="none", device="cpu")
            inst = pred.labels if bundle.family.output == "instances" else semantic_to_instances(pred.labels)
            rows.append(score(inst, s.labels))
        out[name] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/data", help="folder with train-nuclei/ and val-nuclei/")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--family", default="unet")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from napari_dgseg.core.data.datasets import load_folder
    from napari_dgseg.core.train.source import train

    torch.set_num_threads(2)
    load_before = load_average()
    data = Path(args.data)
    val = {d: load_folder(data / "val-nuclei" / d) for d in SEEN + UNSEEN}
    results: dict[str, dict] = {"classical": {}}
    for name, samples in val.items():
        rows = [score(classical_instances(s.image), s.labels) for s in samples]
        results["classical"][name] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    print(json.dumps({"classical": results["classical"]}), file=sys.stderr, flush=True)
    for variant in args.variants:
        t0 = time.perf_counter()
        bundle = train(args.family, [data / "train-nuclei" / d for d in SEEN], iters=args.iters,
                       size=args.size, batch=4, lr=2e-3, seed=args.seed,
                       config={"widths": [16, 32, 64, 128]}, **VARIANTS[variant])
        seconds = round(time.perf_counter() - t0, 1)
        results[variant] = evaluate(bundle, val) | {"train_seconds": seconds}
        print(json.dumps({variant: results[variant]}), file=sys.stderr, flush=True)
    summary = {
        name: {
            "unseen_dice": round(float(np.mean([r[d]["dice"] for d in UNSEEN])), 4),
            "unseen_aji": round(float(np.mean([r[d]["aji"] for d in UNSEEN])), 4),
            "seen_dice": round(float(np.mean([r[d]["dice"] for d in SEEN])), 4),
        }
        for name, r in results.items()
    }
    report = {"benchmark": "recipe_selection", "family": args.family, "iters": args.iters,
              "crop": args.size, "seen": SEEN, "unseen": UNSEEN, "variants": VARIANTS,
              "results": results, "summary": summary, "machine": machine_state(load_before)}
    emit(report, Path(__file__).parent / "results" / "recipe_selection.json")


if __name__ == "__main__":
    main()
