"""Decide whether an adaptation option replaces the default of ``dgseg adapt`` (first: ``norm="dual"``).

The rule was fixed before the runs (issue 11, domain-specific statistics during MaNi; DSBN:
Chang, You, Seo, Kwak & Han, "Domain-Specific Batch Normalization for Unsupervised Domain
Adaptation", CVPR 2019), on the selection domains only. Paired with the parent per run (same
domain, seed and tiles), the model each mode returns by default ("MaNi + selection", the current
selection rule re-applied to the stored checkpoints by ``mani_adaptation.summarise``) is
compared; ``dual`` is adopted only if

* its mean target Dice gain is higher than ``frozen``'s,
* its worst target loss is at most :data:`LIMIT` Dice and at most :data:`LIMIT` AJI, and
* its worst source Dice loss is at most :data:`LIMIT`.

    python benchmarks/dual_norm_decision.py \\
        benchmarks/results/mani_adaptation_nuclei-hovernet_selection.json \\
        benchmarks/results/mani_adaptation_nuclei-hovernet_selection_dual.json

Prints the paired gains of both modes and the verdict as JSON (``--out`` also writes it).
``--names`` labels the two results (default ``frozen dual``); the same rule decides any option
measured the same way, e.g. ``--names online parent`` for ``--pseudo-labels parent``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from mani_adaptation import summarise  # noqa: E402

#: Largest loss against the parent the rule tolerates (Dice or AJI).
LIMIT = 0.01
#: Settings two results must share to be paired run by run.
SHARED = ("iters", "n_target", "n_test", "n_source_test", "lr", "mi_weight", "source_augment",
          "pseudo_threshold", "freeze_encoder")


def paired(result: dict, method: str = "mani_selected", guard: Any = None) -> dict:
    """Per run ``(domain, seed)``: ``method``'s gain over the parent, target and source
    (``guard``: the selection rule re-applied to the stored checkpoints; default the shipped one)."""
    out = {}
    for run in summarise(result, guard)["runs"]:
        out[(run["domain"], run["seed"])] = {
            f"{where}_{k}": round(run[method][where][k] - run["parent"][where][k], 4)
            for where in ("target", "source") for k in ("dice", "aji")
        } | {"chosen_iteration": run["chosen_iteration"]}
    return out


def decide(frozen: dict, dual: dict, names: tuple[str, str] = ("frozen", "dual"),
           guard: Any = None) -> dict:
    """The fixed rule on two results of ``mani_adaptation.py``: the default (``frozen``
    BatchNorm at first) and a candidate (``dual``), labelled ``names`` in the verdict.
    ``guard``: the checkpoint-selection rule applied to both (default the shipped
    ``selection.GUARD``; a recorded decision is replayed with the guard it was made with).

    Raises
    ------
    SystemExit
        If the two results cannot be paired (other model, settings or runs).
    """
    if frozen["model_sha256"] != dual["model_sha256"]:
        raise SystemExit("the two results adapted different parents; rerun one of them")
    diff = [k for k in SHARED if frozen["settings"].get(k) != dual["settings"].get(k)]
    if diff:
        raise SystemExit(f"the two results differ in {diff}; rerun with the same settings")
    f, d = paired(frozen, guard=guard), paired(dual, guard=guard)
    runs = sorted(set(f) & set(d))
    if not runs or set(d) - set(f):
        raise SystemExit("the dual runs are not all in the frozen result; rerun frozen on them")
    for key in runs:  # same tiles, same parent: the parents' scores must agree
        rf = next(r for r in frozen["runs"] if (r["domain"], r["seed"]) == key)
        rd = next(r for r in dual["runs"] if (r["domain"], r["seed"]) == key)
        if rf["parent"] != rd["parent"]:
            raise SystemExit(f"run {key}: the parents score differently; the runs are not paired")

    def stats(table: dict) -> dict:
        g = {k: np.array([table[r][k] for r in runs]) for k in
             ("target_dice", "target_aji", "source_dice", "source_aji")}
        return {k: {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4)}
                for k, v in g.items()} | {
            "returned_parent": sum(table[r]["chosen_iteration"] == 0 for r in runs)}

    sf, sd = stats(f), stats(d)
    base, cand = names
    checks = {
        f"mean target Dice gain above {base}'s": sd["target_dice"]["mean"] > sf["target_dice"]["mean"],
        f"worst target Dice loss <= {LIMIT}": sd["target_dice"]["min"] >= -LIMIT,
        f"worst target AJI loss <= {LIMIT}": sd["target_aji"]["min"] >= -LIMIT,
        f"worst source Dice loss <= {LIMIT}": sd["source_dice"]["min"] >= -LIMIT,
    }
    return {
        "runs": [f"{dom} seed {s}" for dom, s in runs],
        base: sf,
        cand: sd,
        "per_run": {f"{dom} seed {s}": {base: f[(dom, s)], cand: d[(dom, s)]}
                    for dom, s in runs},
        "checks": checks,
        f"adopt_{cand}": all(checks.values()),
        "selection_guard": guard_name(guard),
    }


def guard_name(guard: Any = None) -> str:
    """Name of the selection rule a decision used (the shipped one when ``guard`` is None)."""
    from napari_dgseg.core.train.selection import GUARD

    return (guard or GUARD).name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("frozen", help="mani_adaptation.py result with --norm frozen (the default)")
    p.add_argument("dual", help="mani_adaptation.py result with --norm dual, same settings")
    p.add_argument("--out", default=None, help="also write the verdict JSON there")
    p.add_argument("--names", nargs=2, default=["frozen", "dual"], metavar=("DEFAULT", "CANDIDATE"),
                   help="labels of the two results in the verdict")
    args = p.parse_args()
    verdict = decide(json.loads(Path(args.frozen).read_text()),
                     json.loads(Path(args.dual).read_text()), tuple(args.names))
    verdict["command"] = "python benchmarks/dual_norm_decision.py " + " ".join(sys.argv[1:])
    text = json.dumps(verdict, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
