"""Reduced precision against fp32: accuracy on every shipped bundle, and CPU speed.

For every shipped bundle with a network (the classical baselines have none and ignore
``--precision``), ``--n`` synthetic images of the bundle's task (the training renderer's default
domain, seeds 70000+) are segmented with ``precision="fp32"`` and with ``"bf16"`` (CPU autocast;
``--precision`` and ``--device`` choose others where a GPU exists), DCIN off so only the network's
arithmetic differs. Reported per bundle:

* ``dice_vs_fp32``: Dice of the foreground (label > 0) of the reduced-precision mask against the
  fp32 mask, pooled over the images;
* ``max_abs_prob_diff`` / ``mean_abs_prob_diff``: largest and mean absolute difference of the
  class probabilities;
* ``dice_truth_fp32`` / ``dice_truth_reduced``: foreground Dice of each against the synthetic
  truth (what a user would measure);
* ``seconds_fp32`` / ``seconds_reduced``: best of ``--repeats`` runs of ``Bundle.predict`` on one
  ``--speed-size`` image, the two precisions interleaved so load drift hits both alike.

Prints one JSON object. Usage::

    nice -n 10 python benchmarks/precision.py [--n 4] [--size 256] [--speed-size 512]
        [--precision bf16] [--device cpu] [--out benchmarks/results/precision.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import emit, load_average, machine_state


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(np.logical_and(a, b).sum())
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def _bundle_row(path: str, args: argparse.Namespace) -> dict | None:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_sample

    bundle = load_bundle(path)
    if getattr(bundle.family, "segment_image", None) is not None:
        return None
    kind = "vessels" if bundle.manifest.get("task") == "vessels" else "nuclei"
    kw = {"device": args.device, "dcin": "none", "batch": args.batch}
    inter = union_like = 0.0
    tr = {"fp32": [0.0, 0.0], "reduced": [0.0, 0.0]}
    max_diff, diffs = 0.0, []
    for i in range(args.n):
        sample = make_sample(kind, args.size, seed=70000 + i)
        ref = bundle.predict(sample.image, **kw)
        low = bundle.predict(sample.image, precision=args.precision, **kw)
        fa, fb = ref.labels > 0, low.labels > 0
        inter += float(np.logical_and(fa, fb).sum())
        union_like += float(fa.sum() + fb.sum())
        truth = sample.labels > 0
        for key, pred in (("fp32", fa), ("reduced", fb)):
            tr[key][0] += float(np.logical_and(pred, truth).sum())
            tr[key][1] += float(pred.sum() + truth.sum())
        if ref.probabilities is not None:
            d = np.abs(low.probabilities - ref.probabilities)
            max_diff = max(max_diff, float(d.max()))
            diffs.append(float(d.mean()))
    img = make_sample(kind, args.speed_size, seed=71000).image
    times: dict[str, list[float]] = {"fp32": [], "reduced": []}
    for _ in range(args.repeats):
        for key, precision in (("fp32", "fp32"), ("reduced", args.precision)):
            t0 = time.perf_counter()
            bundle.predict(img, precision=precision, **kw)
            times[key].append(time.perf_counter() - t0)
    return {
        "family": bundle.family_name,
        "task": kind,
        "output": bundle.family.output,
        "dice_vs_fp32": round(1.0 if union_like == 0 else 2 * inter / union_like, 5),
        "max_abs_prob_diff": round(max_diff, 5),
        "mean_abs_prob_diff": round(float(np.mean(diffs)), 6) if diffs else None,
        "dice_truth_fp32": round(2 * tr["fp32"][0] / max(tr["fp32"][1], 1.0), 4),
        "dice_truth_reduced": round(2 * tr["reduced"][0] / max(tr["reduced"][1], 1.0), 4),
        "seconds_fp32": round(min(times["fp32"]), 3),
        "seconds_reduced": round(min(times["reduced"]), 3),
        "speedup": round(min(times["fp32"]) / min(times["reduced"]), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="synthetic images per bundle")
    ap.add_argument("--size", type=int, default=256, help="side of the accuracy images")
    ap.add_argument("--speed-size", type=int, default=512, help="side of the timing image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    import torch

    from napari_dgseg.core.bundle_index import list_bundles
    from napari_dgseg.core.precision import set_threads

    threads = set_threads(args.threads)
    load_before = load_average()
    shipped = sorted((row["name"], row["path"]) for row in list_bundles()
                     if row["where"] == "shipped" and not row.get("broken"))
    rows, skipped = {}, {}
    for name, path in shipped:
        row = _bundle_row(path, args)
        if row is None:
            skipped[name] = "no network (classical baseline): precision does not apply"
        else:
            rows[name] = row
    emit({
        "benchmark": "precision",
        "precision": args.precision,
        "device": args.device,
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpu_bf16_note": "CPU bf16 runs through torch.autocast (convolutions in bf16); its speed "
                         "depends on the CPU's bf16 support (AVX512-BF16/AMX)",
        "not_measured": None if args.device != "cpu" else
        "fp16 and CUDA were not measured: no GPU was lent to this run",
        "images_per_bundle": args.n,
        "size": args.size,
        "speed_size": args.speed_size,
        "dcin": "none",
        "bundles": rows,
        "skipped": skipped,
        "machine": machine_state(load_before),
    }, args.out)


if __name__ == "__main__":
    main()
