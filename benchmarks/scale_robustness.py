"""The nucleus-size estimator on blurred, JPEG-compressed, faded tiles of known scale.

Chooses the ``log-blobs`` estimator's signal and its confidence rule
(:data:`napari_dgseg.core.scale_estimate.BLOB_DOMINANCE`) **on the training renderer only**: tiles
of its five H&E domains (``make_nuclei``, seeds 7000-7002, far from the training, calibration and
benchmark seeds) are resized by 0.5, 0.71, 1, 1.41 and 2 (anti-aliased, as inference resizes;
labels by nearest neighbour) and then degraded on the new pixel grid:

* ``none``: as rendered;
* ``blur-jpeg``: Gaussian blur sigma 1.5 px, JPEG quality 25;
* ``faded-blur-jpeg``: optical density x 0.45 (a faded stain), blur 1.5 px, JPEG 20;
* ``faded-strong``: optical density x 0.35, blur 2 px, JPEG 15.

The true object size of each tile is ``measure_object_size`` of its labels. Per variant and tile
the factor inference would apply for ``--model`` (default ``nuclei-hovernet``: its object size and
the estimate tolerance of its ``train_range``) is compared with the ideal factor ``model size /
true size``: *within* (the applied factor is within the model's object-size augmentation of the
ideal one), *harmful* (a factor was applied and it is farther from the ideal than not resampling),
*helped* (a factor was applied and it is nearer), *fallback* (no estimate, factor 1).

Variants: the signal (``haematoxylin``: colour deconvolution, the estimator before this benchmark;
``grey``: optical density of the grey level; ``grey-deblocked``: the same with the JPEG 8x8 block
edges smoothed) times the dominance threshold (``none``: no
confidence rule). Each signal is calibrated like :data:`~napari_dgseg.core.scale_estimate.
CALIBRATION` (``benchmarks/scale.py --calibrate``: seeds 1000-1007, ``clean``, 256 px).

``--part clamp`` measures, with the model in the loop, a rule that was considered and rejected:
*clamping* an estimated factor to the model's object-size augmentation (resample only as far as
brings the estimated objects to the edge of ``train_range``, e.g. 0.44 -> 0.62 for a 0.7-1.4x
model), which would bound the damage of a wrong estimate. On every tile (seed 7000, the five
domains, degradations ``none``, ``blur-jpeg``, ``faded-strong``, scales 0.5, 0.71, 1.41, 2) whose
estimate is applied, Dice and AJI of ``--model`` with the full factor, the clamped one, the true
one and none.

Also, as a no-regression check without ground truth, the object size each variant gives on the
real H&E tiles in ``../shared/data/real-he`` (plausible: 8-30 px for nuclei of ~40x scans).

Stdout is one JSON object; progress on stderr::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_robustness.py \\
        --out benchmarks/results/scale_robustness.json
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_robustness.py --part clamp \\
        --out benchmarks/results/scale_robustness_clamp.json
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

SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)
#: name -> (optical-density factor, blur sigma, JPEG quality or None), applied after resizing.
DEGRADATIONS = {
    "none": (1.0, 0.0, None),
    "blur-jpeg": (1.0, 1.5, 25),
    "faded-blur-jpeg": (0.45, 1.5, 20),
    "faded-strong": (0.35, 2.0, 15),
}
SEEDS = (7000, 7001, 7002)
SIGNALS = ("haematoxylin", "grey", "grey-deblocked")
THRESHOLDS = (None, 1.01, 1.02, 1.03, 1.05, 1.08, 1.1, 1.15)
CHOSEN = ("grey", 1.05)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def hard_tile(domain: str, seed: int, s: float, degradation: str,
              size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A training-renderer tile resized by ``s`` and degraded on the new grid (uint8, labels)."""
    fade, blur, quality = DEGRADATIONS[degradation]
    return degraded_tile(domain, seed, s, fade, blur, quality, size)


