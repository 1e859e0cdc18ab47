"""Shared by the model-in-the-loop scale benchmarks (``scale_agreement.py``, ``scale_blur.py``,
``size_head.py``): segment a tile with a given size estimate, and summarise variants against a
base one with a rule fixed before the run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: ``segment(..., size=ESTIMATOR)``: let the shipped estimator run (nothing replaced).
ESTIMATOR = object()


def segment(bundle: Any, image: np.ndarray, labels: np.ndarray, size: Any = ESTIMATOR) -> dict:
    """Dice, AJI and the factor applied when ``bundle`` segments ``image`` through its whole
    default scale pipeline, the image-only estimate replaced by ``size`` (pixels; None: no
    estimate) unless it is :data:`ESTIMATOR`."""
    import napari_dgseg.core.scale_estimate as se
    from napari_dgseg.core.metrics import instance_scores

    original = se.estimate_object_size
    if size is not ESTIMATOR:
        se.estimate_object_size = lambda *a, **k: {"object_size_px": size}
    try:
        pred = bundle.predict(image, device="cpu")
    finally:
        se.estimate_object_size = original
    sc = instance_scores(np.asarray(pred.labels), labels)
    return {"dice": round(sc["dice"], 4), "aji": round(sc["aji"], 4),
            "factor": round(float(pred.provenance["scale"]["factor"]), 3)}


def tile_image(t: dict) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 image and labels of one tile row of these benchmarks: ``set`` ``random``
    (``scale_regressor.random_tile`` by ``index``) or ``tuning`` (``scale_robustness.hard_tile``
    by ``meta``)."""
    from scale_regressor import random_tile
    from scale_robustness import hard_tile

    if t["set"] == "random":
        img, _, _, lab = random_tile(t["index"])
        return img, lab
    m = t["meta"]
    return hard_tile(m["domain"], m["seed"], m["scale"], m["degradation"])


def merge_parts(paths: Sequence[str]) -> tuple[list[dict], float, dict]:
    """The tile rows of sharded results (``--merge``), their summed seconds and the first part."""
    import json
    from pathlib import Path

    parts = [json.loads(Path(p).read_text()) for p in paths]
    return [t for p in parts for t in p["tiles"]], sum(p["seconds"] for p in parts), parts[0]


def score_moved(bundle: Any, t: dict, base: str, moved: Sequence[str]) -> dict[str, dict]:
    """:func:`segment` scores of tile row ``t`` with its ``estimates`` of ``base`` and of each
    variant in ``moved`` (the variants whose factor differs from ``base``'s)."""
    img, lab = tile_image(t)
    scores = {base: segment(bundle, img, lab, t["estimates"][base])}
    for v in moved:
        scores[v] = segment(bundle, img, lab, t["estimates"][v])
    return scores


def summarize_variants(tiles: list[dict], variants: Sequence[str], base: str, header: str,
                       tie: Callable[[str], Any]) -> tuple[dict, str, str]:
    """Per set (``random``, ``tuning``) and variant: tiles whose score differs from ``base``'s,
    mean Dice / AJI change over all the set's tiles; the chosen variant (highest mean AJI over
    both sets, mean Dice not lower by more than 0.002 on either; ``tie`` breaks ties, larger
    first) and a Markdown table whose first column is named ``header``."""
    summary: dict[str, dict] = {}
    for name in ("random", "tuning"):
        mine = [t for t in tiles if t["set"] == name]
        for v in variants:
            dd = da = 0.0
            moved = 0
            for t in mine:
                sc = t.get("scores", {})
                if v in sc and v != base:
                    moved += 1
                    dd += sc[v]["dice"] - sc[base]["dice"]
                    da += sc[v]["aji"] - sc[base]["aji"]
            summary.setdefault(name, {})[v] = {"tiles": len(mine), "factor_changed": moved,
                                               "mean_dice_change": round(dd / len(mine), 5),
                                               "mean_aji_change": round(da / len(mine), 5)}
    total = {v: sum(summary[s][v]["mean_aji_change"] * summary[s][v]["tiles"] for s in summary)
             for v in variants}
    eligible = [v for v in variants if all(summary[s][v]["mean_dice_change"] >= -0.002 for s in summary)]
    chosen = max(eligible, key=lambda v: (round(total[v], 6), tie(v)))
    lines = [f"| {header} | set | factor changed | mean Dice change | mean AJI change |",
             "|---|---|---|---|---|"]
    for name, per in summary.items():
        for v, c in per.items():
            lines.append(f"| {v} | {name} ({c['tiles']} tiles) | {c['factor_changed']} | "
                         f"{c['mean_dice_change']:+.4f} | {c['mean_aji_change']:+.4f} |")
    return summary, chosen, "\n".join(lines)
