"""The drift guard's baseline in ``norm="dual"`` runs: the parent's signals or the target-statistics model's.

Issue 11. In a ``dual`` run every scored checkpoint carries the target BatchNorm statistics, and
the change of statistics alone lowers certainty and agreement (on ``lymphoid-dense`` the
iteration-20 checkpoint, Dice 0.835 against the parent's 0.526, was stopped by the guard). The
guard (``selection.GUARD``) compares them with the *parent's*, which has the source statistics.
The variants, fixed before any held-out number of this study was read (``prior_match``, the
margin and the degenerate check unchanged; the parent, checkpoint 0, always a candidate):

``parent baseline``
    The current rule (as ``benchmarks/dual_norm_decision.py`` replays it).
``target-stats baseline``
    The guard compares each checkpoint's certainty/agreement with those of the target-statistics
    model (the parent with target statistics, the same normalisation as every ``dual``
    checkpoint; stored as the stats run's checkpoint 1, ``stats_checkpoints[1]``;
    ``stats_checkpoints[0]`` is the parent itself).
``target-stats baseline + candidate``
    As above, and the target-statistics model is a candidate too (between the parent and the
    first MaNi checkpoint; not drifted against itself, but the degenerate check applies).

The decision rule is ``dual_norm_decision.decide``'s, against ``frozen`` (its stored run with the
default guard), on the 8 selection runs only: ``dual`` with a variant becomes the default only if
its mean target Dice gain over the parent is higher than ``frozen``'s, its worst paired target
loss is at most 0.01 Dice and 0.01 AJI, and its worst source Dice loss at most 0.01. The
held-out runs are evaluated with the same numbers afterwards (``--evaluation``: no decision).

    python benchmarks/dual_guard.py \\
        benchmarks/results/mani_adaptation_nuclei-hovernet_selection.json \\
        benchmarks/results/mani_adaptation_nuclei-hovernet_selection_dual.json \\
        --out benchmarks/results/dual_guard_selection.json

Prints JSON: per variant the paired gains (mean / worst), the checks and the verdict, per run
the returned checkpoint and its paired change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from dual_norm_decision import LIMIT, decide  # noqa: E402
from mani_adaptation import summarise  # noqa: E402

from napari_dgseg.core.train.selection import GUARD, select_checkpoint  # noqa: E402

#: The variants, in the order they were fixed (see the module docstring).
VARIANTS = ("parent baseline", "target-stats baseline", "target-stats baseline + candidate")
#: The four paired changes the rule looks at.
KEYS = ("target_dice", "target_aji", "source_dice", "source_aji")


def choose_dual(run: dict[str, Any], variant: str) -> tuple[dict[str, Any], Any]:
    """The row ``variant`` returns for a stored ``dual`` run, and its iteration (``stats``: the
    target-statistics model)."""
    cps = run["checkpoints"]
    stats_model = dict(run["stats_checkpoints"][1], iteration="stats")
    if variant == "parent baseline":
        i = select_checkpoint(cps, guard=GUARD)[0]
        return cps[i], cps[i]["iteration"]
    if variant == "target-stats baseline":
        i = select_checkpoint(cps, guard=GUARD, baseline=stats_model)[0]
        return cps[i], cps[i]["iteration"]
    if variant == "target-stats baseline + candidate":
        rows = [cps[0], stats_model, *cps[1:]]
        i = select_checkpoint(rows, guard=GUARD, baseline=stats_model)[0]
        return rows[i], rows[i]["iteration"]
    raise SystemExit(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def gains(row: dict[str, Any], parent: dict[str, Any]) -> dict[str, float]:
    """Paired change of ``row`` against ``parent``: target/source Dice and AJI."""
    return {f"{w}_{k}": round(row[w][k] - parent[w][k], 4)
            for w in ("target", "source") for k in ("dice", "aji")}


def table_stats(per_run: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst of every paired change over the runs, and how often the parent came back."""
    g = {k: np.array([r[k] for r in per_run.values()]) for k in KEYS}
    return {k: {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4)}
            for k, v in g.items()} | {
        "returned_parent": sum(r["chosen"] == 0 for r in per_run.values()),
        "runs_worse_than_parent_by_more_than_limit": sum(
            r["target_dice"] < -LIMIT for r in per_run.values())}