def degraded_tile(domain: str, seed: int, s: float, fade: float, blur: float, quality: int | None,
                  size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``make_nuclei(domain, seed)`` resized by ``s``, then faded (optical density x ``fade``),
    blurred (Gaussian sigma ``blur``) and JPEG-compressed (``quality``, None: not) on the new
    grid; the ``size`` px corner as uint8 RGB and its labels (nearest neighbour)."""
    from scipy import ndimage as ndi

    from napari_dgseg.core.data._synth_common import jpeg_roundtrip
    from napari_dgseg.core.data.synthetic_nuclei import get_nuclei_domain, make_nuclei
    from napari_dgseg.core.resample import _nearest, resampled_shape, zoom_image

    src = int(math.ceil(size / s))
    image, labels = make_nuclei(src, domain, seed)
    img = np.clip(zoom_image(image, s), 0.0, 255.0)
    lab = _nearest(labels, resampled_shape(src, src, s))
    if fade != 1.0:  # Beer-Lambert: scale every channel's optical density against the glass
        white = np.asarray(get_nuclei_domain(domain).white, np.float32)
        img = white * np.clip(img / white, 1e-3, 1.0) ** fade
    if blur > 0:
        img = ndi.gaussian_filter(img, (blur, blur, 0))
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if quality is not None:
        out = jpeg_roundtrip(out, quality)
    return out[:size, :size], lab[:size, :size]


def tuning_keys(domains: list[str] | None = None,
                seeds: tuple[int, ...] | list[int] | None = None) -> list[tuple[str, float, str, int]]:
    """Every tile of the tuning set as ``(degradation, scale, domain, seed)`` for :func:`hard_tile`."""
    from napari_dgseg.core.data.synthetic_nuclei import NUCLEI_DOMAINS

    domains = list(NUCLEI_DOMAINS) if domains is None else domains
    seeds = SEEDS if seeds is None else seeds
    return [(d, s, dom, seed) for d in DEGRADATIONS for s in SCALES for dom in domains
            for seed in seeds]


def deblock(signal: np.ndarray, block: int = 8) -> np.ndarray:
    """JPEG deblocking: the two pixels on each side of every 8-px block edge (rows, then
    columns) replaced by the mean of the four, so the block grid gives no edges; the rest of the
    image is untouched. The grid starts at pixel 0 (the tiles here are whole JPEG images)."""
    out = signal.astype(np.float32).copy()
    for axis in (0, 1):
        n = out.shape[axis]
        for edge in range(block, n - 1, block):
            idx = [edge - 2, edge - 1, edge, edge + 1] if edge + 1 < n else None
            if idx is None or idx[0] < 0:
                continue
            mean = np.take(out, idx, axis=axis).mean(axis=axis, keepdims=True)
            for i in (edge - 1, edge):
                sl = [slice(None), slice(None)]
                sl[axis] = slice(i, i + 1)
                out[tuple(sl)] = mean
    return out


def signal_of(rgb: np.ndarray, which: str) -> np.ndarray:
    """The estimator's input: haematoxylin optical density (the old one), grey density (the
    shipped one) or grey density with the JPEG block edges smoothed (:func:`deblock`)."""
    from skimage.color import rgb2hed

    from napari_dgseg.core.scale_estimate import _grey_density

    if which == "grey":
        return _grey_density(rgb)
    if which == "grey-deblocked":
        return deblock(_grey_density(rgb))
    return rgb2hed(np.clip(rgb, 0.0, 1.0))[..., 0].astype(np.float32)


def curve_peak(rgb: np.ndarray, which: str) -> tuple[float, float]:
    """``(raw size, dominance)`` of one float RGB crop for a signal."""
    from napari_dgseg.core.scale_estimate import _blob_peak

    return _blob_peak(signal_of(rgb, which))


def combine(peaks: list[tuple[float, float]], threshold: float | None, cal: float) -> float | None:
    """Object size from the crops' peaks (median over confident crops), None without one."""
    keep = [r for r, d in peaks if math.isfinite(r) and (threshold is None or d >= threshold)]
    return cal * float(np.median(keep)) if keep else None


