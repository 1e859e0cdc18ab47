"""Model in the loop: does a second, learned ruler that must agree make the scale estimate safer?

``benchmarks/scale_regressor.py`` fits a ridge regression from the blob scale-space signature to
the nucleus size and finds (training renderer only) that the shipped peak estimator still makes
*harmful* estimates on randomly degraded tiles (small nuclei under strong blur read as 25-80 px),
while the ridge ruler alone is worse on the tuning set. This script measures the rule "apply the
peak estimate only when the ridge ruler agrees within a tolerance, else do not resample" with
``nuclei-hovernet`` in the loop (its default scale pipeline: estimate, tolerance, size check) on
the two training-renderer sets of ``scale_regressor.py`` (the random fit set, ridge predictions
by 5-fold cross-validation, and the 300-tile tuning set). Only the tiles where a rule turns an
*applied* estimate into no estimate can change; each is segmented both ways and scored.

Rule fixed before the run: the tolerance (none, 1.4, 1.6) with the highest mean AJI over both
sets, provided mean Dice falls by no more than 0.002 on either set; ties to no rule. Stdout is one
JSON object::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_agreement.py --cache SIG.npz \\
        --out benchmarks/results/scale_agreement.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from _scale_variants import segment  # noqa: E402
from scale_regressor import collect, random_tile  # noqa: E402
from scale_robustness import hard_tile, tuning_keys  # noqa: E402

from napari_dgseg.core.ridge import fit_alpha  # noqa: E402

TOLERANCES = (1.4, 1.6)
ALPHA = 10.0


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def ruler_predictions(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ridge log2 sizes: cross-validated on the fit set, fitted on all of it for the tuning set."""
    x, y = data["fit_x"], data["fit_y"]
    idx = np.arange(len(y))
    cv = np.zeros(len(y))
    for k in range(5):
        test = idx % 5 == k
        cv[test] = fit_alpha(x[~test], y[~test], ALPHA).predict(x[test])
    return cv, fit_alpha(x, y, ALPHA).predict(data["tune_x"])


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.scale import estimate_tolerance

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--n-fit", type=int, default=2000)
    ap.add_argument("--cache", help="npz of scale_regressor.py (made when missing)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    bundle = load_bundle(args.model)
    size = bundle.scale["object_size_px"]
    lo, hi = estimate_tolerance(bundle.scale)
    data = collect(args.n_fit, Path(args.cache) if args.cache else None)
    cv, tune_pred = ruler_predictions(data)
    keys = tuning_keys()
    sets = {"random": (data["fit_shipped"], cv, len(data["fit_y"])),
            "tuning": (data["tune_shipped"], tune_pred, len(keys))}
    rows: list[dict] = []
    for name, (shipped, ruler, n) in sets.items():
        for i in range(n):
            s = shipped[i]
            if not math.isfinite(s):
                continue
            f = size / 2.0 ** s
            if lo <= f <= hi:
                continue  # not applied: a rule that drops it changes nothing
            gap = abs(s - ruler[i])
            if gap <= math.log2(min(TOLERANCES)):
                continue  # every rule keeps it
            if name == "random":
                img, _, meta, lab = random_tile(i)
            else:
                degradation, sc, domain, seed = keys[i]
                img, lab = hard_tile(domain, seed, sc, degradation)
                meta = {"degradation": degradation, "scale": sc, "domain": domain, "seed": seed}
            row = {"set": name, "index": i, "meta": meta, "log2_gap": round(float(gap), 3),
                   "true_px": round(2.0 ** float(data["fit_y" if name == "random" else "tune_y"][i]), 2),
                   "peak_px": round(2.0 ** float(s), 2), "ruler_px": round(2.0 ** float(ruler[i]), 2),
                   "with_estimate": segment(bundle, img, lab),
                   "without": segment(bundle, img, lab, None)}
            rows.append(row)
            log(name, i, row["true_px"], row["peak_px"], row["ruler_px"], row["with_estimate"],
                row["without"], f"({time.perf_counter() - t0:.0f} s)")
    summary: dict[str, dict] = {}
    for name, (_, _, n) in sets.items():
        for tol in (None, *TOLERANCES):
            dd = da = 0.0
            dropped = 0
            for r in rows:
                if r["set"] != name or tol is None or r["log2_gap"] <= math.log2(tol):
                    continue
                dropped += 1
                dd += r["without"]["dice"] - r["with_estimate"]["dice"]
                da += r["without"]["aji"] - r["with_estimate"]["aji"]
            summary.setdefault(name, {})["none" if tol is None else f"{tol:g}"] = {
                "tiles": n, "estimates_dropped": dropped,
                "mean_dice_change": round(dd / n, 5), "mean_aji_change": round(da / n, 5)}
    both = {t: summary["random"][t]["mean_aji_change"] * sets["random"][2]
            + summary["tuning"][t]["mean_aji_change"] * sets["tuning"][2] for t in summary["random"]}
    eligible = [t for t in both if all(summary[s][t]["mean_dice_change"] >= -0.002 for s in summary)]
    chosen = max(eligible, key=lambda t: (round(both[t], 6), t == "none"))
    lines = ["| rule | set | estimates dropped | mean Dice change | mean AJI change |",
             "|---|---|---|---|---|"]
    for name, per in summary.items():
        for t, c in per.items():
            label = "peak estimate alone (shipped)" if t == "none" else f"ruler must agree within {t}x"
            lines.append(f"| {label} | {name} ({c['tiles']} tiles) | {c['estimates_dropped']} | "
                         f"{c['mean_dice_change']:+.4f} | {c['mean_aji_change']:+.4f} |")
    result = {"benchmark": "scale_agreement", "date": time.strftime("%Y-%m-%d"),
              "model": args.model, "rows": rows, "summary": summary, "chosen": chosen,
              "markdown": "\n".join(lines), "seconds": round(time.perf_counter() - t0, 1),
              "machine": machine_state(load_before)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
