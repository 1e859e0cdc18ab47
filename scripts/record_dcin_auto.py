"""Record what DCIN ``auto`` means for each default model, from a selection run.

    python scripts/record_dcin_auto.py --results SELECT.json [--margin 0.005]

``SELECT.json`` holds ``benchmarks/generalization.py`` runs labelled ``select-<task>-<mode>``
(modes ``none`` and ``full``), made on *selection tiles* of the held-out renderer's styles: tile
seeds 100 and 101, disjoint from the evaluation tiles (seeds 0-2) that docs/generalization.md
reports. For every model in those runs the mode with the higher mean held-out Dice is written
to the bundle's manifest as ``dcin.auto`` (``full`` is then run behind the guard, as ``auto``
always is); within ``--margin`` the cheaper ``none`` is kept. ``dcin.auto_evidence`` says why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dgseg.core.bundle_index import shipped_dir
from napari_dgseg.core.evaluation_record import record_in_manifest, summarize_generalization


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--margin", type=float, default=0.005)
    args = ap.parse_args()
    runs = json.loads(Path(args.results).read_text())["runs"]
    scores: dict[str, dict[str, float]] = {}
    for label, run in runs.items():
        if not label.startswith("select-"):
            continue
        mode = label.rsplit("-", 1)[-1]
        for task in run.get("tasks", {}).values():
            for model in task.get("cells", {}):
                if model == "classical":
                    continue
                rec = summarize_generalization(run, model)
                if rec is not None:
                    scores.setdefault(model, {})[mode] = rec["mean"]["dice"]
    for model, by_mode in sorted(scores.items()):
        if set(by_mode) != {"none", "full"}:
            continue
        gain = by_mode["full"] - by_mode["none"]
        choice = "full" if gain > args.margin else "none"
        evidence = (f"selection tiles of the held-out styles (seeds 100-101): mean Dice none "
                    f"{by_mode['none']:.3f}, full {by_mode['full']:.3f}")
        record_in_manifest(shipped_dir() / f"{model}.dgseg", "dcin",
                           {"auto": choice, "auto_evidence": evidence})
        print(json.dumps({"model": model, "auto": choice, "none": by_mode["none"],
                          "full": by_mode["full"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
