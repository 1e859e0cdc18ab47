"""Model in the loop: correct the blob-peak nucleus size for the image's blur?

The blob peak of a nucleus blurred by a Gaussian of sigma ``s_e`` sits near
``sqrt(s_n^2 + s_e^2)`` (Gaussian scales add in quadrature), so blur makes nuclei look larger to
the estimator: on randomly degraded training-renderer tiles (``benchmarks/scale_regressor.py``'s
fit set) its median error grows from +0.00 octave without blur to +0.23 octave under blur of
1.8-2.5 px. Candidate correction: measure the edge blur ``s_e`` of each crop
(:func:`napari_dgseg.core.scale_estimate.edge_blur`, Lindeberg's edge scale selection) and read
the size from ``sqrt(max(s_p^2 - k s_e^2, 0.25))``, the calibration refitted for each ``k`` on the
calibration tiles (``clean``, seeds 1000-1007, like ``benchmarks/scale.py --calibrate``).

Training renderer only: the random set (``--n-random`` tiles of the fit set, ruler predictions
by 5-fold cross-validation) and the 300-tile tuning set of ``scale_robustness.py``. The learned
ruler's veto (``RULER_AGREEMENT``) applies to every variant, as shipped. For each ``k`` the factor
``nuclei-hovernet`` would apply is computed for every tile; where it differs from ``k = 0`` (the
shipped estimator) the tile is segmented with the variant's estimate through the whole default
pipeline (tolerance, size check) and scored. Rule fixed before the run: the ``k`` with the
highest mean AJI over both sets whose mean Dice is not lower than ``k = 0``'s by more than 0.002
on either set; ties to the smaller ``k``. Stdout is one JSON object::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_blur.py --cache SIG.npz \\
        --out benchmarks/results/scale_blur.json
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
from _scale_variants import score_moved, summarize_variants  # noqa: E402
from scale_agreement import ruler_predictions  # noqa: E402
from scale_regressor import collect, random_tile  # noqa: E402
from scale_robustness import hard_tile, tuning_keys  # noqa: E402

KS = (0.0, 0.25, 0.5, 0.75, 1.0)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def reading(img: np.ndarray) -> tuple[float, float, float]:
    """(raw peak sigma, dominance, edge blur) of one uint8 tile."""
    from napari_dgseg.core.scale_estimate import _blob_peak, _grey_density, edge_blur

    rgb = img.astype(np.float32) / 255.0
    raw, dom = _blob_peak(_grey_density(rgb))
    return raw, dom, edge_blur(rgb)


def corrected(raw: float, blur: float, k: float) -> float:
    if not math.isfinite(raw):
        return float("nan")
    b = blur if math.isfinite(blur) else 0.0
    return math.sqrt(max(raw * raw - k * b * b, 0.25))


def calibrations() -> dict[float, float]:
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.scale import measure_object_size

    target = measure_object_size([make_nuclei(256, "clean", seed=s)[1] for s in range(8)], "nuclei")
    reads = [reading(make_nuclei(256, "clean", seed=s)[0]) for s in range(1000, 1008)]
    return {k: target / float(np.median([corrected(r, b, k) for r, _, b in reads])) for k in KS}


def estimate_of(raw: float, dom: float, blur: float, ruler_px: float, k: float, cal: float) -> float | None:
    """The size the estimator would return for one single-crop tile (None: no estimate)."""
    from napari_dgseg.core.scale_estimate import BLOB_DOMINANCE, PEAK_CALIBRATION, _agrees

    if not math.isfinite(raw) or not dom >= BLOB_DOMINANCE:
        return None
    if not _agrees(PEAK_CALIBRATION * raw, ruler_px):  # the shipped veto, on the peak
        return None
    return cal * corrected(raw, blur, k)


def summarize(tiles: list[dict]) -> tuple[dict, str, str]:
    """Per set and ``k``: tiles whose factor moved, mean Dice / AJI change; the chosen ``k``."""
    return summarize_variants(tiles, [f"{k:g}" for k in KS], "0", "blur correction k",
                              lambda k: -float(k))


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.scale import resolve_scale

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--n-fit", type=int, default=2000, help="fit-set size of the cache")
    ap.add_argument("--n-random", type=int, default=800, help="random tiles used here")
    ap.add_argument("--cache")
    ap.add_argument("--out")
    ap.add_argument("--summarize", metavar="JSON", help="only recompute the summary of a result")
    args = ap.parse_args(argv)
    if args.summarize:
        import json

        result = json.loads(Path(args.summarize).read_text())
        result["summary"], result["chosen"], result["markdown"] = summarize(result["tiles"])
        emit(result, args.out)
        return result
    load_before = load_average()
    t0 = time.perf_counter()
    bundle = load_bundle(args.model)
    data = collect(args.n_fit, Path(args.cache) if args.cache else None)
    cv, tune_ruler = ruler_predictions(data)
    cals = calibrations()
    log("calibrations", cals)
    keys = tuning_keys()
    tiles: list[dict] = []
    for i in range(args.n_random):
        img, true, meta, lab = random_tile(i)
        tiles.append({"set": "random", "index": i, "meta": meta, "true_px": true,
                      "ruler_px": float(2.0 ** cv[i]), "reading": reading(img)})
    for i, (degradation, s, domain, seed) in enumerate(keys):
        img, lab = hard_tile(domain, seed, s, degradation)
        tiles.append({"set": "tuning", "index": i, "true_px": float(2.0 ** data["tune_y"][i]),
                      "meta": {"degradation": degradation, "scale": s, "domain": domain, "seed": seed},
                      "ruler_px": float(2.0 ** tune_ruler[i]), "reading": reading(img)})
    log(f"readings done ({time.perf_counter() - t0:.0f} s)")

    def factor(size: float | None) -> float:
        return resolve_scale(bundle.scale, estimate=lambda: {"object_size_px": size}).factor

    for t in tiles:
        raw, dom, blur = t["reading"]
        t["estimates"] = {f"{k:g}": estimate_of(raw, dom, blur, t["ruler_px"], k, cals[k]) for k in KS}
        t["factors"] = {k: round(factor(v), 4) for k, v in t["estimates"].items()}
        t["edge_blur"] = None if not math.isfinite(blur) else round(blur, 3)
        del t["reading"]
    for t in tiles:
        base = t["factors"]["0"]
        changed = {k for k, f in t["factors"].items() if f != base}
        if not changed:
            continue
        t["scores"] = score_moved(bundle, t, "0", sorted(changed))
        log(t["set"], t["index"], round(t["true_px"], 1), t["estimates"], t["scores"],
            f"({time.perf_counter() - t0:.0f} s)")
    summary, chosen, markdown = summarize(tiles)
    result = {"benchmark": "scale_blur", "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "calibrations": {f"{k:g}": round(v, 4) for k, v in cals.items()}, "chosen": chosen,
              "summary": summary, "tiles": tiles, "markdown": markdown,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load_before)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
