"""Time of the CQG views (geometric + photometric) for one batch on the CPU; prints one JSON.

``cqg_views`` on a random ``--batch`` x 3 x ``--size`` x ``--size`` float batch with integer
labels, median of ``--repeat`` calls (one warm-up call first). Usage::

    python benchmarks/cqg_speed.py [--batch 8] [--size 256] [--repeat 7] \\
        [--out benchmarks/results/cqg_speed.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import emit, load_average, machine_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    load_before = load_average()

    from napari_dgseg.core.augment_cqg import cqg_views

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), generator=g)
    cqg_views(x, y, g)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        cqg_views(x, y, g)
        times.append(time.perf_counter() - t0)
    result = {
        "benchmark": "cqg_speed",
        "command": "python benchmarks/cqg_speed.py"
        + f" --batch {args.batch} --size {args.size} --repeat {args.repeat}",
        "batch": [args.batch, 3, args.size, args.size],
        "cqg_views_median_s": round(statistics.median(times), 4),
        "cqg_views_min_s": round(min(times), 4),
        "cqg_views_max_s": round(max(times), 4),
        "torch_threads": torch.get_num_threads(),
        **machine_state(load_before),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
