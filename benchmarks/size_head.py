"""Model in the loop: a nucleus-size head on the network's own features (Cellpose's size model).

The features of a 256 px window are the mean and standard deviation of every encoder map of the
bundle's network (the generic ``encode``), the regression ridge (:mod:`napari_dgseg.core.ridge`)
to log2 of the median nucleus size. Fitted for ``--model`` on
the random training-renderer tiles of ``benchmarks/scale_regressor.py`` (its fit set: five H&E
domains, random resize 0.35-2.8x, fading, blur, JPEG), errors by 5-fold cross-validation. Then,
with the same model in the loop, the shipped image-only estimate (blob peak, learned LoG ruler's
veto, blur correction; its values on these tiles are read from ``benchmarks/scale_blur.py``'s
result, ``k = 0.5``) against:

* ``head veto T``: the shipped estimate stands only when the head agrees within ``T``;
* ``head alone``: the head's size is the estimate;
* ``geometric mean``: of the shipped estimate and the head's (none when the shipped has none).

On the random set's first 800 tiles (head predictions out of fold) and the 300-tile tuning set
of ``scale_robustness.py``, every tile whose factor a variant moves is segmented through the whole
default pipeline with the variant's estimate and scored. Training renderer only. Rule fixed
before the run: the variant with the highest mean AJI over both sets whose mean Dice is not
lower than the shipped estimate's by more than 0.002 on either; ties to the shipped one.
Stdout is one JSON object::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/size_head.py --cache HEAD.npz \\
        --blur-results benchmarks/results/scale_blur.json --out benchmarks/results/size_head.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from _scale_variants import score_moved, summarize_variants  # noqa: E402
from scale_regressor import random_tile  # noqa: E402
from scale_robustness import hard_tile, tuning_keys  # noqa: E402

VARIANTS = ("shipped", "head veto 1.6", "head veto 2", "head alone", "geometric mean")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def style_features(model: Any, input_spec: Any, rgb: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of every encoder map for one float RGB ``(H, W, 3)`` window."""
    import torch

    from napari_dgseg.core.models.base import normalise_input

    x = torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1)[None]
    model.eval()
    with torch.inference_mode():
        levels = model.encode(normalise_input(x, input_spec))
    return torch.cat([p for f in levels for p in (f.mean(dim=(2, 3))[0], f.std(dim=(2, 3))[0])]).numpy()


def collect(bundle: Any, n_fit: int, cache: Path | None) -> dict[str, np.ndarray]:
    if cache is not None and cache.exists():
        data = dict(np.load(cache))
        if int(data["n_fit"]) == n_fit:
            return data
    model, spec = bundle.model, bundle.input_spec
    t0 = time.perf_counter()
    fx, fy = [], []
    for i in range(n_fit):
        img, true, _, _ = random_tile(i)
        fx.append(style_features(model, spec, img.astype(np.float32) / 255.0))
        fy.append(math.log2(true))
        if i % 250 == 0:
            log(f"fit tile {i} ({time.perf_counter() - t0:.0f} s)")
    tx = []
    for degradation, s, domain, seed in tuning_keys():
        img, _ = hard_tile(domain, seed, s, degradation)
        tx.append(style_features(model, spec, img.astype(np.float32) / 255.0))
    data = {"n_fit": np.asarray(n_fit), "fit_x": np.asarray(fx), "fit_y": np.asarray(fy),
            "tune_x": np.asarray(tx)}
    if cache is not None:
        np.savez(cache, **data)
    return data


def variant_size(name: str, shipped: float | None, head: float) -> float | None:
    if name == "shipped":
        return shipped
    if name.startswith("head veto"):
        tol = float(name.split()[-1])
        return shipped if shipped is not None and abs(math.log(shipped / head)) <= math.log(tol) else None
    if name == "head alone":
        return head
    return None if shipped is None else math.sqrt(shipped * head)


def summarize(tiles: list[dict]) -> tuple[dict, str, str]:
    return summarize_variants(tiles, VARIANTS, "shipped", "estimate", lambda v: v == "shipped")


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.ridge import cross_validate, fit_ridge
    from napari_dgseg.core.scale import resolve_scale

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--n-fit", type=int, default=2000)
    ap.add_argument("--cache")
    ap.add_argument("--blur-results", default="benchmarks/results/scale_blur.json")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    bundle = load_bundle(args.model)
    data = collect(bundle, args.n_fit, Path(args.cache) if args.cache else None)
    errors, oof = cross_validate(data["fit_x"], data["fit_y"])
    head, _ = fit_ridge(data["fit_x"], data["fit_y"])
    tune_head = head.predict(data["tune_x"])
    log("cross-validated median |log2 error|", errors)
    blur = json.loads(Path(args.blur_results).read_text())
    tiles = []
    for t in blur["tiles"]:
        i = t["index"]
        h = float(2.0 ** (oof[i] if t["set"] == "random" else tune_head[i]))
        shipped = t["estimates"]["0.5"]
        row = {"set": t["set"], "index": i, "meta": t["meta"], "true_px": t["true_px"],
               "head_px": round(h, 3), "estimates": {v: variant_size(v, shipped, h) for v in VARIANTS}}
        row["factors"] = {v: round(resolve_scale(bundle.scale, estimate=lambda z=z: {"object_size_px": z}).factor, 4)
                          for v, z in row["estimates"].items()}
        tiles.append(row)
    for t in tiles:
        moved = [v for v in VARIANTS if t["factors"][v] != t["factors"]["shipped"]]
        if not moved:
            continue
        t["scores"] = score_moved(bundle, t, "shipped", moved)
        log(t["set"], t["index"], round(t["true_px"], 1), t["head_px"], t["estimates"]["shipped"],
            {v: (s["dice"], s["aji"]) for v, s in t["scores"].items()}, f"({time.perf_counter() - t0:.0f} s)")
    summary, chosen, markdown = summarize(tiles)
    rnd = [t for t in tiles if t["set"] == "random"]
    err_head = float(np.median([abs(math.log2(t["head_px"] / t["true_px"])) for t in rnd]))
    err_shipped = float(np.median([abs(math.log2(t["estimates"]["shipped"] / t["true_px"]))
                                   for t in rnd if t["estimates"]["shipped"]]))
    result = {"benchmark": "size_head", "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "fit_tiles": int(len(data["fit_y"])),
              "cv_median_abs_log2_error": {str(k): round(v, 4) for k, v in errors.items()},
              "median_abs_log2_error_random800": {"head": round(err_head, 4), "shipped": round(err_shipped, 4)},
              "summary": summary, "chosen": chosen, "markdown": markdown, "tiles": tiles,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load_before)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
