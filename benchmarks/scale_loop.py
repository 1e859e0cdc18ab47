"""Model-in-the-loop size check against the nucleus-size estimate alone, on the tuning set only.

The tuning set is ``benchmarks/scale_robustness.py``'s hard cases of the **training renderer**:
its five H&E domains, seeds 7000-7002, resized by 0.5, 0.71, 1, 1.41 and 2 and degraded on the
new grid (``none``, ``blur-jpeg``, ``faded-blur-jpeg``, ``faded-strong``): 300 tiles of 256 px
with known labels. No held-out style is used here.

For every tile the scale decision of :func:`napari_dgseg.core.scale_inference.plan_scale` (the
shipped estimator) goes through :func:`napari_dgseg.core.scale_check.check_scale` in each mode of
:data:`~napari_dgseg.core.scale_check.SIZE_CHECK_MODES` (``off`` is the estimate alone) with a
pass function that runs ``--model`` at the asked factor (``Bundle.predict(image, scale=f)``, or
``rescale="off"`` at 1: the same tiles the network reads inside ``predict``). Passes are cached
per tile and factor, so the modes share them; each mode's cost is the number of passes *it* ran.
Recorded per tile and mode: final factor, passes, Dice and AJI against the labels
(:func:`napari_dgseg.core.metrics.instance_scores`); also the factor-1 pass alone
(``not resampled``). Summary: mean Dice/AJI per mode overall, per scale and per degradation, the
share of tiles with a second pass, and the choice rule (highest mean AJI among the modes whose
every scale bucket is at most 0.01 AJI below ``off``; ``off`` when none beats it).

Tiles are written one JSON line each to ``--tiles`` as they finish (``--shard i/n`` runs every
n-th tile, so two processes can share the work); ``--summarize`` reads the line files back::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_loop.py --shard 0/2 --tiles /tmp/a.jsonl
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_loop.py --shard 1/2 --tiles /tmp/b.jsonl
    python benchmarks/scale_loop.py --summarize /tmp/a.jsonl /tmp/b.jsonl \\
        --out benchmarks/results/scale_loop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from scale_robustness import hard_tile, tuning_keys  # noqa: E402

#: Mode names in the report: the brief's candidates (a)-(d) and the "far" start.
LABELS = {
    "off": "(a) estimate alone",
    "from-1": "(b) check, first pass at 1",
    "from-estimate": "(c) check, first pass at the estimate",
    "tight": "(c2) as (c), pass kept only within 0.9-1.1",
    "if-unscaled": "(e) as (c), only a pass at factor 1 re-checked",
    "far": "(c') check, first pass at the estimate only when far outside",
    "agree": "(d) estimate and pass at 1 must agree",
}
#: An adopted mode may lose at most this much mean AJI against ``off`` in any scale bucket.
MAX_BUCKET_LOSS = 0.01


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def tiles() -> list[tuple[str, float, str, int]]:
    """Every tile of the tuning set: (degradation, scale, domain, seed)."""
    return tuning_keys()


def run_tile(bundle: Any, key: tuple[str, float, str, int]) -> dict[str, Any]:
    """Every mode on one tile; passes shared through a cache."""
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.scale import measure_object_size
    from napari_dgseg.core.scale_check import SIZE_CHECK_MODES, check_scale
    from napari_dgseg.core.scale_inference import MIN_RESIZED_SIDE, plan_scale

    degradation, s, domain, seed = key
    image, labels = hard_tile(domain, seed, s, degradation)
    decision, _ = plan_scale(bundle.manifest, ImageAdapter.from_array(image))
    cache: dict[float, tuple[dict, np.ndarray]] = {}

    def segment_cached(factor: float) -> tuple[dict, np.ndarray]:
        k = round(float(factor), 6)
        if k not in cache:
            kw = {"rescale": "off"} if k == 1.0 else {"scale": k}
            pred = bundle.predict(image, device="cpu", **kw)
            lab = np.asarray(pred.labels)
            sc = instance_scores(lab, labels)
            cache[k] = ({"dice": round(float(sc["dice"]), 4), "aji": round(float(sc["aji"]), 4)},
                        lab)
        return cache[k]

    row: dict[str, Any] = {"degradation": degradation, "scale": s, "domain": domain, "seed": seed,
                           "true_px": round(measure_object_size(labels, "nuclei"), 3),
                           "estimate_factor": round(decision.proposed, 4),
                           "estimate_applied": decision.applied, "modes": {}}
    for mode in SIZE_CHECK_MODES:
        calls: list[float] = []

        def segment(factor: float, calls: list[float] = calls) -> tuple[dict, np.ndarray]:
            calls.append(factor)
            return segment_cached(factor)

        scores, dec = check_scale(decision, bundle.scale, segment, mode=mode,
                                  shape=image.shape[:2], min_side=MIN_RESIZED_SIDE)
        row["modes"][mode] = {"factor": round(dec.factor if dec.applied else 1.0, 4),
                              "passes": len(calls), **scores}
    row["not_resampled"] = segment_cached(1.0)[0]
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per mode overall and per bucket, second-pass shares, and the choice."""
    modes = list(rows[0]["modes"]) + ["not_resampled"]

    def get(r: dict, m: str) -> dict:
        return r["not_resampled"] if m == "not_resampled" else r["modes"][m]

    def means(sub: list[dict]) -> dict[str, dict[str, float]]:
        return {m: {k: round(float(np.mean([get(r, m)[k] for r in sub])), 4)
                    for k in ("dice", "aji")} for m in modes}

    out: dict[str, Any] = {"tiles": len(rows), "all": means(rows), "by_scale": {},
                           "by_degradation": {}}
    for s in sorted({r["scale"] for r in rows}):
        out["by_scale"][f"x{s:g}"] = means([r for r in rows if r["scale"] == s])
    for d in dict.fromkeys(r["degradation"] for r in rows):
        out["by_degradation"][d] = means([r for r in rows if r["degradation"] == d])
    out["second_pass_share"] = {m: round(float(np.mean([r["modes"][m]["passes"] > 1
                                                        for r in rows])), 3)
                                for m in rows[0]["modes"]}
    out["mean_passes"] = {m: round(float(np.mean([r["modes"][m]["passes"] for r in rows])), 3)
                          for m in rows[0]["modes"]}
    base = out["all"]["off"]["aji"]
    eligible = {}
    for m in rows[0]["modes"]:
        worst = min(out["by_scale"][b][m]["aji"] - out["by_scale"][b]["off"]["aji"]
                    for b in out["by_scale"])
        eligible[m] = {"mean_aji_gain": round(out["all"][m]["aji"] - base, 4),
                       "worst_bucket_aji_change": round(worst, 4),
                       "eligible": worst >= -MAX_BUCKET_LOSS}
    better = [m for m, e in eligible.items() if e["eligible"] and e["mean_aji_gain"] > 0]
    out["rule"] = eligible
    out["chosen"] = max(better, key=lambda m: eligible[m]["mean_aji_gain"]) if better else "off"
    return out


