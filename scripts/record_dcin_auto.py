"""Record what DCIN ``auto`` means for each default model, from a selection run.

    python scripts/record_dcin_auto.py --results SELECT.json [--margin 0.005]
    python scripts/record_dcin_auto.py --in-domain benchmarks/results/dcin_in_domain.json
    python scripts/record_dcin_auto.py --guarded benchmarks/results/dcin_in_domain_hovernet.json

``SELECT.json`` holds ``benchmarks/generalization.py`` runs labelled ``select-<task>-<mode>``
(modes ``none`` and ``full``), made on *selection tiles* of the held-out renderer's styles: tile
seeds 100 and 101, disjoint from the evaluation tiles (seeds 0-2) that docs/generalization.md
reports. For every model in those runs the mode with the higher mean held-out Dice is written
to the bundle's manifest as ``dcin.auto`` (``full`` is then run behind the guard, as ``auto``
always is); within ``--margin`` the cheaper ``none`` is kept. ``dcin.auto_evidence`` says why.

``--in-domain`` takes a ``benchmarks/dcin_in_domain.py`` result (also on selection tiles) and
records its chosen distance as the model's ``dcin.in_domain_shift`` (the guard's rule 0: an
image whose colours are within that distance of a training image is not normalized), with
``dcin.in_domain_evidence``.

``--guarded`` takes a ``benchmarks/dcin_in_domain.py --auto full`` result of a model whose
``auto`` was ``none``: the guarded ``full`` with the sweep's threshold is compared with ``none``
on the mean held-out Dice of those selection tiles; above ``--margin`` the model gets ``auto =
full`` and that threshold, else ``auto`` stays ``none``. Either way the evidence is rewritten from
this measurement, with the styles where normalization helped and hurt most (the Segment
widget's DCIN panel shows it), so a user knows when to force a mode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_dgseg.core.bundle_index import shipped_dir
from napari_dgseg.core.evaluation_record import record_in_manifest, summarize_generalization


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results")
    ap.add_argument("--in-domain", dest="in_domain")
    ap.add_argument("--guarded")
    ap.add_argument("--margin", type=float, default=0.005)
    args = ap.parse_args()
    if args.in_domain:
        record_in_domain(Path(args.in_domain))
    if args.guarded:
        record_guarded(json.loads(Path(args.guarded).read_text()), args.margin)
    if not args.results:
        return 0
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


def record_in_domain(path: Path) -> None:
    """Write a dcin_in_domain run's chosen threshold into its model's manifest."""
    from napari_dgseg.core.color.guard import IN_DOMAIN_KEY

    run = json.loads(path.read_text())
    best = next(x for x in run["sweep"] if x["threshold"] == run["chosen"])
    off = next(x for x in run["sweep"] if x["threshold"] == 0.0)
    evidence = (f"selection tiles of every training and held-out style (seeds "
                f"{'-'.join(str(s) for s in run['seeds'])}, {run['n']} per seed): mean Dice "
                f"{off['mean_dice']:.3f} without the rule, {best['mean_dice']:.3f} with it; worst "
                f"style vs none {off['worst_minus_none']:+.3f} -> {best['worst_minus_none']:+.3f}")
    record_in_manifest(shipped_dir() / f"{run['model']}.dgseg", "dcin",
                       {IN_DOMAIN_KEY: run["chosen"], "in_domain_evidence": evidence})
    print(json.dumps({"model": run["model"], IN_DOMAIN_KEY: run["chosen"], "evidence": evidence}))


def guarded_decision(run: dict, margin: float) -> dict:
    """``auto`` for the model of a ``dcin_in_domain.py --auto full`` result (see the module).

    Returns ``{"auto", "threshold", "none", "guarded", "evidence"}``: mean held-out Dice of
    ``none`` and of the guarded ``full`` under the sweep's chosen in-domain threshold.
    """
    t = run["chosen"]
    per_style = next(x for x in run["sweep"] if x["threshold"] == t)["per_style"]
    styles = sorted({r["style"] for r in run["rows"] if r["renderer"] == "heldout"})
    guarded = {s: per_style[s]["dice"] for s in styles}
    none = {s: per_style[s]["dice"] - per_style[s]["minus_none"] for s in styles}
    mean_none, mean_guarded = float(np.mean(list(none.values()))), float(np.mean(list(guarded.values())))
    delta = {s: guarded[s] - none[s] for s in styles}
    best, worst = max(delta, key=delta.get), min(delta, key=delta.get)
    choice = "full" if mean_guarded - mean_none > margin else "none"
    evidence = (f"selection tiles of the held-out styles (seeds {'-'.join(str(s) for s in run['seeds'])}, "
                f"{run['n']} per seed): mean Dice none {mean_none:.3f}, guarded full "
                f"{mean_guarded:.3f} (in-domain threshold {t:g}); per style from "
                f"{delta[worst]:+.3f} ({worst}) to {delta[best]:+.3f} ({best}): force "
                f"{'full' if choice == 'none' else 'none'} for images like "
                f"{best if choice == 'none' else worst} (docs/dcin.md)")
    return {"auto": choice, "threshold": t, "none": round(mean_none, 4),
            "guarded": round(mean_guarded, 4), "evidence": evidence}


def record_guarded(run: dict, margin: float) -> None:
    """Write :func:`guarded_decision` into the run's model's manifest."""
    from napari_dgseg.core.color.guard import IN_DOMAIN_KEY

    d = guarded_decision(run, margin)
    values = {"auto": d["auto"], "auto_evidence": d["evidence"]}
    if d["auto"] == "full":
        values |= {IN_DOMAIN_KEY: d["threshold"], "in_domain_evidence": d["evidence"]}
    record_in_manifest(shipped_dir() / f"{run['model']}.dgseg", "dcin", values)
    print(json.dumps({"model": run["model"], **d}))


if __name__ == "__main__":
    raise SystemExit(main())
