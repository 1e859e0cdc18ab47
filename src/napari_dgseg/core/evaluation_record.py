"""Held-out scores carried by a bundle: what a user can expect on images nobody tuned to.

A bundle's ``provenance.val_metrics`` are in-domain (the training renderer's validation tiles)
and say little about new images. ``benchmarks/generalization.py`` measures every shipped model
on the held-out renderer's styles and on real images; :func:`summarize_generalization` turns
one run of it into a small record and :func:`record_evaluation` stores that record in the
bundle's manifest under ``evaluation.heldout`` (the weights are untouched; the bundle is
re-saved atomically). ``dgseg models`` and the model picker show it beside the validation
scores (:func:`heldout_line`).

No torch import at module level: the picker and ``dgseg models`` read manifests only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Metrics recorded per task, in display order.
TASK_METRICS = {"nuclei": ("dice", "aji", "pq"), "vessels": ("dice", "cldice")}
#: Name of the classical baseline's row in the generalization results.
BASELINE_ROW = "classical"


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def summarize_generalization(run: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    """The held-out record of ``model`` from one ``benchmarks/generalization.py`` run.

    Parameters
    ----------
    run : mapping
        One entry of ``generalization.json``'s ``runs`` (``tasks``, ``label``, ``date``, ...).
    model : str
        The bundle's name as it appears in the run's rows.

    Returns
    -------
    dict or None
        ``{"task", "metrics", "styles": {style: {metric: mean}}, "mean": {metric: mean},
        "baseline_mean": {metric: mean}, "wins": n styles where Dice beats the baseline,
        "styles_total", "real": {image: agreement}, "source": {...}}``; None when the run
        has no row for ``model``.
    """
    for task, result in run.get("tasks", {}).items():
        cells = result.get("cells", {})
        if model not in cells:
            continue
        metrics = TASK_METRICS.get(task, ("dice",))
        columns = result.get("columns", {})
        heldout = [c for c, info in columns.items() if info.get("renderer") == "heldout"]
        real = [c for c, info in columns.items() if info.get("renderer") == "real"]
        row, base = cells[model], cells.get(BASELINE_ROW, {})
        styles = {
            s: {m: row[s][m]["mean"] for m in metrics if m in row.get(s, {})} for s in heldout
        }
        base_styles = {
            s: {m: base[s][m]["mean"] for m in metrics if m in base.get(s, {})} for s in heldout
        }
        mean = {m: _mean([v[m] for v in styles.values() if m in v]) for m in metrics}
        base_mean = {m: _mean([v[m] for v in base_styles.values() if m in v]) for m in metrics}
        wins = sum(
            1 for s in heldout
            if "dice" in styles[s] and "dice" in base_styles.get(s, {})
            and styles[s]["dice"] > base_styles[s]["dice"]
        )
        return {
            "task": task,
            "metrics": list(metrics),
            "styles": styles,
            "mean": mean,
            "baseline": BASELINE_ROW,
            "baseline_mean": base_mean,
            "wins": wins,
            "styles_total": len(heldout),
            "real": {c.split(":", 1)[-1]: row[c]["dice"]["mean"] for c in real if "dice" in row.get(c, {})},
            "real_reference": {c.split(":", 1)[-1]: columns[c].get("reference", "") for c in real},
            "source": {
                "benchmark": "benchmarks/generalization.py",
                "label": run.get("label"),
                "date": run.get("date"),
                "tile_seeds": run.get("seeds"),
                "dcin": run.get("dcin"),
            },
        }
    return None


def record_in_manifest(path: str | Path, section: str, values: Mapping[str, Any]) -> Path:
    """Merge ``values`` into the manifest's ``section`` of the bundle at ``path`` (atomic re-save;
    the weights are untouched). Every recorder of measured choices goes through this."""
    from napari_dgseg.core.bundle import load_bundle

    bundle = load_bundle(Path(path))
    bundle.manifest[section] = {**(bundle.manifest.get(section) or {}), **values}
    return bundle.save(bundle.path or Path(path), overwrite=True)


def record_evaluation(path: str | Path, heldout: Mapping[str, Any]) -> Path:
    """Store ``heldout`` as ``evaluation.heldout`` in the bundle at ``path`` (atomic re-save)."""
    return record_in_manifest(path, "evaluation", {"heldout": dict(heldout)})


def heldout_line(record: Mapping[str, Any] | None) -> str:
    """One line for a model list: ``held-out dice 0.892 / aji 0.553 (classical 0.741 / 0.381), 5/5``."""
    if not record or not record.get("mean"):
        return ""
    metrics = [m for m in record.get("metrics", []) if m in record["mean"]]
    ours = " / ".join(f"{m} {float(record['mean'][m]):.3f}" for m in metrics)
    base = record.get("baseline_mean", {})
    theirs = " / ".join(f"{float(base[m]):.3f}" for m in metrics if m in base)
    line = f"held-out {ours}"
    if theirs:
        line += f" ({record.get('baseline', BASELINE_ROW)} {theirs})"
    if record.get("styles_total"):
        line += f", beats it on {record.get('wins', 0)}/{record['styles_total']} styles"
    return line
