"""DCIN x CQG table (Shah et al. 2025, Table form) on the synthetic nuclei domains.

Models trained on one domain (without / with CQG) are evaluated on every domain with DCIN
``none`` / ``gris`` / ``lris`` / ``full`` and a fixed expert reference (one image of the training
domain, chosen once). Test images are generated with seeds disjoint from training (>= 50000).
Reports pixel Dice, AJI and PQ (instances: the family's own, or connected components of the
semantic mask) per domain, and the mean over shifted domains. With ``--modes none`` and one
model it is the baseline table of docs/segment.md (the domain drop later methods must close).

Stdout is exactly one JSON object; progress lines go to stderr. Usage::

    python benchmarks/dcin_table.py --models nuclei-unet nuclei-unet-cqg --n 4 --size 512 \
        > benchmarks/results/dcin_table.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-unet-cqg"])
    ap.add_argument("--modes", nargs="+", default=["none", "gris", "lris", "full", "reference"])
    ap.add_argument("--n", type=int, default=6, help="test images per domain")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train-domain", default="clean")
    args = ap.parse_args()

    from napari_dgseg import load_bundle
    from napari_dgseg.core import metrics
    from napari_dgseg.core.data.synthetic import list_domains, make_nuclei
    from napari_dgseg.core.postprocess import semantic_to_instances

    domains = list_domains()["nuclei"]
    tests = {d: [make_nuclei(args.size, domain=d, seed=50_000 + i) for i in range(args.n)] for d in domains}
    expert, _ = make_nuclei(args.size, domain=args.train_domain, seed=99_999)
    rows = []
    t0 = time.perf_counter()
    for model in args.models:
        bundle = load_bundle(model)
        for mode in args.modes:
            row = {"model": model, "cqg": bool(bundle.provenance.get("cqg")), "dcin": mode}
            for d in domains:
                dice, aji, pq = [], [], []
                for img, gt in tests[d]:
                    pred = bundle.predict(img, tile=512, overlap=32, device="cpu", dcin=mode,
                                          reference=expert if mode == "reference" else None)
                    inst = pred.labels if bundle.family.output == "instances" else semantic_to_instances(pred.labels)
                    sc = metrics.instance_scores(inst, gt)
                    dice.append(sc["dice"])
                    aji.append(sc["aji"])
                    pq.append(sc["pq"])
                row[d] = {"dice": round(float(np.mean(dice)), 4), "dice_std": round(float(np.std(dice)), 4),
                          "aji": round(float(np.mean(aji)), 4), "pq": round(float(np.mean(pq)), 4)}
            shifted = [d for d in domains if d != args.train_domain]
            row["shifted_mean_dice"] = round(float(np.mean([row[d]["dice"] for d in shifted])), 4)
            row["shifted_mean_aji"] = round(float(np.mean([row[d]["aji"] for d in shifted])), 4)
            rows.append(row)
            print(json.dumps({"progress": f"{model} {mode}", "shifted_mean_dice": row["shifted_mean_dice"]}),
                  file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "dcin_table", "train_domain": args.train_domain, "domains": domains,
                      "n_per_domain": args.n, "size": args.size, "seconds": round(time.perf_counter() - t0, 1),
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
