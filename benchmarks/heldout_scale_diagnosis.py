"""Per tile of a held-out style: the estimated scale and what it does to a model (diagnosis only).

For the evaluation tiles of ``benchmarks/generalization.py`` (tile seeds ``item_seed(90000 + s,
i)``, ``--seeds`` and ``--n`` as there, 256 px) of one held-out ``--style``: the true nucleus size
(``measure_object_size`` of the labels), the size the estimator before the grey-density change
gave (haematoxylin signal, no confidence rule, its calibration; ``benchmarks/scale_robustness.py``
re-implements it) and the size the shipped estimator gives, the factor inference applies for
``--model`` with each, and Dice / AJI with each and without resampling. Nothing is chosen on these
numbers: they confirm (or not) a diagnosis; the estimator is chosen on the training renderer
(``benchmarks/scale_robustness.py``).

Stdout is one JSON object; ``--out`` writes it too::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/heldout_scale_diagnosis.py \\
        --style ho-faded-jpeg --out benchmarks/results/heldout_scale_diagnosis.json
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
from generalization import SEED_BASE  # noqa: E402
from scale_robustness import calibration, curve_peak  # noqa: E402


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import item_seed, make_sample
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.scale import measure_object_size, resolve_scale
    from napari_dgseg.core.scale_estimate import estimate_object_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--style", default="ho-faded-jpeg", help="held-out nuclei style")
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    bundle = load_bundle(args.model)
    old_cal = calibration("haematoxylin")
    tiles = []
    for s in args.seeds:
        for i in range(args.n):
            smp = make_sample("nuclei", 256, args.style, item_seed(SEED_BASE + s, i),
                              renderer="heldout")
            raw, _ = curve_peak(smp.image.astype(np.float32) / 255.0, "haematoxylin")
            old = None if not np.isfinite(raw) else old_cal * raw
            new = estimate_object_size(smp.image, "nuclei")
            row: dict[str, Any] = {"seed": s, "tile": i,
                                   "true_px": round(measure_object_size(smp.labels, "nuclei"), 2),
                                   "old_px": None if old is None else round(old, 2),
                                   "new_px": new["object_size_px"],
                                   "new_dominance": new.get("dominance"),
                                   "new_ruler_px": new.get("ruler_px"),
                                   "new_edge_blur_px": new.get("edge_blur_px")}
            for name, size in (("old", old), ("new", new["object_size_px"])):
                decision = resolve_scale(bundle.scale, estimate=lambda z=size: {"object_size_px": z})
                row[f"{name}_factor"] = round(decision.factor, 3)
                pred = bundle.predict(smp.image, device="cpu", scale=decision.factor)
                sc = instance_scores(np.asarray(pred.labels), smp.labels)
                row[f"{name}_dice"], row[f"{name}_aji"] = round(sc["dice"], 4), round(sc["aji"], 4)
            pred = bundle.predict(smp.image, device="cpu", rescale="off")
            sc = instance_scores(np.asarray(pred.labels), smp.labels)
            row["off_dice"], row["off_aji"] = round(sc["dice"], 4), round(sc["aji"], 4)
            tiles.append(row)
            log(row)
    result = {"benchmark": "heldout_scale_diagnosis", "date": time.strftime("%Y-%m-%d"),
              "style": args.style, "model": args.model, "model_scale": bundle.scale,
              "old_calibration": round(old_cal, 4), "tiles": tiles,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load_before)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
