"""Record whether each shipped model predicts with flip test-time augmentation by default.

    python scripts/record_tta.py --results SELECT.json [--margin 0.005]

``SELECT.json`` holds two ``benchmarks/generalization.py`` runs labelled ``select-tta-off`` and
``select-tta-on`` (``--tta off`` / ``--tta on``), made on *selection tiles* of the held-out
renderer's styles: tile seeds 100 and 101, disjoint from the evaluation tiles (seeds 0-2) that
docs/generalization.md reports. A model gets ``inference.tta = true`` in its manifest when TTA
raises its mean held-out Dice by more than ``--margin`` and lowers none of its task's other
metrics (AJI, PQ; clDice) by more than ``--margin``; otherwise false (4x the forward passes are
not paid for nothing). ``inference.tta_evidence`` says why. Weights are untouched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dgseg.core.bundle_index import shipped_dir
from napari_dgseg.core.evaluation_record import record_in_manifest, summarize_generalization


def decide(off: dict[str, float], on: dict[str, float], margin: float) -> bool:
    """TTA on: Dice up by more than ``margin`` and no other metric down by more than it."""
    if on["dice"] - off["dice"] <= margin:
        return False
    return all(on[k] - off[k] >= -margin for k in off if k != "dice")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--margin", type=float, default=0.005)
    args = ap.parse_args()
    runs = json.loads(Path(args.results).read_text())["runs"]
    if not {"select-tta-off", "select-tta-on"} <= set(runs):
        raise SystemExit(f"{args.results} needs runs select-tta-off and select-tta-on; it has "
                         f"{', '.join(runs)}")
    models = {m for task in runs["select-tta-off"]["tasks"].values() for m in task["cells"]}
    for model in sorted(models - {"classical"}):
        off = summarize_generalization(runs["select-tta-off"], model)
        on = summarize_generalization(runs["select-tta-on"], model)
        if off is None or on is None:
            continue
        choice = decide(off["mean"], on["mean"], args.margin)
        evidence = ("selection tiles of the held-out styles (seeds 100-101), mean "
                    + ", ".join(f"{k} {off['mean'][k]:.3f} -> {on['mean'][k]:.3f}"
                                for k in off["mean"]) + " with TTA")
        record_in_manifest(shipped_dir() / f"{model}.dgseg", "inference",
                           {"tta": choice, "tta_evidence": evidence})
        print(json.dumps({"model": model, "tta": choice, "off": off["mean"], "on": on["mean"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
