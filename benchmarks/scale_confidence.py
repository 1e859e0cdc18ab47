"""Can the network's own certainty choose the scale? Measured on the tuning set only: no.

    OMP_NUM_THREADS=1 python benchmarks/scale_confidence.py --out benchmarks/results/scale_confidence.json

On ``benchmarks/scale_robustness.py``'s 300 hard tiles of the **training renderer** (five H&E
domains, seeds 7000-7002, resized 0.5-2x, four degradations), for every tile where the
nucleus-size estimate asks for a resampling, ``--model`` runs once at factor 1 and once at the
estimate's factor. Three label-free signals of each pass are compared with which pass has the
higher AJI against the labels: mean certainty ``|2p - 1|`` of the nucleus probability over all
pixels (``cert``) and over predicted nuclei (``cert_fg``), and mean binary entropy (``ent``,
lower = more certain). A signal that could select the scale would pick the better pass far more
often than half the time. Prints JSON (agreement per signal, per-tile rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from scale_robustness import hard_tile, tuning_keys  # noqa: E402

SIGNALS = {"cert": max, "cert_fg": max, "ent": min}


def signals(prob: np.ndarray) -> dict[str, float]:
    """The label-free signals of one pass from its nucleus probability map."""
    fg = prob > 0.5
    ent = -(prob * np.log(prob + 1e-6) + (1 - prob) * np.log(1 - prob + 1e-6))
    return {"cert": float(np.abs(2 * prob - 1).mean()),
            "cert_fg": float(np.abs(2 * prob[fg] - 1).mean()) if fg.any() else 0.0,
            "ent": float(ent.mean())}


def main(argv: list[str] | None = None) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.scale_inference import plan_scale

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0, load0 = time.perf_counter(), load_average()
    bundle = load_bundle(args.model)
    rows = []
    for deg, s, dom, seed in tuning_keys():
        image, labels = hard_tile(dom, seed, s, deg)
        dec, _ = plan_scale(bundle.manifest, ImageAdapter.from_array(image))
        if not dec.applied:
            continue
        passes = {}
        for f in (1.0, float(dec.factor)):
            kw = {"rescale": "off"} if f == 1.0 else {"scale": f}
            pred = bundle.predict(image, device="cpu", **kw)
            sc = instance_scores(np.asarray(pred.labels), labels)
            passes["unscaled" if f == 1.0 else "estimate"] = {
                "factor": round(f, 4), "aji": round(float(sc["aji"]), 4),
                **{k: round(v, 4) for k, v in signals(np.asarray(pred.probabilities)[1]).items()}}
        rows.append({"degradation": deg, "scale": s, "domain": dom, "seed": seed,
                     "passes": passes})
        print(deg, s, dom, seed, passes, file=sys.stderr)
    agreement = {}
    for sig, best in SIGNALS.items():
        right = sum(best(r["passes"], key=lambda k, r=r, sig=sig: r["passes"][k][sig])
                    == max(r["passes"], key=lambda k, r=r: r["passes"][k]["aji"]) for r in rows)
        agreement[sig] = {"picks_the_better_pass": right, "of": len(rows),
                          "share": round(right / len(rows), 3) if rows else None}
    est_better = sum(r["passes"]["estimate"]["aji"] >= r["passes"]["unscaled"]["aji"] for r in rows)
    result = {"benchmark": "scale_confidence", "model": args.model, "tiles_resampled": len(rows),
              "estimate_pass_better": est_better, "agreement": agreement, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load0)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
