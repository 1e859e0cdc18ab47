"""Compare bundles on fresh validation tiles of the *training* renderer's domains (not held out).

The check used to decide between two candidate trainings of one shipped model (for example a
warm-started continuation against its parent) without looking at the evaluation sets: the
held-out renderer and the real images stay for ``benchmarks/generalization.py``. DCIN ``none``
unless ``--dcin`` names other modes, and ``--rescale auto`` unless ``--rescale`` names others
(each model is then run once per combination).
Nuclei: Dice, AJI, PQ per domain; vessels: Dice and clDice.

    python benchmarks/training_domains.py --data /work/data/val-nuclei --models nuclei-hovernet new.dgseg

Prints JSON (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit, load_average, machine_state  # noqa: E402
from recipe_selection import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of per-domain folders (dgseg synth)")
    ap.add_argument("--models", nargs="+", required=True, help="bundle names or paths")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dcin", nargs="+", default=["none"], help="DCIN modes to compare")
    ap.add_argument("--rescale", nargs="+", default=["auto"], help="rescale modes to compare")
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()

    import torch

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.data.datasets import load_folder

    torch.set_num_threads(args.threads)
    load_before = load_average()
    val = {d.name: load_folder(d) for d in sorted(Path(args.data).iterdir()) if d.is_dir()}
    results = {}
    for name in args.models:
        bundle = load_bundle(name)
        task = "vessels" if bundle.manifest.get("task") == "vessels" else "nuclei"
        for mode in args.dcin:
            for rescale in args.rescale:
                key = name + (f" [dcin {mode}]" if args.dcin != ["none"] else "") + (
                    f" [rescale {rescale}]" if args.rescale != ["auto"] else "")
                results[key] = evaluate(bundle, val, task, dcin=mode, rescale=rescale)
                print(json.dumps({key: results[key]}), file=sys.stderr, flush=True)
    report = {"benchmark": "training_domains", "data": args.data, "dcin": args.dcin, "rescale": args.rescale,
              "tiles_per_domain": {d: len(s) for d, s in val.items()}, "results": results,
              "machine": machine_state(load_before)}
    emit(report, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
