"""Write the held-out scores of a generalization run into the shipped bundles' manifests.

    python scripts/record_heldout_metrics.py [--run after] [--results benchmarks/results/generalization.json]

For every shipped bundle with a row in the run, stores ``evaluation.heldout``
(:func:`napari_dgseg.core.evaluation_record.summarize_generalization`) and re-saves the bundle
atomically; weights are untouched. Prints one JSON line per bundle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dgseg.core.bundle_index import shipped_dir
from napari_dgseg.core.evaluation_record import record_evaluation, summarize_generalization

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "generalization.json"))
    ap.add_argument("--run", default="after", help="label of the run to record (default after)")
    args = ap.parse_args()
    runs = json.loads(Path(args.results).read_text())["runs"]
    if args.run not in runs:
        raise SystemExit(f"no run {args.run!r} in {args.results}; runs: {', '.join(runs)}")
    run = runs[args.run]
    for path in sorted(shipped_dir().glob("*.dgseg")):
        record = summarize_generalization(run, path.name[: -len(".dgseg")])
        if record is None:
            continue
        record_evaluation(path, record)
        print(json.dumps({"bundle": path.name, "mean": record["mean"],
                          "baseline_mean": record["baseline_mean"],
                          "wins": f"{record['wins']}/{record['styles_total']}"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