def checks(dual: dict[str, Any], frozen: dict[str, Any]) -> dict[str, bool]:
    """``dual_norm_decision``'s four conditions on two :func:`table_stats` results."""
    return {
        "mean target Dice gain above frozen's": dual["target_dice"]["mean"] > frozen["target_dice"]["mean"],
        f"worst target Dice loss <= {LIMIT}": dual["target_dice"]["min"] >= -LIMIT,
        f"worst target AJI loss <= {LIMIT}": dual["target_aji"]["min"] >= -LIMIT,
        f"worst source Dice loss <= {LIMIT}": dual["source_dice"]["min"] >= -LIMIT,
    }


def study(frozen: dict[str, Any], dual: dict[str, Any]) -> dict[str, Any]:
    """Every variant on the paired runs of ``frozen`` and ``dual`` (``mani_adaptation.py`` results).

    The pairing checks are ``dual_norm_decision.decide``'s (it is called, and the parent-baseline
    variant must reproduce its numbers).
    """
    reference = decide(json.loads(json.dumps(frozen)), json.loads(json.dumps(dual)))
    fz, du = summarise(frozen), summarise(dual)
    runs = {(r["domain"], r["seed"]): r for r in du["runs"]}
    fruns = {(r["domain"], r["seed"]): r for r in fz["runs"]}
    keys = sorted(runs)
    label = {k: f"{k[0]} seed {k[1]}" for k in keys}
    frozen_rows = {}
    for k in keys:
        r = fruns[k]
        i = select_checkpoint(r["checkpoints"], guard=GUARD)[0]
        frozen_rows[label[k]] = gains(r["checkpoints"][i], r["parent"]) | {
            "chosen": r["checkpoints"][i]["iteration"]}
    frozen_stats = table_stats(frozen_rows)
    out: dict[str, Any] = {"runs": [label[k] for k in keys], "guard": GUARD.name,
                           "frozen": {"summary": frozen_stats, "per_run": frozen_rows},
                           "variants": {}}
    for variant in VARIANTS:
        per_run = {}
        for k in keys:
            r = runs[k]
            row, it = choose_dual(r, variant)
            per_run[label[k]] = gains(row, r["parent"]) | {"chosen": it}
        s = table_stats(per_run)
        c = checks(s, frozen_stats)
        out["variants"][variant] = {"summary": s, "checks": c, "adopt_dual": all(c.values()),
                                    "per_run": per_run}
    base = out["variants"]["parent baseline"]["summary"]
    for k in KEYS:  # the replay agrees with dual_norm_decision's (same code path, same records)
        if base[k] != reference["dual"][k] or frozen_stats[k] != reference["frozen"][k]:
            raise SystemExit(f"replay disagrees with dual_norm_decision on {k}; check the records")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("frozen", help="mani_adaptation.py result with --norm frozen")
    p.add_argument("dual", help="mani_adaptation.py result with --norm dual, same settings")
    p.add_argument("--evaluation", action="store_true",
                   help="held-out runs: report the numbers, no decision is taken on them")
    p.add_argument("--out", default=None, help="also write the JSON there")
    args = p.parse_args()
    result = study(json.loads(Path(args.frozen).read_text()),
                   json.loads(Path(args.dual).read_text()))
    result["role"] = ("evaluation only (held-out runs; the decision was taken on the selection "
                      "runs)" if args.evaluation else "decision (selection runs)")
    if args.evaluation:
        for v in result["variants"].values():
            v["adopt_dual"] = None  # no decision on evaluation runs
    result["command"] = "python benchmarks/dual_guard.py " + " ".join(sys.argv[1:])
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