def table(summary: dict[str, Any]) -> str:
    """Markdown: mean Dice / AJI per mode, overall and per scale, and the second-pass share."""
    buckets = list(summary["by_scale"])
    lines = ["| mode | all | " + " | ".join(buckets) + " | 2nd pass |",
             "|---|---|" + "---|" * len(buckets) + "---|"]
    for m in summary["all"]:
        cells = [f"{summary['all'][m]['dice']:.3f} / {summary['all'][m]['aji']:.3f}"]
        cells += [f"{summary['by_scale'][b][m]['dice']:.3f} / {summary['by_scale'][b][m]['aji']:.3f}"
                  for b in buckets]
        share = summary["second_pass_share"].get(m)
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " | "
                     + ("-" if share is None else f"{share:.0%}") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    from napari_dgseg import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th tile from the i-th")
    ap.add_argument("--tiles", help="append one JSON line per finished tile here")
    ap.add_argument("--summarize", nargs="+", help="tile line files to summarise (no run)")
    ap.add_argument("--out", help="write the summary JSON here too")
    args = ap.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for p in args.summarize
                for line in Path(p).read_text().splitlines() if line.strip()]
        summary = summarize(rows)
        result = {"benchmark": "scale_loop", "date": time.strftime("%Y-%m-%d"),
                  "model": args.model, "summary": summary, "markdown": table(summary),
                  "tiles": rows}
        emit(result, args.out)
        return result
    i, n = (int(v) for v in args.shard.split("/"))
    bundle = load_bundle(args.model)
    load_before = load_average()
    done = set()
    if args.tiles and Path(args.tiles).exists():  # resume
        for line in Path(args.tiles).read_text().splitlines():
            r = json.loads(line)
            done.add((r["degradation"], r["scale"], r["domain"], r["seed"]))
    t0 = time.perf_counter()
    todo = [k for j, k in enumerate(tiles()) if j % n == i and k not in done]
    for j, key in enumerate(todo):
        row = run_tile(bundle, key)
        row["machine"] = machine_state(load_before) if j == 0 else None
        if args.tiles:
            with open(args.tiles, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        log(f"{j + 1}/{len(todo)} {time.perf_counter() - t0:.0f}s", key,
            {m: (v["factor"], v["aji"]) for m, v in row["modes"].items()})
    return None


if __name__ == "__main__":
    main()
