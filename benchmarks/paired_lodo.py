"""Paired per-seed differences between families of a leave-one-domain-out result; one JSON.

Reads a result of ``benchmarks/lodo_ram.py`` (``runs``: one record per family, unseen domain and
seed) and, for every pair of families and every unseen domain (and the per-seed average over
domains), lists the difference ``a - b`` of the metric for each seed where both ran, with its
mean, its sd and whether all seeds agree in sign. Runs of the same seed share the data and the
initial seed, so the paired difference removes the seed-to-seed spread both families share.
Dice is reported in points (x 100). No training, instant::

    python benchmarks/paired_lodo.py benchmarks/results/lodo_ram_v2.json \\
        --out benchmarks/results/lodo_ram_v2_paired.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from _report import emit


def paired(runs: list[dict], domains: list[str], a: str, b: str, metric: str) -> dict:
    """Per-domain (and average) paired differences ``a - b`` over the seeds both have."""
    by = {(r["family"], r["unseen"], r["seed"]): r[metric] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    scale = 100.0 if metric == "dice" else 1.0
    out = {}
    for dom in [*domains, "avg"]:
        diffs, used = [], []
        for s in seeds:
            doms = domains if dom == "avg" else [dom]
            if all((a, d, s) in by and (b, d, s) in by for d in doms):
                diffs.append(scale * float(np.mean([by[(a, d, s)] - by[(b, d, s)] for d in doms])))
                used.append(s)
        if diffs:
            out[dom] = {
                "seeds": used,
                "diff": [round(x, 2) for x in diffs],
                "mean": round(float(np.mean(diffs)), 2),
                "sd": round(float(np.std(diffs)), 2),
                "same_sign": bool(all(x > 0 for x in diffs) or all(x < 0 for x in diffs)),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="JSON written by benchmarks/lodo_ram.py")
    ap.add_argument("--metrics", nargs="+", default=["dice", "asd"])
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    data = json.loads(Path(args.result).read_text(encoding="utf-8"))
    runs, domains = data["runs"], list(data["setup"]["domains"])
    families = list(dict.fromkeys(r["family"] for r in runs))
    result = {
        "benchmark": "paired_lodo",
        "source": Path(args.result).name,
        "note": "a - b per seed (same data and seed); dice in points, asd in pixels",
        "pairs": {
            f"{a} - {b}": {m: paired(runs, domains, a, b, m) for m in args.metrics}
            for b, a in itertools.combinations(families, 2)
        },
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
