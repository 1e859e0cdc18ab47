"""A learned nucleus-size ruler: ridge regression on the whole blob scale-space signature.

The shipped ``log-blobs`` estimator reads the nucleus size from where *one* curve peaks (the
99.5th percentile of ``-sigma^2 LoG`` of the grey density over scales). Blur, fading and JPEG
move that peak, and clusters of nuclei can out-shout the nuclei. Cellpose (Stringer et al.,
"Cellpose: a generalist algorithm for cellular segmentation", 2021) learns its size model by
linear regression on features of the image instead of trusting one read-out. This script tries
the same for the image-only estimator: the features are the *shapes* of several percentile curves
of the blob response (``napari_dgseg.core.scale_estimate.blob_signature``), the target is the
log2 of the true median nucleus size, the model is ridge regression.

Everything here uses the **training renderer only**:

* **fit set**: its five H&E domains, tile seeds from 30000 on, each tile resized by a random
  factor (log-uniform 0.35-2.8) and degraded on the new grid by random fading (optical density
  x0.3-1), blur (sigma 0-2.5 px) and JPEG (quality 10-95), each present with probability 0.5-0.6;
* **ridge strength**: 5-fold cross-validation on the fit set;
* **comparison**: the tuning set of ``benchmarks/scale_robustness.py`` (seeds 7000-7002, scales
  0.5-2, degradations ``none`` / ``blur-jpeg`` / ``faded-blur-jpeg`` / ``faded-strong``), with the
  same verdicts (within the model's tolerance of the ideal factor, harmful, helped, fallback) for
  the shipped estimator and the regressor.

The held-out renderer and the real images are not looked at. Stdout is one JSON object::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_regressor.py --n-fit 1500 \\
        --out benchmarks/results/scale_regressor.json
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
from scale_robustness import degraded_tile, hard_tile, tuning_keys, verdict  # noqa: E402

from napari_dgseg.core.ridge import cross_validate, fit_alpha, fit_ridge  # noqa: E402

FIT_SEED = 30000


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def random_tile(i: int, size: int = 256) -> tuple[np.ndarray, float, dict, np.ndarray]:
    """Fit-set tile ``i``: uint8 RGB, its true nucleus size, what was done to it, its labels."""
    from napari_dgseg.core.data.synthetic_nuclei import NUCLEI_DOMAINS
    from napari_dgseg.core.scale import measure_object_size

    rng = np.random.default_rng(FIT_SEED + i)
    domains = list(NUCLEI_DOMAINS)
    domain = domains[i % len(domains)]
    s = float(np.exp(rng.uniform(math.log(0.35), math.log(2.8))))
    fade = float(rng.uniform(0.3, 1.0)) if rng.random() < 0.5 else 1.0
    blur = float(rng.uniform(0.0, 2.5)) if rng.random() < 0.6 else 0.0
    quality = int(rng.integers(10, 96)) if rng.random() < 0.6 else None
    out, lab = degraded_tile(domain, FIT_SEED + i, s, fade, blur, quality, size)
    meta = {"domain": domain, "scale": round(s, 3), "fade": round(fade, 3), "blur": round(blur, 2),
            "jpeg": quality}
    return out, float(measure_object_size(lab, "nuclei")), meta, lab


def features(rgb_u8: np.ndarray) -> np.ndarray:
    from napari_dgseg.core.scale_estimate import blob_signature

    return blob_signature(rgb_u8.astype(np.float32) / 255.0)


def collect(n_fit: int, cache: Path | None) -> dict[str, np.ndarray]:
    """Signatures, shipped estimates and true sizes of the fit and tuning tiles (cached)."""
    from napari_dgseg.core.scale import measure_object_size
    from napari_dgseg.core.scale_estimate import estimate_object_size

    if cache is not None and cache.exists():
        data = dict(np.load(cache))
        if int(data["n_fit"]) == n_fit:
            return data
    t0 = time.perf_counter()
    fx, fy, fs = [], [], []
    for i in range(n_fit):
        img, true, meta, _ = random_tile(i)
        if not math.isfinite(true) or true <= 0:
            continue
        fx.append(features(img))
        fy.append(math.log2(true))
        est = estimate_object_size(img, "nuclei")["object_size_px"]
        fs.append(math.log2(est) if est else np.nan)
        if i % 200 == 0:
            log(f"fit tile {i}: {meta} true {true:.1f} px ({time.perf_counter() - t0:.0f} s)")
    tx, ty, ts = [], [], []
    for degradation, s, domain, seed in tuning_keys():
        img, lab = hard_tile(domain, seed, s, degradation)
        tx.append(features(img))
        ty.append(math.log2(measure_object_size(lab, "nuclei")))
        est = estimate_object_size(img, "nuclei")["object_size_px"]
        ts.append(math.log2(est) if est else np.nan)
    data = {"n_fit": np.asarray(n_fit), "fit_x": np.asarray(fx), "fit_y": np.asarray(fy),
            "fit_shipped": np.asarray(fs), "tune_x": np.asarray(tx), "tune_y": np.asarray(ty),
            "tune_shipped": np.asarray(ts)}
    if cache is not None:
        np.savez(cache, **data)
    return data


def knn_predict(fit_z: np.ndarray, fit_y: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
    """Mean target of the ``k`` nearest fit signatures (Euclidean, standardised)."""
    d = ((z[:, None, :] - fit_z[None, :, :]) ** 2).sum(axis=2)
    idx = np.argsort(d, axis=1)[:, :k]
    return fit_y[idx].mean(axis=1)


def candidates(data: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, dict]]:
    """Each ruler's log2 size on the tuning tiles (NaN: no estimate) and its fit record."""
    x, y, shipped = data["fit_x"], data["fit_y"], data["fit_shipped"]
    tx, tshipped = data["tune_x"], data["tune_shipped"]
    out: dict[str, tuple[np.ndarray, dict]] = {"shipped (log-blobs peak)": (tshipped, {})}
    cv, _ = cross_validate(x, y)
    alpha = min(cv, key=cv.get)
    out["ridge on the signature"] = (fit_alpha(x, y, alpha).predict(tx),
                                     {"alpha": alpha, "cv": cv})
    ok = np.isfinite(shipped)
    resid = y[ok] - shipped[ok]
    cv_r, _ = cross_validate(x[ok], resid)
    alpha_r = min(cv_r, key=cv_r.get)
    corr = fit_alpha(x[ok], resid, alpha_r).predict(tx)
    out["shipped + ridge correction"] = (tshipped + corr, {"alpha": alpha_r, "cv": cv_r})
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    for k in (5, 15, 40):
        out[f"{k}-nearest signatures"] = (knn_predict((x - mu) / sd, y, (tx - mu) / sd, k), {"k": k})
    return out


