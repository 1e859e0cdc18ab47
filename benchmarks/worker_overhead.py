"""Per-image time inside a dask worker vs a plain process, with and without dask's malloc trim.

dask's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (hand freed memory back to
the system at once). Tiled inference frees and reallocates megabyte-sized arrays per tile, so
this benchmark times ``Bundle.predict`` on one synthetic 512 px nuclei image (``--repeats`` times,
best kept) in three places, the cluster variants interleaved ``--rounds`` times:

* ``in_process``: this process;
* ``worker_dask_default``: a 1-worker ``LocalCluster`` with dask's pre-spawn environment;
* ``worker_napari_dgseg``: :func:`napari_dgseg.core.distributed.local_cluster` (glibc's default
  trimming).

All with one torch thread. Prints one JSON object. Usage::

    nice -n 10 python benchmarks/worker_overhead.py [--rounds 2] [--repeats 4]
        [--out benchmarks/results/worker_overhead.json]
"""

from __future__ import annotations

import argparse
import os
import time

from _report import emit, load_average, machine_state


def _job(model: str, repeats: int) -> dict:
    """Runs where it is called (this process or a worker): best and all predict seconds."""
    import torch

    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_sample

    torch.set_num_threads(1)
    bundle = load_bundle(model)
    img = make_sample("nuclei", 512, seed=80000).image
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bundle.predict(img, device="cpu", dcin="none")
        times.append(time.perf_counter() - t0)
    return {"best": round(min(times), 3), "all": [round(t, 3) for t in times],
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def _dask_default_cluster():
    import distributed

    return distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import distributed

    from napari_dgseg.core.distributed import local_cluster

    load_before = load_average()
    trim_before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    rows: dict[str, list[dict]] = {"in_process": [], "worker_dask_default": [],
                                   "worker_napari_dgseg": []}
    for _ in range(args.rounds):
        rows["in_process"].append(_job(args.model, args.repeats))
        for name, start in (("worker_dask_default", _dask_default_cluster),
                            ("worker_napari_dgseg", lambda: local_cluster(1, 1))):
            # the nanny writes its variables into this process; start each cluster from the same
            if trim_before is None:
                os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            cluster = start()
            client = distributed.Client(cluster, set_as_default=False)
            try:
                rows[name].append(client.submit(_job, args.model, args.repeats,
                                                pure=False).result())
            finally:
                client.close()
                cluster.close()
    summary = {name: min(r["best"] for r in runs) for name, runs in rows.items()}
    emit({
        "benchmark": "worker_overhead",
        "model": args.model,
        "image": [512, 512, 3],
        "torch_threads": 1,
        "best_seconds": summary,
        "ratio_dask_default_over_in_process": round(summary["worker_dask_default"]
                                                    / summary["in_process"], 3),
        "ratio_napari_dgseg_over_in_process": round(summary["worker_napari_dgseg"]
                                                    / summary["in_process"], 3),
        "runs": rows,
        "note": "the machine's 2 cores are shared with other jobs (machine.loadavg)",
        "machine": machine_state(load_before),
    }, args.out)


if __name__ == "__main__":
    main()
