"""Model in the loop: how far should an *estimated* scale factor be applied?

An image-only nucleus-size estimate can be confidently wrong (faded, JPEG-blocked nuclei read as
twice their size), and applying a wrong factor whole shrinks the nuclei far outside the sizes the
model was trained on. The shipped models saw objects 0.7-1.4x their recorded size (object-size
augmentation), so an estimate only needs to bring the objects *inside* that range, not to its
centre. Candidates (``napari_dgseg.core.scale.approach_factor``): ``approach`` 1 applies the
estimated factor whole (the behaviour before this benchmark), 0 only as far as the near edge of
the model's range, 0.5 half-way in log scale.

Training renderer only, the tiles and estimates of ``benchmarks/scale_blur.py``'s result (its
random set: tiles resized 0.35-2.8x and faded / blurred / JPEG-compressed at random; its 300-tile
tuning set of fixed hard cases), each tile's estimate as the shipped estimator gives it (blur
correction ``k = 0.5``, the learned ruler's veto by cross-validated predictions). Every tile whose
estimated factor is applied is segmented by ``nuclei-hovernet`` through the whole default pipeline
(size check included) once per approach and scored against its labels. Rule fixed before the
run: the approach with the highest mean AJI over both sets whose mean Dice is not lower than
approach 1's by more than 0.002 on either set; ties to the larger approach (the smaller change).
``--study tolerance`` measures the other side of the same question the same way: the share ``s``
(log scale) of the model's object-size augmentation range inside which an estimate is *not*
applied (``napari_dgseg.core.scale.ESTIMATE_TOLERANCE_SHARE``; 1, the whole 0.71-1.43, shipped;
0.5, 0.85-1.18; 0, the plain 0.9-1.1). It changes the size check's decisions too, so every tile is
segmented under every share (a variant's score is kept where its final factor differs from share
1's). Same rule, ties to the larger share.

``--study recheck`` compares the size check's modes (``napari_dgseg.core.scale_check``):
``if-unscaled`` (shipped: a pass at a resampled grid is never re-checked) against ``back-off``
(a pass at a *shrunk* grid whose nuclei imply a factor above the tolerance of it re-runs at the
implied factor, at most 1). Only tiles whose estimate shrinks can differ, so only those are
segmented (under both modes). ``--sets own`` adds tiles of the training renderer at their own
scale (8 per domain, tile seeds from 73000): the check the tolerance study lacked (no domain's
mean AJI lower by more than 0.002). Same rule, ties to the shipped mode.

``--sides RESULT`` replays a merged tolerance result offline for a one-sided variant: share 0.5
on the enlarging side only (``[1, 0.5]``; a tile takes share 0.5's score where its final factor
there is larger than share 1's, else share 1's), which is what the one-sided tolerance decides
wherever the two sides' decisions do not interact.

Stdout is one JSON object::

    OMP_NUM_THREADS=1 python benchmarks/scale_approach.py --sets random --out PART_A.json
    OMP_NUM_THREADS=1 python benchmarks/scale_approach.py --sets tuning --out PART_B.json
    python benchmarks/scale_approach.py --merge PART_A.json PART_B.json \\
        --out benchmarks/results/scale_approach.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402
from _scale_variants import merge_parts, segment, summarize_variants, tile_image  # noqa: E402

#: Each study: the module constants of ``napari_dgseg.core.scale`` it varies, by variant name
#: (the first is the shipped one, the base of the comparison).
#: A key ``module.NAME`` sets a constant of ``napari_dgseg.core.<module>`` instead.
STUDIES: dict[str, dict[str, dict[str, Any]]] = {
    "approach": {f"{a:g}": {"ESTIMATE_APPROACH": a} for a in (1.0, 0.5, 0.0)},
    "tolerance": {f"{s:g}": {"ESTIMATE_TOLERANCE_SHARE": s} for s in (1.0, 0.5, 0.0)},
    "recheck": {m: {"inference.DEFAULT_SIZE_CHECK": m} for m in ("if-unscaled", "back-off")},
}
#: ``--sets own``: training-renderer domains and tiles per domain at their own scale.
OWN_DOMAINS = ("clean", "pale-scanner", "dark-stain", "blurry-jpeg", "warm-scanner")
OWN_PER_DOMAIN = 8
OWN_SEED = 73000
#: The blur correction the shipped estimator uses (``scale_estimate.BLUR_CORRECTION``).
SHIPPED_K = "0.5"
RESULTS = Path(__file__).resolve().parent / "results"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def summarize(tiles: list[dict], study: str) -> tuple[dict, str, str]:
    names = list(STUDIES[study])
    if study == "recheck":  # ties to the shipped mode (listed first)
        return summarize_variants(tiles, names, names[0], study, lambda v: -names.index(v))
    return summarize_variants(tiles, names, names[0], study, lambda v: float(v))


def own_scale_summary(tiles: list[dict], study: str) -> dict[str, dict[str, float]]:
    """Mean Dice / AJI per training domain and variant on the ``own`` tiles."""
    out: dict[str, dict[str, float]] = {}
    for t in (t for t in tiles if t["set"] == "own"):
        for v in STUDIES[study]:
            sc = t["scores"][v]
            cell = out.setdefault(t["meta"]["domain"], {}).setdefault(v, {"dice": 0.0, "aji": 0.0, "n": 0})
            cell["dice"] += sc["dice"]
            cell["aji"] += sc["aji"]
            cell["n"] += 1
    return {d: {v: {"dice": round(c["dice"] / c["n"], 4), "aji": round(c["aji"] / c["n"], 4)}
                for v, c in per.items()} for d, per in out.items()}


@contextmanager
def constants(values: dict[str, float]) -> Iterator[None]:
    """Set module constants of ``napari_dgseg.core.scale`` for the duration."""
    import importlib

    def target(key: str) -> tuple[Any, str]:
        module, _, name = key.rpartition(".")
        return importlib.import_module(f"napari_dgseg.core.{module or 'scale'}"), name

    before = {k: getattr(*target(k)) for k in values}
    try:
        for k, v in values.items():
            setattr(*target(k), v)
        yield
    finally:
        for k, v in before.items():
            setattr(*target(k), v)


def run(sets: list[str], source: Path, model: str, study: str) -> list[dict]:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.scale import resolve_scale

    variants = STUDIES[study]
    base = next(iter(variants))
    bundle = load_bundle(model)
    tiles = [t for t in json.loads(source.read_text())["tiles"] if t["set"] in sets]
    out: list[dict] = []
    t0 = time.perf_counter()
    if "own" in sets:
        out += own_scale_rows(bundle, variants)
    for t in tiles:
        size = t["estimates"][SHIPPED_K]
        factors = {}
        for name, values in variants.items():
            with constants(values):
                factors[name] = round(resolve_scale(
                    bundle.scale, estimate=lambda s=size: {"object_size_px": s}).factor, 4)
        row = {"set": t["set"], "index": t["index"], "meta": t["meta"],
               "true_px": round(t["true_px"], 3), "estimate_px": size, "factors": factors}
        shrinks = study == "recheck" and factors[base] < 1.0
        if study == "tolerance" or shrinks or len(set(factors.values())) > 1:
            img, lab = tile_image(t)
            scores = {}
            for name, values in variants.items():
                with constants(values):
                    scores[name] = segment(bundle, img, lab, size)
            kept = {n: sc for n, sc in scores.items()
                    if n == base or sc["factor"] != scores[base]["factor"]}
            if len(kept) > 1:
                row["scores"] = kept
                log(t["set"], t["index"], round(t["true_px"], 1), factors, kept,
                    f"({time.perf_counter() - t0:.0f} s)")
        out.append(row)
    return out


def own_scale_rows(bundle: Any, variants: dict[str, dict[str, Any]]) -> list[dict]:
    """Training-renderer tiles at their own scale, each segmented under every variant (the
    shipped estimator runs: nothing replaced)."""
    from _scale_variants import ESTIMATOR

    from napari_dgseg.core.data.synthetic import item_seed, make_nuclei

    rows = []
    for d, domain in enumerate(OWN_DOMAINS):
        for i in range(OWN_PER_DOMAIN):
            seed = item_seed(OWN_SEED + d, i)
            img, lab = make_nuclei(256, domain, seed)
            scores = {}
            for name, values in variants.items():
                with constants(values):
                    scores[name] = segment(bundle, img, lab, ESTIMATOR)
            rows.append({"set": "own", "index": i, "meta": {"domain": domain, "seed": seed},
                         "scores": scores})
            log("own", domain, i, scores)
    return rows


def replay_enlarging_side(result: dict) -> dict:
    """Mean Dice / AJI change against share 1 per set of the one-sided variant ``[1, 0.5]``."""
    out: dict[str, Any] = {"benchmark": "scale_approach", "study": "tolerance-sides",
                           "variant": [1.0, 0.5], "source_date": result.get("date"), "sets": {}}
    for name in ("random", "tuning"):
        mine = [t for t in result["tiles"] if t["set"] == name]
        moved = [t for t in mine if "0.5" in t.get("scores", {})
                 and t["scores"]["0.5"]["factor"] > t["scores"]["1"]["factor"]]
        out["sets"][name] = {
            "tiles": len(mine), "factor_changed": len(moved),
            "mean_dice_change": round(sum(t["scores"]["0.5"]["dice"] - t["scores"]["1"]["dice"]
                                          for t in moved) / len(mine), 5),
            "mean_aji_change": round(sum(t["scores"]["0.5"]["aji"] - t["scores"]["1"]["aji"]
                                         for t in moved) / len(mine), 5)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--study", default="approach", choices=sorted(STUDIES))
    ap.add_argument("--source", default=str(RESULTS / "scale_blur.json"),
                    help="scale_blur.py's result (tiles and their estimates)")
    ap.add_argument("--sets", nargs="+", default=["random", "tuning"],
                    choices=["random", "tuning", "own"])
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine partial results")
    ap.add_argument("--out")
    ap.add_argument("--sides", metavar="JSON", help="replay a merged tolerance result one-sided")
    args = ap.parse_args(argv)
    if args.sides:
        result = replay_enlarging_side(json.loads(Path(args.sides).read_text()))
        emit(result, args.out)
        return result
    load_before = load_average()
    t0 = time.perf_counter()
    if args.merge:
        tiles, seconds, _ = merge_parts(args.merge)
    else:
        tiles = run(args.sets, Path(args.source), args.model, args.study)
        seconds = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {"benchmark": "scale_approach", "study": args.study,
                              "date": time.strftime("%Y-%m-%d"), "model": args.model,
                              "variants": STUDIES[args.study],
                              "tiles": tiles, "seconds": seconds,
                              "machine": machine_state(load_before)}
    sets = {t["set"] for t in tiles}
    if {"random", "tuning"} <= sets:
        synthetic = [t for t in tiles if t["set"] != "own"]
        result["summary"], result["chosen"], result["markdown"] = summarize(synthetic, args.study)
    if "own" in sets:
        result["own_scale"] = own_scale_summary(tiles, args.study)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
