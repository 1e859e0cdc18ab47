"""Where a nuclei model's AJI goes on one style: missed, merged, split and spurious nuclei (diagnosis).

For tiles of one ``--style`` (either renderer) made as ``benchmarks/generalization.py`` makes them
(tile seeds ``item_seed(90000 + s, i)``; the default ``--seeds 100 101`` are the *selection*
tiles, not the evaluation seeds 0-2), each ``--model`` (and the classical baseline) is run through
its default pipeline and every ground-truth nucleus is put in one class:

* **found**: a predicted object covers at least half of it and covers no other nucleus by half;
* **merged**: the predicted object covering most of it also covers at least half of another one;
* **missed**: predicted objects cover less than half of it;

plus, per tile, **split** nuclei (two or more predicted objects each cover more than a fifth of
it) and **spurious** predicted objects (less than a fifth of their pixels on any nucleus). With
``--factors``, the model is also run at each forced resampling factor (what a correct size
estimate would buy, and which errors move with scale). Nothing is chosen on these numbers.

Stdout is one JSON object; ``--out`` writes it too::

    OMP_NUM_THREADS=1 python benchmarks/instance_errors.py --style ho-faded-jpeg \\
        --factors 0.6 0.7 0.8 0.9 1.0 --out benchmarks/results/instance_errors_faded.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from generalization import CLASSICAL, SEED_BASE, predict  # noqa: E402

#: Share of a nucleus a predicted object must cover to count as finding it (or as merging it).
COVER = 0.5
#: Share of a nucleus (or of a predicted object) below which an overlap does not count.
TOUCH = 0.2


def error_counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Counts of found, merged, missed and split nuclei and of spurious predicted objects."""
    found = merged = missed = split = 0
    for g in np.unique(gt[gt > 0]):
        inside = gt == g
        area = int(inside.sum())
        ids, counts = np.unique(pred[inside & (pred > 0)], return_counts=True)
        if counts.sum() < COVER * area:
            missed += 1
            continue
        split += int((counts > TOUCH * area).sum() > 1)
        obj = pred == ids[np.argmax(counts)]
        others, cover = np.unique(gt[obj & (gt > 0) & ~inside], return_counts=True)
        areas = np.array([(gt == o).sum() for o in others])
        if (cover >= COVER * areas).any():
            merged += 1
        else:
            found += 1
    spurious = sum(int((gt[pred == p] > 0).mean() < TOUCH) for p in np.unique(pred[pred > 0]))
    return {"nuclei": int(len(np.unique(gt[gt > 0]))), "predicted": int(len(np.unique(pred[pred > 0]))),
            "found": found, "merged": merged, "missed": missed, "split": split,
            "spurious": spurious}


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import item_seed, make_sample
    from napari_dgseg.core.metrics import instance_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="ho-faded-jpeg")
    ap.add_argument("--renderer", default="heldout", choices=["heldout", "training"])
    ap.add_argument("--models", nargs="+", default=["nuclei-hovernet"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[100, 101],
                    help="tile seeds (default 100 101: selection tiles)")
    ap.add_argument("--n", type=int, default=2, help="tiles per seed")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--factors", nargs="*", type=float, default=[],
                    help="also run each model at these forced resampling factors")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    bundles = {m: load_bundle(m) for m in args.models}
    tiles = []
    for s in args.seeds:
        for i in range(args.n):
            seed = item_seed(SEED_BASE + s, i)
            smp = make_sample("nuclei", args.size, args.style, seed, renderer=args.renderer)
            row: dict[str, Any] = {"tile_seed": s, "index": i, "runs": {}}
            for m in [*args.models, CLASSICAL]:
                bundle = bundles.get(m)
                if bundle is None:
                    pred = predict(m, None, smp.image, "nuclei", "auto")
                    row["runs"][m] = {**error_counts(pred, smp.labels),
                                      "aji": round(instance_scores(pred, smp.labels)["aji"], 4)}
                    continue
                out = bundle.predict(smp.image, dcin="auto", device="cpu")
                scale = (out.provenance or {}).get("scale", {})
                pred = np.asarray(out.labels)
                row["runs"][m] = {**error_counts(pred, smp.labels), "factor": scale.get("factor"),
                                  "aji": round(instance_scores(pred, smp.labels)["aji"], 4)}
                for f in args.factors:
                    pred = np.asarray(bundle.predict(smp.image, dcin="auto", device="cpu",
                                                     scale=f).labels)
                    row["runs"][f"{m}@x{f:g}"] = {
                        **error_counts(pred, smp.labels),
                        "aji": round(instance_scores(pred, smp.labels)["aji"], 4)}
            print(s, i, {k: (v["aji"], v["found"], v["merged"], v["missed"])
                         for k, v in row["runs"].items()}, file=sys.stderr, flush=True)
            tiles.append(row)
    totals: dict[str, dict[str, int]] = {}
    for row in tiles:
        for k, v in row["runs"].items():
            acc = totals.setdefault(k, {})
            for key in ("nuclei", "found", "merged", "missed", "split", "spurious"):
                acc[key] = acc.get(key, 0) + v[key]
    result = {
        "benchmark": "instance_errors", "style": args.style, "renderer": args.renderer,
        "models": args.models, "tile_seeds": args.seeds, "n": args.n, "size": args.size,
        "factors": args.factors, "rules": {"cover": COVER, "touch": TOUCH},
        "totals": totals, "tiles": tiles,
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load_before),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
