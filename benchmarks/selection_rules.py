"""Drift guards for MaNi's label-free checkpoint selection, replayed on stored checkpoints (issue 11).

``dgseg adapt`` scores the parent (checkpoint 0) and a checkpoint every 20 iterations on held-out
unlabelled target tiles and returns the best by ``prior_match``. On the held-out styles this once
returned a drifted checkpoint (``ho-dark-blue`` seed 7, -0.222 Dice). The adaptation benchmark
(``benchmarks/mani_adaptation.py``) stored every checkpoint's label-free signals *and* its true
target/source Dice and AJI, so candidate selection rules can be replayed offline, with the
production code (:func:`napari_dgseg.core.train.selection.select_checkpoint`), no training.

Candidate rules (a :class:`~napari_dgseg.core.train.selection.DriftGuard` each, fixed before any
evaluation file was read): argmax ``prior_match`` over the eligible checkpoints (degenerate ones
never eligible, the parent always), with

* margin ``m`` in {0, 0.005, 0.01}: a checkpoint replaces the parent only if its ``prior_match``
  beats the parent's by more than ``m``;
* certainty drop ``c`` in {none, 0.02, 0.05, 0.1}: ineligible if its certainty fell more than
  ``c`` below the parent's (drifting checkpoints lose certainty, 0.92 -> 0.5-0.6);
* agreement drop ``a`` in {none, 0.01, 0.02}: likewise for agreement under perturbations;
* ``stop`` in {off, on}: with it, nothing after the first drifted checkpoint is eligible
  (early stopping at the first sign of drift).

``m0+c-+a-`` is the rule before this study. The choice is made on the **selection** runs only
(``mani_adaptation_nuclei-hovernet_selection.json``: 4 shifts of the training renderer x 2 seeds)
by a criterion stated before running:

1. *safe*: on every selection run the returned checkpoint loses at most 0.01 target Dice and
   0.01 target AJI to the parent (0.01: what the acceptance test and the issue count as "worse
   than the parent") and at most 0.01 source Dice;
2. among safe rules the highest mean paired target-Dice gain (4 decimals, as recorded);
3. ties: the higher worst paired change (min of target Dice and AJI), then the tighter guard
   (stop on, smaller ``c``, smaller ``a``, larger ``m``).

If no rule is safe the unguarded rule stays. Evaluation only, reported and never chosen on: the
held-out renderer's styles, seeds 3-5 and 6-8 (9 runs each), and, as extra out-of-sample checks
of the guard, the older records with checkpoints (the parent before its retraining,
``nuclei-hovernet`` seeds 0-3, on which ``prior_match`` itself was chosen; ``nuclei-unet``).

Per rule and set: mean / worst paired gain over the parent (same run) in target Dice and AJI, the
number of runs worse than the parent by more than 0.01 target Dice, the worst source-Dice change,
and how often the parent is returned. Reference rows (not candidates): the last iterate and the
oracle (the checkpoint with the best true target Dice).

Reproduce::

    python benchmarks/selection_rules.py --out benchmarks/results/selection_rules.json

``--selection FILE...`` and ``--heldout FILE...`` (result files under ``benchmarks/results``)
replace the default sets, e.g. to re-derive the guard for a retrained parent from its own
selection runs (``selection_rules_long.json``, docs/hovernet-mani.md).

Stdout is one JSON object; the Markdown table goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

from napari_dgseg.core.train.selection import (  # noqa: E402
    GUARD,
    UNGUARDED,
    DriftGuard,
    select_checkpoint,
)

RESULTS = Path(__file__).resolve().parent / "results"
#: (set name, file, role). Only ``selection`` is used to choose.
SETS: tuple[tuple[str, str, str], ...] = (
    ("selection", "mani_adaptation_nuclei-hovernet_selection.json", "choose"),
    ("heldout_seeds3-5", "mani_adaptation_nuclei-hovernet_heldout.json", "evaluate"),
    ("heldout_seeds6-8", "mani_adaptation_nuclei-hovernet_heldout_seeds6-8.json", "evaluate"),
    ("old_parent_seeds0-2", "mani_adaptation_nuclei-hovernet.json", "evaluate (extra)"),
    ("old_parent_seed3", "mani_adaptation_nuclei-hovernet_seed3.json", "evaluate (extra)"),
    ("nuclei-unet", "mani_adaptation_nuclei-unet.json", "evaluate (extra)"),
)
#: Pooled sets (evaluation only): both held-out sets; all older records.
POOLS = {"heldout_all": ("heldout_seeds3-5", "heldout_seeds6-8"),
         "older_all": ("old_parent_seeds0-2", "old_parent_seed3", "nuclei-unet")}
MARGINS = (0.0, 0.005, 0.01)
CERTAINTY_DROPS = (None, 0.02, 0.05, 0.1)
AGREEMENT_DROPS = (None, 0.01, 0.02)
STOPS = (False, True)
#: Largest loss to the parent a safe rule may show on a selection run (target Dice, AJI; source Dice).
TOLERANCE = 0.01
#: Rules the Markdown table shows (fixed with the grid; the JSON holds all of them).
DISPLAY = ("m0+c-+a-", "m0.005+c-+a-", "m0.01+c-+a-", "m0+c0.1+a-", "m0+c0.05+a-",
           "m0+c0.02+a-", "m0+c-+a0.02", "m0+c-+a0.01", "m0+c0.05+a-+stop", "m0+c0.05+a0.02+stop")


def grid() -> list[DriftGuard]:
    """Every candidate guard of the grid (the unguarded rule first)."""
    return [DriftGuard(margin=m, certainty_drop=c, agreement_drop=a, stop_at_drift=s)
            for m, c, a, s in itertools.product(MARGINS, CERTAINTY_DROPS, AGREEMENT_DROPS, STOPS)]


def load_runs(name: str) -> list[dict[str, Any]]:
    """The runs of one stored result, each with ``checkpoints`` (the parent first)."""
    data = json.loads((RESULTS / name).read_text())
    runs = [r for r in data["runs"] if r.get("checkpoints")]
    for r in runs:  # runs recorded before prior_match existed: as mani_adaptation.summarise
        ref = r["stats_checkpoints"][1]["foreground"]
        for c in r["checkpoints"]:
            c.setdefault("foreground_reference", ref)
            c.setdefault("prior_match", round(-abs(c["foreground"] - ref) / max(ref, 1e-3), 4))
    return runs


def _gains(run: Mapping[str, Any], i: int) -> dict[str, float]:
    cps = run["checkpoints"]
    return {f"{w}_{k}": round(cps[i][w][k] - cps[0][w][k], 4)
            for w in ("target", "source") for k in ("dice", "aji")}


def evaluate(runs: Sequence[Mapping[str, Any]], pick: Callable[[Sequence[Mapping]], int]) -> dict:
    """Paired gains over the parent of the checkpoint ``pick`` returns, summarised over ``runs``."""
    per_run, g = [], []
    for r in runs:
        i = pick(r["checkpoints"])
        gain = _gains(r, i)
        g.append([gain["target_dice"], gain["target_aji"], gain["source_dice"]])
        per_run.append({"domain": r["domain"], "seed": r["seed"],
                        "iteration": r["checkpoints"][i]["iteration"], **gain})
    a = np.array(g)
    return {
        "runs": len(runs),
        "target_dice": {"mean": round(float(a[:, 0].mean()), 4), "worst": round(float(a[:, 0].min()), 4)},
        "target_aji": {"mean": round(float(a[:, 1].mean()), 4), "worst": round(float(a[:, 1].min()), 4)},
        "source_dice_worst": round(float(a[:, 2].min()), 4),
        "worse_than_parent_by_0.01_dice": int((a[:, 0] < -TOLERANCE).sum()),
        "returns_parent": sum(p["iteration"] == 0 for p in per_run),
        "per_run": per_run,
    }


def _safe(s: Mapping[str, Any]) -> bool:
    return (s["target_dice"]["worst"] >= -TOLERANCE and s["target_aji"]["worst"] >= -TOLERANCE
            and s["source_dice_worst"] >= -TOLERANCE)


def _rank_key(guard: DriftGuard, s: Mapping[str, Any]) -> tuple:
    """Sort key of the stated criterion (smallest first = chosen)."""
    worst = min(s["target_dice"]["worst"], s["target_aji"]["worst"])
    c = np.inf if guard.certainty_drop is None else guard.certainty_drop
    a = np.inf if guard.agreement_drop is None else guard.agreement_drop
    return (-s["target_dice"]["mean"], -worst, not guard.stop_at_drift, c, a, -guard.margin)


def choose_rule(guards: Sequence[DriftGuard], stats: Mapping[str, Mapping]) -> tuple[DriftGuard, str]:
    """The rule the stated criterion picks on the selection runs, and why."""
    safe = [g for g in guards if _safe(stats[g.name])]
    if not safe:
        return UNGUARDED, "no rule is safe on the selection runs: the unguarded rule stays"
    best = min(safe, key=lambda g: _rank_key(g, stats[g.name]))
    return best, (f"{len(safe)} of {len(guards)} rules safe on the selection runs (worst loss "
                  f"<= {TOLERANCE} target Dice and AJI, source Dice); highest mean target-Dice "
                  "gain, ties to the higher worst change, then the tighter guard")


def _cell(s: Mapping[str, Any], aji_mean: bool = False, worse: bool = True) -> str:
    d, a = s["target_dice"], s["target_aji"]
    text = f"{d['mean']:+.3f} / {d['worst']:+.3f}; "
    text += f"{a['mean']:+.3f} / {a['worst']:+.3f}" if aji_mean else f"{a['worst']:+.3f}"
    return text + (f"; {s['worse_than_parent_by_0.01_dice']}" if worse else "")


def table(result: Mapping[str, Any]) -> str:
    """Markdown table: one row per displayed rule (and the reference rows), sets as columns."""
    chosen = result["chosen"]["rule"]
    if any(st["name"] == "heldout_seeds3-5" for st in result["sets"]):
        return _default_table(result, chosen)
    names = [st["name"] for st in result["sets"]] + list(result["pools"])
    n = {k: v["runs"] for k, v in result["rules"][chosen].items() if isinstance(v, dict)}
    heads = " | ".join(f"{k} ({n.get(k, 0)}): Dice mean / worst; AJI mean / worst; worse"
                       for k in names)
    lines = [f"| rule | {heads} | held-out: source Dice worst; parent returned |",
             "|---|" + "---|" * (len(names) + 1)]
    for name in [*dict.fromkeys([*DISPLAY, chosen, GUARD.name]), "last iterate",
                 "oracle (labels)"]:
        row = result["rules"].get(name) or result["reference"][name]
        label = name + (" (chosen)" if name == chosen else "") + \
            (" (shipped)" if name == GUARD.name else "")
        ho = row.get("heldout_all", row["selection"])
        cells = " | ".join(_cell(row[k], aji_mean=True) for k in names)
        lines.append(f"| {label} | {cells} | {ho['source_dice_worst']:+.3f}; "
                     f"{ho['returns_parent']} |")
    return "\n".join(lines)


def _default_table(result: Mapping[str, Any], chosen: str) -> str:
    """The table of the default sets (the study in docs/hovernet-mani.md)."""
    n = {st["name"]: st["runs"] for st in result["sets"]} | {
        k: v["runs"] for k, v in result["rules"][chosen].items() if isinstance(v, dict)}
    lines = [
        f"| rule | selection ({n['selection']}): Dice mean / worst; AJI worst; worse "
        f"| held-out seeds 3-5 ({n['heldout_seeds3-5']}): Dice mean / worst; AJI worst; worse "
        f"| held-out seeds 6-8 ({n['heldout_seeds6-8']}): Dice mean / worst; AJI worst; worse "
        f"| all held-out ({n['heldout_all']}): Dice mean / worst; AJI mean / worst; worse "
        f"| held-out: source Dice worst; parent returned "
        f"| older records ({n['older_all']}): Dice mean / worst; AJI worst; worse |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [*dict.fromkeys([*DISPLAY, chosen]), "last iterate", "oracle (labels)"]:
        row = result["rules"].get(name) or result["reference"][name]
        label = name + (" (chosen)" if name == chosen else "") + \
            (" (before)" if name == UNGUARDED.name else "")
        ho = row["heldout_all"]
        lines.append(
            f"| {label} | {_cell(row['selection'])} | {_cell(row['heldout_seeds3-5'])} "
            f"| {_cell(row['heldout_seeds6-8'])} | {_cell(ho, aji_mean=True)} "
            f"| {ho['source_dice_worst']:+.3f}; {ho['returns_parent']} "
            f"| {_cell(row['older_all'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--selection", nargs="+", metavar="FILE",
                   help="result files (under benchmarks/results) whose runs choose the rule, "
                        "instead of the default set (e.g. runs of a retrained parent)")
    p.add_argument("--heldout", nargs="+", metavar="FILE",
                   help="result files whose runs only evaluate (pooled as heldout_all), instead "
                        "of the default held-out sets")
    args = p.parse_args()

    # (name, result files, role); the default sets hold one file each
    sets = [(name, (f,), role) for name, f, role in SETS]
    if args.selection:
        sets = [("selection", tuple(args.selection), "choose"),
                *(t for t in sets if t[0] != "selection")]
    if args.heldout:
        sets = [t for t in sets if t[2] == "choose"] + [
            (f"heldout_{Path(f).stem.removeprefix('mani_adaptation_')}", (f,), "evaluate")
            for f in args.heldout]
    elif args.selection:
        sets = [t for t in sets if t[2] == "choose" or t[0].startswith("heldout")]
    data = {name: [r for f in files for r in load_runs(f)]
            for name, files, _ in sets if all((RESULTS / f).is_file() for f in files)}
    pools = dict(POOLS)
    if args.heldout:
        pools = {"heldout_all": tuple(n for n, _, _ in sets if n.startswith("heldout_"))}
    for pool, parts in pools.items():
        data[pool] = [r for part in parts for r in data.get(part, [])]
    guards = grid()
    stats = {g.name: {name: evaluate(runs, lambda cps, g=g: select_checkpoint(cps, guard=g)[0])
                      for name, runs in data.items()} for g in guards}
    chosen, why = choose_rule(guards, {k: v["selection"] for k, v in stats.items()})
    reference = {
        "last iterate": {n: evaluate(r, lambda cps: len(cps) - 1) for n, r in data.items()},
        "oracle (labels)": {n: evaluate(r, lambda cps: int(np.argmax(
            [c["target"]["dice"] for c in cps]))) for n, r in data.items()},
    }
    result = {
        "sets": [{"name": n, "file": " + ".join(files), "role": role, "runs": len(data.get(n, []))}
                 for n, files, role in sets],
        "pools": {k: list(v) for k, v in pools.items()},
        "grid": {"margin": MARGINS, "certainty_drop": CERTAINTY_DROPS,
                 "agreement_drop": AGREEMENT_DROPS, "stop_at_drift": STOPS},
        "criterion": (f"safe: worst paired loss on the selection runs <= {TOLERANCE} in target Dice "
                      f"and AJI and <= {TOLERANCE} source Dice; then highest mean target-Dice gain; "
                      "ties: higher worst change, then stop on, smaller certainty drop, smaller "
                      "agreement drop, larger margin; none safe: the unguarded rule"),
        "chosen": {"rule": chosen.name, "guard": chosen.describe(), "why": why,
                   "shipped_default": GUARD.name,
                   "matches_shipped_default": chosen == GUARD},
        "rules": {g.name: {"guard": g.describe(), **stats[g.name]} for g in guards},
        "reference": reference,
    }
    print(table(result), file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