def calibration(which: str) -> float:
    """The signal's constant, fitted like ``benchmarks/scale.py --calibrate``."""
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.scale import measure_object_size

    target = measure_object_size([make_nuclei(256, "clean", seed=s)[1] for s in range(8)], "nuclei")
    raw = [curve_peak(make_nuclei(256, "clean", seed=s)[0] / 255.0, which)[0]
           for s in range(1000, 1008)]
    return target / float(np.median(raw))


def verdict(est: float | None, true: float, model: dict) -> dict[str, bool]:
    """How the factor inference would apply for ``est`` compares with the ideal one."""
    from napari_dgseg.core.scale import estimate_tolerance

    lo, hi = estimate_tolerance(model)
    ideal = model["object_size_px"] / true
    f = 1.0 if est is None else model["object_size_px"] / est
    if lo <= f <= hi:
        f = 1.0
    applied = f != 1.0
    off, stay = abs(math.log(f / ideal)), abs(math.log(ideal))
    return {"within": lo <= f / ideal <= hi, "harmful": applied and off > stay,
            "helped": applied and off < stay, "fallback": est is None}


def synthetic(model: dict, cals: dict[str, float], quick: bool) -> dict:
    from napari_dgseg.core.data.synthetic_nuclei import NUCLEI_DOMAINS
    from napari_dgseg.core.scale import measure_object_size

    domains = list(NUCLEI_DOMAINS)[:2] if quick else list(NUCLEI_DOMAINS)
    seeds = SEEDS[:1] if quick else SEEDS
    tiles = []
    for degradation in DEGRADATIONS:
        for s in SCALES:
            for domain in domains:
                for seed in seeds:
                    img, lab = hard_tile(domain, seed, s, degradation)
                    rgb = img.astype(np.float32) / 255.0
                    tiles.append({"degradation": degradation, "scale": s, "domain": domain,
                                  "seed": seed, "true_px": measure_object_size(lab, "nuclei"),
                                  "peaks": {w: curve_peak(rgb, w) for w in SIGNALS}})
            log(f"{degradation} x{s}: {len(tiles)} tiles")
    variants = {}
    for which in SIGNALS:
        for thr in THRESHOLDS:
            name = f"{which}, dominance {'off' if thr is None else f'>= {thr:g}'}"
            cells: dict[str, dict[str, float]] = {}
            for t in tiles:
                est = combine([t["peaks"][which]], thr, cals[which])
                v = verdict(est, t["true_px"], model)
                err = None if est is None else abs(est / t["true_px"] - 1.0)
                for key in (f"{t['degradation']} x{t['scale']:g}", "all"):
                    c = cells.setdefault(key, {"n": 0, "within": 0, "harmful": 0, "helped": 0,
                                               "fallback": 0, "errors": []})
                    c["n"] += 1
                    for k, ok in v.items():
                        c[k] += int(ok)
                    if err is not None:
                        c["errors"].append(err)
            for c in cells.values():
                errs = c.pop("errors")
                c["median_abs_error"] = round(float(np.median(errs)), 3) if errs else None
            variants[name] = {"signal": which, "dominance": thr, "cells": cells}
    return {"tiles": len(tiles), "domains": domains, "seeds": list(seeds),
            "degradations": {k: {"od_factor": v[0], "blur_sigma": v[1], "jpeg_quality": v[2]}
                             for k, v in DEGRADATIONS.items()},
            "variants": variants}


def real(shared: Path, cals: dict[str, float], model: dict) -> list[dict]:
    from skimage.io import imread

    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.scale_estimate import _crop_boxes, estimate_object_size

    out = []
    for p in sorted((shared / "data" / "real-he").glob("*")):
        if p.suffix.lower() not in (".png", ".jpg"):
            continue
        adapter = ImageAdapter.from_array(np.ascontiguousarray(imread(p)[..., :3]))
        boxes = _crop_boxes(adapter, "nuclei")
        crops = [np.asarray(adapter.region(*b), np.float32) for b in boxes]
        row: dict[str, Any] = {"image": p.name}
        for which in SIGNALS:
            peaks = [curve_peak(c, which) for c in crops]
            for thr in (None, CHOSEN[1]):
                est = combine(peaks, thr, cals[which])
                key = f"{which}, dominance {'off' if thr is None else f'>= {thr:g}'}"
                row[key] = None if est is None else round(est, 2)
        shipped = estimate_object_size(adapter, "nuclei")
        row["shipped_estimator"] = shipped
        row["shipped_factor"] = (None if shipped["object_size_px"] is None
                                 else round(model["object_size_px"] / shipped["object_size_px"], 3))
        out.append(row)
        log(p.name, row)
    return out


