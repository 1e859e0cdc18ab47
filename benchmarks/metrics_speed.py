"""Time the metrics on a 1024 x 1024 pair with 500 instances; prints one JSON object.

Run: ``.venv/bin/python benchmarks/metrics_speed.py [--size 1024] [--instances 500] [--repeat 7]
[--out benchmarks/results/metrics_speed.json]``. The JSON records the load average before and
after the run (``os.getloadavg``), so timings taken on a busy machine can be recognised.

The ground truth holds random ellipses (ids drawn from a non-contiguous pool); the prediction is
a perturbed copy (shifted by 2 px, 10% of the instances dropped, 10% split in two, 5% false
positives added), so every code path (merges, splits, misses, false positives) is exercised.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from _report import load_average, machine_state
from skimage.draw import ellipse

from napari_dgseg.core.metrics import instance_scores, semantic_scores


def make_pair(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth with ``n`` ellipses and a perturbed prediction, both ``(size, size)``."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.int32)
    ids = rng.choice(np.arange(1, 50 * n), size=n, replace=False)
    for i in ids:
        r, c = rng.integers(0, size, 2)
        rr, cc = ellipse(r, c, rng.integers(6, 20), rng.integers(6, 20), shape=gt.shape,
                         rotation=rng.uniform(0, np.pi))  # fmt: skip
        gt[rr, cc] = i
    pred = np.roll(gt, 2, axis=1)
    present = np.unique(pred)[1:]
    drop = rng.choice(present, len(present) // 10, replace=False)
    pred[np.isin(pred, drop)] = 0
    keep = np.setdiff1d(present, drop)
    split = rng.choice(keep, len(keep) // 10, replace=False)
    cols = np.arange(size)[None, :] % 2 == 0
    sel = np.isin(pred, split) & cols
    pred[sel] += 100 * n
    for j in range(n // 20):
        r, c = rng.integers(0, size, 2)
        rr, cc = ellipse(r, c, 8, 8, shape=pred.shape)
        pred[rr, cc] = 200 * n + j
    return pred, gt


def _time(fn, repeat: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    load_before = load_average()
    pred, gt = make_pair(args.size, args.instances)
    scores = instance_scores(pred, gt)
    result = {
        "benchmark": "metrics_speed",
        "command": "python benchmarks/metrics_speed.py"
        + f" --size {args.size} --instances {args.instances} --repeat {args.repeat}",
        "shape": list(gt.shape),
        "n_gt": scores["n_gt"],
        "n_pred": scores["n_pred"],
        "instance_scores": _time(lambda: instance_scores(pred, gt), args.repeat),
        "semantic_scores_binary": _time(
            lambda: semantic_scores((pred > 0).astype(np.uint8), (gt > 0).astype(np.uint8)),
            args.repeat,
        ),
        "scores": {k: round(scores[k], 4) for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq")},
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            **machine_state(load_before),
        },
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
