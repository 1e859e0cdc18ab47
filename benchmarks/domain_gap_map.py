"""What the "Domain-gap map" costs: fit D1 to a frozen model and draw the local mask.

On one ``--size`` x ``--size`` image (default: a synthetic H&E tile of the renderer's
``warm-scanner`` domain; ``--image PATH`` for a file, reflect-padded or cropped to the size),
CPU (``--threads`` torch threads for the process; the map itself runs with one intra-op
thread, see :func:`~napari_dgseg.core.local_align.gap_map.one_thread`), for each ``--models`` bundle:
:func:`napari_dgseg.core.local_align.gap_map.domain_gap_map` with the defaults the widget uses
(300 steps of 64 + 64 windows of 8 x 8 feature pixels, D1 hidden 32, kernel 1), at the image's
own grid (``--rescale off``, the worst case: ``auto`` may shrink the image to the model's scale).

Reported per model: wall seconds (total and per stage: replay + image features, D1 fit, the
rest = replay features and drawing the map), the process's CPU seconds, D1's final balanced
accuracy, and the mask's mean and 95th percentile; plus the machine's load (timings on a shared
machine are upper bounds). Target: under 60 s on 2 CPU cores for 1024 x 1024. Stdout is one JSON
object::

    python benchmarks/domain_gap_map.py --size 1024 --threads 2 --out benchmarks/results/domain_gap_map.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _image(path: str | None, size: int):
    import numpy as np

    if path is None:
        from napari_dgseg.core.data.synthetic import make_nuclei

        return make_nuclei(size, domain="warm-scanner", seed=50_000)[0], "synthetic warm-scanner"
    from skimage.io import imread

    img = np.asarray(imread(path))[..., :3]
    h, w = img.shape[:2]
    img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
    return np.ascontiguousarray(img[:size, :size]), str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--image", default=None)
    ap.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-hovernet"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rescale", default="off")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from _report import emit, load_average, machine_state

    from napari_dgseg import load_bundle
    from napari_dgseg.core.local_align.gap_map import domain_gap_map

    torch.set_num_threads(args.threads)
    load_before = load_average()
    img, source = _image(args.image, args.size)
    rows = {}
    for name in args.models:
        bundle = load_bundle(name)
        _ = bundle.model  # built before the clock starts (the widget has it loaded)
        t0, c0 = time.perf_counter(), time.process_time()
        gap = domain_gap_map(bundle, img, steps=args.steps, device="cpu", rescale=args.rescale)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        sec = gap.provenance["seconds"]
        rows[name] = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "features_s": sec["features"],
            "fit_s": sec["fit"],
            "other_s": round(sec["total"] - sec["features"] - sec["fit"], 2),
            "feature_channels": gap.provenance["d1"]["in_channels"],
            "model_grid": gap.provenance["scale"]["model_grid_shape"],
            "d1_accuracy": gap.provenance["accuracy"],
            "mask_mean": round(float(gap.local_mask.mean()), 4),
            "mask_p95": round(float(np.percentile(gap.local_mask, 95)), 4),
            "under_60_s": wall < 60.0,
        }
        print(f"{name}: {rows[name]}", file=sys.stderr)
    emit({
        "benchmark": "domain_gap_map",
        "image": source,
        "size": args.size,
        "steps": args.steps,
        "rescale": args.rescale,
        "torch_threads": args.threads,
        "models": rows,
        "machine": machine_state(load_before),
        "torch": torch.__version__,
    }, args.out)


if __name__ == "__main__":
    main()
