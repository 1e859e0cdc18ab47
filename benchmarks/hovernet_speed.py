"""HoVer-Net post-processing and HV-target times on synthetic crowded nuclei; prints one JSON.

An instance map of ``--nuclei`` random ellipses (radii 5-11 px, allowed to touch) on a ``--size``
px square gives perfect NP/HV maps; ``hovernet_instances`` turns them back into instances (timed,
median of ``--repeat``, and scored with AJI/PQ against the map). ``hv_targets`` is timed on a
batch of four 256 px crops of the same map. Usage::

    python benchmarks/hovernet_speed.py [--size 1024] [--nuclei 150] [--repeat 5] \\
        [--out benchmarks/results/hovernet_speed.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from _report import emit, load_average, machine_state


def ellipses(size: int, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` ellipses; one losing more than 15 % of its area to earlier ones is redrawn."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[-13:14, -13:14]
    placed = 0
    for _ in range(20 * n):
        if placed == n:
            break
        cy, cx = rng.integers(13, size - 14, 2)
        a, b = rng.uniform(5, 11, 2)
        t = rng.uniform(0, np.pi)
        u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        sub = lab[cy - 13 : cy + 14, cx - 13 : cx + 14]
        if np.count_nonzero(inside & (sub > 0)) > 0.15 * np.count_nonzero(inside):
            continue
        placed += 1
        sub[inside & (sub == 0)] = placed
    return lab


def median_time(fn: Callable[[], object], repeat: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--nuclei", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    load_before = load_average()

    from napari_dgseg.core.families.hovernet.postprocess import hovernet_instances
    from napari_dgseg.core.families.hovernet.targets import hv_targets, hv_targets_numpy
    from napari_dgseg.core.metrics import instance_scores

    gt = ellipses(args.size, args.nuclei)
    blob, hv = (gt > 0).astype(np.float32), hv_targets_numpy(gt)
    pred = hovernet_instances(blob, hv)
    scores = instance_scores(pred, gt)
    crops = torch.from_numpy(np.stack([gt[:256, :256], gt[:256, 256:512], gt[256:512, :256],
                                       gt[256:512, 256:512]]).astype(np.int64))  # fmt: skip
    result = {
        "benchmark": "hovernet_speed",
        "command": "python benchmarks/hovernet_speed.py"
        + f" --size {args.size} --nuclei {args.nuclei} --repeat {args.repeat}",
        "image": [args.size, args.size],
        "nuclei": int(gt.max()),
        "postprocess_perfect_maps": median_time(lambda: hovernet_instances(blob, hv), args.repeat),
        "recovered": {"aji": round(scores["aji"], 4), "pq": round(scores["pq"], 4),
                      "n_pred": scores["n_pred"], "n_gt": scores["n_gt"]},  # fmt: skip
        "hv_targets_batch_4x256": median_time(lambda: hv_targets(crops), args.repeat),
        "torch_threads": torch.get_num_threads(),
        **machine_state(load_before),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
