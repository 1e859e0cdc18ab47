"""One scale for the tiles of one slide (``dgseg predict --rescale shared``) against one per tile.

A "slide" here is one 768 px image cut into nine 256 px tiles, the way tiles are exported from a
slide viewer; every tile is segmented by ``nuclei-hovernet`` through its default pipeline twice:

* ``per tile`` (``--rescale auto``, the default): each tile's own size estimate and size check;
* ``shared``: the factor :func:`napari_dgseg.core.scale_batch.shared_scale` decides from the
  median of the nine tiles' estimates, applied to every tile (no size check: a given factor).

Slides: the training renderer's five H&E domains resized by 0.6, 1 and 1.6 (nuclei that many
times their training size) and either clean or faded + blurred + JPEG-compressed
(``scale_robustness.hard_tile``; tissue seeds from 61000); the held-out renderer's five styles at
their own scale (two slides each, seeds from 62000); and the real tile ``he_tumour_1000px.png``
(its 16 crops of 256 px, stride 248) against the weak haematoxylin reference of
``benchmarks/real_he.py`` (Dice only). Scores: mean over the tiles of a slide, then over slides.

    OMP_NUM_THREADS=1 python benchmarks/scale_shared.py --part training --out A.json
    OMP_NUM_THREADS=1 python benchmarks/scale_shared.py --part heldout --out B.json
    python benchmarks/scale_shared.py --merge A.json B.json --out benchmarks/results/scale_shared.json
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

DOMAINS = ("clean", "pale-scanner", "dark-stain", "blurry-jpeg", "warm-scanner")
SCALES = (0.6, 1.0, 1.6)
DEGRADATIONS = ("none", "faded-blur-jpeg")
STYLES = ("ho-pale", "ho-dark-blue", "ho-faded-jpeg", "ho-confounders", "ho-lymphoid")
SLIDE, TILE = 768, 256
MODES = ("per tile", "shared")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def tiles_of(image: np.ndarray, labels: np.ndarray | None, size: int = TILE,
             stride: int = TILE) -> list[tuple[np.ndarray, np.ndarray | None]]:
    h, w = image.shape[:2]
    return [(image[y:y + size, x:x + size], None if labels is None else labels[y:y + size, x:x + size])
            for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def score_slide(bundle: Any, tiles: list[tuple[np.ndarray, np.ndarray | None]],
                reference: Any = None) -> dict[str, Any]:
    """Both modes on the tiles of one slide: mean scores and the factors used."""
    from napari_dgseg.core.metrics import dice, instance_scores
    from napari_dgseg.core.scale_batch import shared_scale

    shared = shared_scale(bundle.manifest, [t for t, _ in tiles])
    out: dict[str, Any] = {"batch": {k: shared[k] for k in ("factor", "object_size_px", "estimated")}}
    for mode in MODES:
        rows, factors = [], []
        for img, lab in tiles:
            kw = {"scale": shared["factor"]} if mode == "shared" and shared["factor"] else {}
            pred = bundle.predict(img, device="cpu", **kw)
            labels = np.asarray(pred.labels)
            factors.append(round(float(pred.provenance["scale"]["factor"]), 3))
            if lab is None:
                rows.append([dice(labels > 0, reference(img) > 0)])
            else:
                sc = instance_scores(labels, lab)
                rows.append([sc["dice"], sc["aji"]])
        mean = np.mean(rows, axis=0)
        out[mode] = {"dice": round(float(mean[0]), 4), "factors": factors}
        if len(mean) > 1:
            out[mode]["aji"] = round(float(mean[1]), 4)
    return out


def run(part: str, model: str, shared_dir: Path) -> list[dict]:
    from scale_robustness import hard_tile

    from napari_dgseg import load_bundle

    bundle = load_bundle(model)
    rows: list[dict] = []
    t0 = time.perf_counter()
    if part == "training":
        k = 0
        for domain in DOMAINS:
            for s in SCALES:
                for deg in DEGRADATIONS:
                    img, lab = hard_tile(domain, 61000 + k, s, deg, size=SLIDE)
                    k += 1
                    row = {"set": "training", "domain": domain, "scale": s, "degradation": deg,
                           **score_slide(bundle, tiles_of(img, lab))}
                    rows.append(row)
                    log(domain, s, deg, {m: row[m]["aji"] for m in MODES}, row["batch"],
                        f"({time.perf_counter() - t0:.0f} s)")
        return rows
    from real_he import haematoxylin_reference

    from napari_dgseg.core.data.datasets import read_array, to_rgb_uint8
    from napari_dgseg.core.data.heldout_nuclei import make_heldout_nuclei

    for i, style in enumerate(STYLES):
        for j in range(2):
            img, lab = make_heldout_nuclei(SLIDE, style, 62000 + 10 * i + j)
            row = {"set": "heldout", "domain": style, "scale": 1.0, "degradation": "none",
                   **score_slide(bundle, tiles_of(img, lab))}
            rows.append(row)
            log(style, j, {m: row[m]["aji"] for m in MODES}, row["batch"])
    path = shared_dir / "data" / "real-he" / "he_tumour_1000px.png"
    if path.exists():
        real = to_rgb_uint8(read_array(path), path.name)
        row = {"set": "real", "domain": path.name, **score_slide(
            bundle, tiles_of(real, None, stride=248), reference=haematoxylin_reference)}
        rows.append(row)
        log(path.name, {m: row[m]["dice"] for m in MODES}, row["batch"])
    return rows


def summarize(rows: list[dict]) -> tuple[dict, str]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = (f"training x{r['scale']:g} ({r['degradation']})" if r["set"] == "training"
               else r["domain"] if r["set"] == "real" else f"held-out {r['domain']}")
        groups.setdefault(key, []).append(r)
    summary: dict[str, dict] = {}
    lines = ["| slides | n | per tile: Dice / AJI | shared: Dice / AJI | factor spread per slide (per tile) |",
             "|---|---|---|---|---|"]
    for key, rs in groups.items():
        cell = {}
        for m in MODES:
            cell[m] = {k: round(float(np.mean([r[m][k] for r in rs])), 4)
                       for k in ("dice", "aji") if k in rs[0][m]}
        spread = float(np.mean([max(r["per tile"]["factors"]) / min(r["per tile"]["factors"])
                                for r in rs]))
        summary[key] = {"slides": len(rs), **cell, "mean_factor_spread": round(spread, 3)}
        fmt = lambda c: " / ".join(f"{c[k]:.3f}" for k in ("dice", "aji") if k in c)  # noqa: E731
        lines.append(f"| {key} | {len(rs)} | {fmt(cell['per tile'])} | {fmt(cell['shared'])} | "
                     f"{spread:.2f}x |")
    return summary, "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--part", choices=["training", "heldout"], default="training")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--merge", nargs="+", metavar="JSON")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    load0 = load_average()
    t0 = time.perf_counter()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = [r for p in parts for r in p["rows"]]
        seconds = sum(p["seconds"] for p in parts)
    else:
        rows = run(args.part, args.model, Path(args.shared))
        seconds = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {"benchmark": "scale_shared", "model": args.model,
                              "date": time.strftime("%Y-%m-%d"), "rows": rows,
                              "seconds": seconds, "machine": machine_state(load0)}
    result["summary"], result["markdown"] = summarize(rows)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