def clamp_check(model_name: str) -> dict:
    """Dice / AJI with the full, clamped, true and no factor where an estimate is applied."""
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic_nuclei import NUCLEI_DOMAINS
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.scale import estimate_tolerance, measure_object_size
    from napari_dgseg.core.scale_estimate import estimate_object_size

    bundle = load_bundle(model_name)
    size = bundle.scale["object_size_px"]
    lo, hi = estimate_tolerance(bundle.scale)
    rows = []
    for degradation in ("none", "blur-jpeg", "faded-strong"):
        for s in (0.5, 0.71, 1.41, 2.0):
            for domain in NUCLEI_DOMAINS:
                image, labels = hard_tile(domain, 7000, s, degradation)
                est = estimate_object_size(image, "nuclei")["object_size_px"]
                f = 1.0 if est is None else size / est
                if lo <= f <= hi:
                    continue  # not applied: clamping changes nothing
                factors = {"full": f, "clamped": f / lo if f < lo else f / hi,
                           "true": size / measure_object_size(labels, "nuclei"), "none": None}
                row: dict[str, Any] = {"degradation": degradation, "scale": s, "domain": domain,
                                       "factors": {k: None if v is None else round(v, 3)
                                                   for k, v in factors.items()}}
                for name, fac in factors.items():
                    kw = {"rescale": "off"} if fac is None else {"scale": fac}
                    pred = bundle.predict(image, device="cpu", **kw)
                    sc = instance_scores(np.asarray(pred.labels), labels)
                    row[name] = {"dice": round(sc["dice"], 4), "aji": round(sc["aji"], 4)}
                rows.append(row)
                log(row)
    mean = {k: {m: round(float(np.mean([r[k][m] for r in rows])), 4) for m in ("dice", "aji")}
            for k in ("full", "clamped", "true", "none")} if rows else {}
    return {"tiles": rows, "mean": mean}


def table(result: dict) -> str:
    """Markdown: per variant, tiles within tolerance / harmful / helped / fallback (all tiles)."""
    lines = ["| estimator | within tolerance | harmful | helped | fallback | median abs. error |",
             "|---|---|---|---|---|---|"]
    for name, v in result["synthetic"]["variants"].items():
        c = v["cells"]["all"]
        lines.append(f"| {name} | {c['within']}/{c['n']} | {c['harmful']} | {c['helped']} | "
                     f"{c['fallback']} | {c['median_abs_error']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet", help="bundle whose scale decides")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--quick", action="store_true", help="two domains, one seed")
    ap.add_argument("--part", choices=["estimator", "clamp"], default="estimator",
                    help="estimator variants (default) or the clamping rule with the model")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    if args.part == "clamp":
        result = {"benchmark": "scale_robustness_clamp", "date": time.strftime("%Y-%m-%d"),
                  "model": args.model, **clamp_check(args.model)}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["machine"] = machine_state(load_before)
        emit(result, args.out)
        return result
    model = load_bundle(args.model).scale
    cals = {w: calibration(w) for w in SIGNALS}
    log("calibration", cals)
    result: dict[str, Any] = {
        "benchmark": "scale_robustness",
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "model_scale": model,
        "calibration": {k: round(v, 4) for k, v in cals.items()},
        "chosen": {"signal": CHOSEN[0], "dominance": CHOSEN[1]},
        "synthetic": synthetic(model, cals, args.quick),
        "real": real(Path(args.shared), cals, model),
    }
    result["markdown"] = table(result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine_state(load_before)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
