"""Choose the guard's in-domain threshold: colours a model was trained on need no normalization.

    OMP_NUM_THREADS=1 python benchmarks/dcin_in_domain.py --model vessels-ram-sgcg \\
        --seeds 100 101 --n 3 --out benchmarks/results/dcin_in_domain.json

For every style of the task (training renderer and held-out renderer), on *selection tiles*
(tile seeds ``item_seed(90000 + s, i)`` for the given seeds; docs/generalization.md reports
seeds 0-2, so keep these disjoint), each tile is predicted with DCIN ``none`` and with ``auto``
as it was before this rule (the guarded ``full``), and the distance from its colours to the
nearest image of the model's reference bank is measured
(:func:`napari_dgseg.core.color.guard.nearest_training_colours`). The sweep then scores the rule
"``none`` when that distance is below T, else the guarded ``full``" for each T.

Choice, fixed before the run: the T with the highest mean over styles of the per-style mean
Dice; among Ts within 0.001 of it, the largest (falling back is cheaper and changes nothing
the model was trained on). Printed as JSON (``chosen``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from generalization import SEED_BASE, score, synthetic_columns  # noqa: E402

THRESHOLDS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vessels-ram-sgcg")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--n", type=int, default=3, help="tiles per style and seed")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--auto", choices=["full"], default=None,
                    help="treat the model as if its manifest recorded dcin.auto = full (in "
                         "memory only): measure the guarded full of a model whose auto is none")
    args = ap.parse_args(argv)

    from napari_dgseg import load_bundle
    from napari_dgseg.core.color.dcin import target_sample
    from napari_dgseg.core.color.guard import IN_DOMAIN_KEY, nearest_training_colours
    from napari_dgseg.core.data.synthetic import item_seed, make_sample
    from napari_dgseg.core.imageprep import ImageAdapter

    t_start, load0 = time.perf_counter(), load_average()
    bundle = load_bundle(args.model)
    # "auto" as before the in-domain rule (a recorded threshold is dropped in memory only)
    (bundle.manifest.get("dcin") or {}).pop(IN_DOMAIN_KEY, None)
    if args.auto:
        bundle.manifest.setdefault("dcin", {})["auto"] = args.auto
    kind = str(bundle.manifest.get("task", "nuclei"))
    rows = []
    for renderer, style in synthetic_columns(kind):
        for s in args.seeds:
            for i in range(args.n):
                smp = make_sample(kind, args.size, style, item_seed(SEED_BASE + s, i),
                                  renderer=renderer)
                sample = target_sample(ImageAdapter.from_array(smp.image))
                near = nearest_training_colours(bundle, sample)
                row = {"style": style, "renderer": renderer, "seed": s, "tile": i,
                       "nearest_shift": None if near is None else round(near[0], 4),
                       "nearest_image": None if near is None else near[1]}
                for mode in ("none", "full"):
                    # "full" as auto ran it before the in-domain rule: guarded, same signals
                    pred = bundle.predict(smp.image, dcin="auto" if mode == "full" else "none",
                                          device="cpu")
                    mask = (np.asarray(pred.labels) > 0).astype(np.uint8)
                    row[mode] = {k: round(v, 4) for k, v in
                                 score(kind, mask, smp.labels, smp.mask, real=False).items()}
                    if mode == "full":
                        row["guard"] = ((pred.provenance.get("dcin") or {}).get("guard")
                                        or {}).get("action")
                rows.append(row)
                print(f"{style} s={s} i={i} shift={row['nearest_shift']} none="
                      f"{row['none']['dice']:.3f} auto={row['full']['dice']:.3f} "
                      f"guard={row['guard']}", file=sys.stderr)
    styles = sorted({r["style"] for r in rows}, key=[c[1] for c in synthetic_columns(kind)].index)
    sweep = []
    for t in THRESHOLDS:
        per_style = {}
        for st in styles:
            mine = [r for r in rows if r["style"] == st]
            chosen = [r["none" if (r["nearest_shift"] is not None and r["nearest_shift"] < t)
                        else "full"]["dice"] for r in mine]
            per_style[st] = {"dice": round(float(np.mean(chosen)), 4),
                             "minus_none": round(float(np.mean(chosen)
                                                       - np.mean([r["none"]["dice"] for r in mine])), 4),
                             "fell_back": sum(r["nearest_shift"] is not None
                                              and r["nearest_shift"] < t for r in mine)}
        sweep.append({"threshold": t,
                      "mean_dice": round(float(np.mean([v["dice"] for v in per_style.values()])), 4),
                      "worst_minus_none": min(v["minus_none"] for v in per_style.values()),
                      "per_style": per_style})
    best = max(x["mean_dice"] for x in sweep)
    chosen = max(x["threshold"] for x in sweep if x["mean_dice"] >= best - 0.001)
    result = {"benchmark": "dcin_in_domain", "model": args.model, "auto": args.auto,
              "seeds": args.seeds,
              "n": args.n, "size": args.size,
              "tile_seeds": f"item_seed({SEED_BASE} + seed, i) for i < n",
              "rule": "none when the nearest bank image is closer than T, else guarded full",
              "chosen": chosen, "sweep": sweep, "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 1),
              "machine": machine_state(load0)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
