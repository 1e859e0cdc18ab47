"""Cancel latency of a segmentation run; prints one JSON object.

A shipped model (``--model``, default nuclei-unet) segments a random ``--size`` x ``--size`` RGB
image on the CPU with ``--tile`` px tiles and DCIN ``--dcin`` in a worker thread; ``--after``
seconds after the first forward pass starts, the cancel token is set, and the time until the
worker has stopped is recorded (``--repeat`` times). ``--no-layer-checks`` measures the old
behaviour (the token checked only between batches of tiles) for comparison::

    python benchmarks/cancel_latency.py [--size 2048] [--tile 1024] [--dcin none] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--dcin", default="none")
    ap.add_argument("--after", type=float, default=0.3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-layer-checks", action="store_true")
    args = ap.parse_args()

    import napari_dgseg.core.inference as inference
    import napari_dgseg.core.predict as predict
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.errors import CancelledError

    if args.no_layer_checks:
        def none(*_a, **_k):
            return contextlib.nullcontext()

        predict.cancel_hooks = none
        inference.cancel_hooks = none
    bundle = load_bundle(args.model)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
    latencies = []
    for _ in range(args.repeat):
        cancel, started, done = threading.Event(), threading.Event(), threading.Event()
        handle = bundle.model.register_forward_pre_hook(lambda *_, s=started: s.set())
        outcome = {}

        def work(cancel=cancel, done=done, outcome=outcome) -> None:
            try:
                bundle.predict(image, tile=args.tile, device="cpu", dcin=args.dcin, cancel=cancel)
                outcome["kind"] = "finished"
            except CancelledError:
                outcome["kind"] = "cancelled"
            done.set()

        threading.Thread(target=work, daemon=True).start()
        started.wait()
        time.sleep(args.after)
        t0 = time.monotonic()
        cancel.set()
        done.wait()
        latencies.append(round(time.monotonic() - t0, 3))
        handle.remove()
        assert outcome["kind"] == "cancelled", outcome
    print(json.dumps({
        "model": args.model, "size": args.size, "tile": args.tile, "dcin": args.dcin,
        "layer_checks": not args.no_layer_checks, "latency_s": latencies,
        "max_s": max(latencies), "loadavg": [round(v, 2) for v in os.getloadavg()],
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
    }))


if __name__ == "__main__":
    main()
