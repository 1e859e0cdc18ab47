"""``dgseg predict`` on a folder: in one process vs a local dask cluster of 1 and 2 workers.

``--n`` synthetic nuclei images (``--size`` px, training renderer, seeds 80000+) are written to a
temporary folder, then ``python -m napari_dgseg.cli predict`` runs on them as a subprocess:

* ``in_process``: the plain command, ``--threads 1``;
* ``workers_1`` / ``workers_2``: ``--workers N`` (worker processes on 127.0.0.1, one torch thread
  each), so the difference to ``in_process`` is the cluster's start-up and transfer cost and the
  gain of parallel workers.

Each configuration runs ``--repeats`` times, the configurations interleaved (best wall time kept;
a cluster starts afresh every time, as a user's command would). The outputs of every run are compared with the in-process
labels (``identical_outputs``). Timings depend on the machine's load, recorded under
``machine``. Prints one JSON object. Usage::

    nice -n 10 python benchmarks/distributed_batch.py [--n 8] [--size 512] [--model nuclei-unet]
        [--repeats 1] [--out benchmarks/results/distributed_batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit, load_average, machine_state


def _write_images(folder: Path, n: int, size: int) -> None:
    from skimage.io import imsave

    from napari_dgseg.core.data.synthetic import make_sample

    folder.mkdir(parents=True)
    for i in range(n):
        sample = make_sample("nuclei", size, seed=80000 + i)
        imsave(folder / f"img{i:02d}.png", sample.image, check_contrast=False)


def _run(images: Path, out: Path, model: str, extra: list[str]) -> tuple[float, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "napari_dgseg.cli", "predict", "--model", model, "--out",
           str(out), "--quiet", "--device", "cpu", str(images), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds, json.loads(proc.stdout)


def _labels(summary: dict) -> list[np.ndarray]:
    from napari_dgseg.core.labels_io import read_labels

    return [read_labels(row["labels"])[0] for row in summary["outputs"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    load_before = load_average()
    configs = {"in_process": ["--threads", "1"],
               "workers_1": ["--workers", "1", "--threads", "1"],
               "workers_2": ["--workers", "2", "--threads", "1"]}
    times: dict[str, list[float]] = {name: [] for name in configs}
    per_image: dict[str, list[float]] = {name: [] for name in configs}
    identical = {name: True for name in configs}
    with tempfile.TemporaryDirectory(prefix="dgseg-dist-bench-") as tmp:
        images = Path(tmp) / "images"
        _write_images(images, args.n, args.size)
        reference = None
        for r in range(args.repeats):  # configurations interleaved: load drift hits all alike
            for name, extra in configs.items():
                seconds, summary = _run(images, Path(tmp) / f"{name}-{r}", args.model, extra)
                times[name].append(seconds)
                per_image[name].append(sum(row["seconds"] for row in summary["outputs"]))
                labels = _labels(summary)
                if reference is None:
                    reference = labels
                identical[name] &= all(np.array_equal(a, b)
                                       for a, b in zip(reference, labels, strict=True))
    rows = {name: {"wall_seconds_best": round(min(times[name]), 2),
                   "wall_seconds_all": [round(t, 2) for t in times[name]],
                   "sum_of_per_image_seconds_best": round(min(per_image[name]), 2),
                   "identical_outputs": bool(identical[name])} for name in configs}
    base = rows["in_process"]["wall_seconds_best"]
    emit({
        "benchmark": "distributed_batch",
        "model": args.model,
        "images": args.n,
        "size": args.size,
        "repeats": args.repeats,
        "note": "wall time of the whole command (interpreter, bundle, cluster start, all images); "
                "the machine's cores are shared with other jobs (see machine.loadavg), so these "
                "are numbers under load",
        "rows": rows,
        "speedup_workers_2_over_in_process": round(base / rows["workers_2"]["wall_seconds_best"],
                                                   3),
        "speedup_workers_2_over_workers_1": round(rows["workers_1"]["wall_seconds_best"]
                                                  / rows["workers_2"]["wall_seconds_best"], 3),
        "machine": machine_state(load_before),
    }, args.out)


if __name__ == "__main__":
    main()
