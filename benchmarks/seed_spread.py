"""Training-seed spread of a default model against the classical baseline, per style.

    python benchmarks/seed_spread.py --model vessels-ram-sgcg \\
        --run benchmarks/results/generalization.json:final-indomain \\
        --run benchmarks/results/generalization_training_seeds.json:vessels-seed-100 \\
        --run benchmarks/results/generalization_training_seeds.json:vessels-seed-200 \\
        --out benchmarks/results/seed_spread_vessels.json

Each ``--run FILE:LABEL`` is a ``benchmarks/generalization.py`` run on the same evaluation tiles
(seeds 0-2) of one training replicate of the model (the shipped bundle, or one trained with
``SEED=S OUT=... bash scripts/train_shipped.sh`` and given the shipped bundle's measured
inference choices by ``scripts/adopt_inference_records.py``); the replicate's row is the one
method of the run that is not the classical baseline, unless it is named ``--model``. For every
style and metric: each replicate's mean, their mean and standard deviation over training seeds,
the classical baseline, and the smallest margin over the replicates. Prints JSON with a Markdown
table (``markdown``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

CLASSICAL = "classical"
METRICS = {"nuclei": ("dice", "aji"), "vessels": ("dice", "cldice")}


def replicate_cells(path: str, label: str, model: str) -> tuple[str, dict, dict, dict]:
    """``(task, model cells, classical cells, columns)`` of one run."""
    run = json.loads(Path(path).read_text())["runs"][label]
    (task, table), = run["tasks"].items()
    names = [m for m in table["methods"] if m != CLASSICAL]
    name = model if model in names else names[0] if len(names) == 1 else None
    if name is None:
        raise SystemExit(f"{path}:{label}: several models ({names}); the run must hold {model!r}")
    return task, table["cells"][name], table["cells"][CLASSICAL], table["columns"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the shipped model's name (for the report)")
    ap.add_argument("--run", action="append", required=True, help="FILE:LABEL, one per replicate")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    reps = [replicate_cells(*spec.rsplit(":", 1), args.model) for spec in args.run]
    task, _, classical, columns = reps[0]
    metrics = METRICS[task]
    styles = [c for c, info in columns.items() if info["renderer"] in ("training", "heldout")]
    rows = []
    for style in styles:
        row: dict[str, Any] = {"style": style, "renderer": columns[style]["renderer"]}
        for m in metrics:
            vals = np.array([cells[style][m]["mean"] for _, cells, _, _ in reps], float)
            base = float(classical[style][m]["mean"])
            row[m] = {"replicates": [round(float(v), 4) for v in vals],
                      "mean": round(float(vals.mean()), 4), "sd": round(float(vals.std()), 4),
                      "classical": round(base, 4),
                      "smallest_margin": round(float(vals.min() - base), 4)}
        rows.append(row)
    held = [r for r in rows if r["renderer"] == "heldout"]
    lines = ["| style | renderer | " + " | ".join(
        f"{m} per seed | {m} mean ± sd (classical) | smallest {m} margin" for m in metrics) + " |",
             "|---|---|" + "---|---|---|" * len(metrics)]
    for r in rows:
        cells = []
        for m in metrics:
            c = r[m]
            cells += [" / ".join(f"{v:.3f}" for v in c["replicates"]),
                      f"{c['mean']:.3f} ± {c['sd']:.3f} ({c['classical']:.3f})",
                      f"{c['smallest_margin']:+.3f}"]
        lines.append(f"| `{r['style']}` | {r['renderer']} | " + " | ".join(cells) + " |")
    result = {
        "benchmark": "seed_spread", "model": args.model, "task": task, "runs": args.run,
        "rows": rows,
        "heldout_mean": {m: {"mean": round(float(np.mean([r[m]["mean"] for r in held])), 4),
                             "per_replicate": [round(float(np.mean([r[m]["replicates"][i]
                                                                    for r in held])), 4)
                                               for i in range(len(reps))],
                             "classical": round(float(np.mean([r[m]["classical"] for r in held])), 4)}
                         for m in metrics},
        "every_replicate_beats_classical_by_0.02_dice_on_every_heldout_style":
            all(r["dice"]["smallest_margin"] >= 0.02 for r in held),
        "markdown": "\n".join(lines),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
