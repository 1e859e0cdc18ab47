"""CPU prediction with the allocator's two settings (``napari_dgseg.core.heap``); prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/heap_speed.py --model nuclei-hovernet --side 2048 \\
        --repeats 2 --out benchmarks/results/heap_speed.json
    OMP_NUM_THREADS=1 python benchmarks/heap_speed.py --where thread \\
        --out benchmarks/results/heap_speed_thread.json

Each run is a fresh process that sets the allocator as the CLI does (``bound_heap``: the
default, or ``DGSEG_LEAN_HEAP=1``; ``glibc-default`` leaves glibc's own dynamic threshold) and
predicts one synthetic H&E image (``side`` px a side, a 512 px ``clean`` tile repeated) in memory,
scale as it is (``rescale="off"``), in the main thread as the CLI does or (``--where thread``)
in a worker thread as napari's widgets do, where ``shared`` is the widgets' setting (the
thresholds and one heap for every thread). Recorded per run: wall seconds of the prediction, user and
system CPU seconds and minor page faults of the process, its peak resident memory. Settings
alternate within each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402

SETTINGS = {"main": ("glibc-default", "lean", "default"),
            "thread": ("glibc-default", "default", "shared")}

CHILD = """
import json, resource, sys, threading, time
import numpy as np
setting, model, side, where = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if setting != "glibc-default":
    from napari_dgseg.core.heap import bound_heap
    bound_heap(share_arena=setting == "shared")
from napari_dgseg import load_bundle
from napari_dgseg.core.data.synthetic import make_sample
bundle = load_bundle(model)
reps = -(-side // 512)
image = np.ascontiguousarray(np.tile(make_sample("nuclei", 512, "clean", 3).image,
                                     (reps, reps, 1))[:side, :side])
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
result = []
run = lambda: result.append(bundle.predict(image, device="cpu", rescale="off"))
if where == "thread":
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
else:
    run()
pred = result[0]
seconds = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": round(seconds, 2), "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                  "system_s": round(r1.ru_stime - r0.ru_stime, 2),
                  "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "peak_rss_mb": round(r1.ru_maxrss / 1024, 1),
                  "objects": int(np.asarray(pred.labels).max())}))
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--where", choices=("main", "thread"), default="main")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    load0 = load_average()
    settings = SETTINGS[args.where]
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for setting in settings:
            env = {k: v for k, v in os.environ.items() if k != "DGSEG_LEAN_HEAP"}
            if setting == "lean":
                env["DGSEG_LEAN_HEAP"] = "1"
            out = subprocess.run([sys.executable, "-c", CHILD, setting, args.model,
                                  str(args.side), args.where], env=env, capture_output=True, text=True,
                                 check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[setting].append(row)
            print(setting, row, file=sys.stderr)
    best = {s: min(rows, key=lambda r: r["seconds"]) for s, rows in runs.items()}
    base = "lean" if args.where == "main" else "glibc-default"
    best_setting = "default" if args.where == "main" else "shared"
    result = {"benchmark": "heap_speed", "model": args.model, "side": args.side,
              "where": args.where,
              "torch_threads": os.environ.get("OMP_NUM_THREADS"), "runs": runs, "best": best,
              f"speedup_{best_setting}_vs_{base}": round(best[base]["seconds"]
                                                         / best[best_setting]["seconds"], 2),
              "date": time.strftime("%Y-%m-%d"), "machine": machine_state(load0)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
