"""Record, in a bundle, the share of its object-size range inside which an estimate is not applied.

    python scripts/record_scale_tolerance.py --results benchmarks/results/scale_tolerance.json \
        [--to BUNDLE ...]

``--results`` is ``benchmarks/scale_approach.py --study tolerance``'s merged result (or its
one-sided ``--sides`` replay, whose variant is recorded as it is): the model it measured, segmented in the loop on the training renderer's randomly resized and degraded tiles
under each share, and the share its rule (fixed before the run) chose. That share goes into the
model's manifest as ``inference.estimate_tolerance_share`` with ``estimate_tolerance_evidence``
(the mean changes it was chosen by); inference reads it through
:func:`napari_dgseg.core.scale.bundle_scale`. ``--to`` names the bundles to write (default: the
shipped bundle of the measured model). Weights are untouched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dgseg.core.bundle_index import shipped_dir
from napari_dgseg.core.evaluation_record import record_in_manifest


def evidence(result: dict) -> str:
    """One line: where the share was measured and what each share changed."""
    parts = []
    for name, per in result["summary"].items():
        moves = ", ".join(f"share {v}: Dice {c['mean_dice_change']:+.4f} AJI {c['mean_aji_change']:+.4f}"
                          for v, c in per.items() if c["factor_changed"])
        parts.append(f"{name} set ({next(iter(per.values()))['tiles']} tiles) {moves}")
    return (f"benchmarks/scale_approach.py --study tolerance, {result['model']} on training-renderer "
            f"tiles resized and degraded at random, mean change against share 1: " + "; ".join(parts))


def sides_evidence(result: dict) -> str:
    """One line for a one-sided replay (``scale_approach.py --sides``)."""
    parts = [f"{name} set ({c['tiles']} tiles) Dice {c['mean_dice_change']:+.4f} AJI "
             f"{c['mean_aji_change']:+.4f}" for name, c in result["sets"].items()]
    return (f"benchmarks/scale_approach.py --sides: share {result['variant']} (shrinking, "
            "enlarging side) on training-renderer tiles resized and degraded at random, mean "
            "change against share 1: " + "; ".join(parts) + "; fresh training-renderer tiles at "
            "their own scale unchanged (benchmarks/training_domains.py)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--to", nargs="+", help="bundle paths (default: the measured shipped model)")
    args = ap.parse_args()
    result = json.loads(Path(args.results).read_text())
    if result.get("study") == "tolerance-sides":
        share: float | list[float] = [float(v) for v in result["variant"]]
        why = sides_evidence(result)
    elif result.get("study") == "tolerance" and "chosen" in result:
        share, why = float(result["chosen"]), evidence(result)
    else:
        raise SystemExit(f"{args.results} is not a merged scale_approach.py --study tolerance "
                         "result or a --sides replay")
    targets = args.to or [str(shipped_dir() / f"{result['model']}.dgseg")]
    for target in targets:
        record_in_manifest(target, "inference", {"estimate_tolerance_share": share,
                                                 "estimate_tolerance_evidence": why})
        print(json.dumps({"bundle": target, "estimate_tolerance_share": share}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
