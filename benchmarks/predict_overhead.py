"""Pipeline overhead: ``Bundle.predict`` vs the bare network forward over the same pixels.

For an H x W RGB image on CPU (default 2048 x 2048), each measurement runs in a fresh subprocess so
peak resident memory (``ru_maxrss``) is its own:

* ``forward``: the bare network on the whole image in one pass (the least work possible);
* ``predict``: ``Bundle.predict`` with the default tile/overlap (tiling, blending, softmax, argmax),
  DCIN off and DCIN ``full`` (two colour branches = two forwards per tile).

Prints one JSON object. Usage::

    python benchmarks/predict_overhead.py [--size 2048] [--model nuclei-unet] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _measure(mode: str, size: int, model: str, repeats: int, tile: int, overlap: int) -> dict:
    import numpy as np
    import torch

    from napari_dgseg import load_bundle
    from napari_dgseg.core.models.base import normalise_input

    torch.manual_seed(0)
    bundle = load_bundle(model)
    net = bundle.model
    rng = np.random.default_rng(0)
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "dcin-share":
        # none and gris interleaved in one process, so drift in machine load hits both alike
        t_none, t_gris = [], []
        for _ in range(repeats):
            for dcin, acc in (("none", t_none), ("gris", t_gris)):
                t0 = time.perf_counter()
                bundle.predict(img, tile=tile, overlap=overlap, device="cpu", dcin=dcin)
                acc.append(time.perf_counter() - t0)
        share = max(0.0, min(t_gris) - min(t_none)) / min(t_gris)
        return {"mode": mode, "none_min": round(min(t_none), 3), "gris_min": round(min(t_gris), 3),
                "dcin_share_of_predict": round(share, 3)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if mode == "forward":
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)
            with torch.inference_mode():
                net(normalise_input(x, bundle.input_spec))
        else:
            dcin = {"predict": "none", "predict-dcin-gris": "gris", "predict-dcin-full": "full"}[mode]
            bundle.predict(img, tile=tile, overlap=overlap, device="cpu", dcin=dcin)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds_min": round(min(times), 3), "seconds_all": [round(t, 3) for t in times],
            "peak_rss_mb": round(peak / 1024, 1), "rss_increase_mb": round((peak - base_rss) / 1024, 1)}


def main() -> None:
    from napari_dgseg.core.predict import DEFAULT_OVERLAP, DEFAULT_TILE

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=DEFAULT_TILE)
    ap.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.size, args.model, args.repeats, args.tile, args.overlap)))
        return
    rows = {}
    from napari_dgseg import load_bundle

    has_bank = load_bundle(args.model).extra("bank") is not None
    modes = ["forward", "predict"] + (
        ["predict-dcin-gris", "predict-dcin-full", "dcin-share"] if has_bank else [])
    for mode in modes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--size", str(args.size), "--model", args.model,
             "--repeats", str(args.repeats), "--tile", str(args.tile), "--overlap", str(args.overlap)],
            capture_output=True, text=True, check=True,
        )
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    from napari_dgseg.core.tiling import plan_tiles

    grid = plan_tiles(args.size, args.size, args.tile, args.overlap, 16)
    result = {
        "benchmark": "predict_overhead",
        "image": [args.size, args.size, 3],
        "model": args.model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "tile": args.tile,
        "overlap": args.overlap,
        "tiles": len(grid),
        "pixels_computed_ratio": round(grid.pixels_computed / args.size**2, 3),
        "rows": rows,
        "ratio_predict_over_forward": round(rows["predict"]["seconds_min"] / rows["forward"]["seconds_min"], 3),
    }
    if has_bank:
        # DCIN's own share: statistics, reference choice and per-tile transfer (one branch)
        result["dcin_share_of_predict"] = rows["dcin-share"]["dcin_share_of_predict"]
        result["ratio_dcin_full_over_forward"] = round(
            rows["predict-dcin-full"]["seconds_min"] / rows["forward"]["seconds_min"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