def write_ruler(data: dict[str, np.ndarray], path: Path, n_fit: int) -> None:
    """Fit the ridge ruler on every fit tile (strength by cross-validation) and store it."""
    import json

    from napari_dgseg.core.scale_estimate import SIGNATURE_PERCENTILES

    x, y = data["fit_x"], data["fit_y"]
    ruler, cv = fit_ridge(x, y)
    path.write_text(json.dumps({
        "what": "ridge regression: log2 nucleus size (measure_object_size) from blob_signature",
        "fit": f"python benchmarks/scale_regressor.py --n-fit {n_fit} --ruler {path}",
        "fit_tiles": int(len(y)), "percentiles": list(SIGNATURE_PERCENTILES), **ruler.to_dict(),
    }, indent=1) + "\n")
    alpha = ruler.alpha
    log(f"ruler written to {path} (alpha {alpha})")


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--n-fit", type=int, default=1500)
    ap.add_argument("--cache", help="npz file for the signatures (reused when it exists)")
    ap.add_argument("--out")
    ap.add_argument("--ruler", help="write the ridge ruler fitted on every fit tile (JSON) here: "
                    "the file napari_dgseg/core/scale_ruler.json ships")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    model = load_bundle(args.model).scale
    data = collect(args.n_fit, Path(args.cache) if args.cache else None)
    if args.ruler:
        write_ruler(data, Path(args.ruler), args.n_fit)
    keys = tuning_keys()
    cells: dict[str, dict] = {}
    fits: dict[str, dict] = {}
    for name, (pred, fit) in candidates(data).items():
        fits[name] = {k: v for k, v in fit.items()}
        per: dict[str, dict] = {}
        for (degradation, s, _, _), p, ty in zip(keys, pred, data["tune_y"], strict=True):
            true = float(2.0 ** ty)
            est = float(2.0 ** p) if math.isfinite(p) else None
            v = verdict(est, true, model)
            for key in (f"{degradation} x{s:g}", "all"):
                c = per.setdefault(key, {"n": 0, "within": 0, "harmful": 0, "helped": 0,
                                         "fallback": 0, "err": []})
                c["n"] += 1
                for k, hit in v.items():
                    c[k] += int(hit)
                if est is not None:
                    c["err"].append(abs(est / true - 1.0))
        for c in per.values():
            errs = c.pop("err")
            c["median_abs_error"] = round(float(np.median(errs)), 3) if errs else None
        cells[name] = per
    lines = ["| estimator | within tolerance | harmful | helped | fallback | median abs. error |",
             "|---|---|---|---|---|---|"]
    for name, per in cells.items():
        c = per["all"]
        lines.append(f"| {name} | {c['within']}/{c['n']} | {c['harmful']} | {c['helped']} | "
                     f"{c['fallback']} | {c['median_abs_error']} |")
    result = {
        "benchmark": "scale_regressor", "date": time.strftime("%Y-%m-%d"), "model": args.model,
        "fit_tiles": int(len(data["fit_y"])), "fits": fits, "cells": cells,
        "markdown": "\n".join(lines),
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load_before),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
