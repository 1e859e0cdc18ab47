"""DCIN methods and the guarded ``auto`` against ``none``, at tile and sparse-crop scale.

Two sets of images, kept apart so that defaults are not chosen on the rows that are reported:

* ``selection``: the training renderer's domains (``core/data/synthetic_nuclei.py``, all five,
  seeds 70000+), on which the default method and the guard's thresholds were chosen;
* ``evaluation``: the shifted synthetic domains (seeds 50000+, as in ``dcin_table.py``) and the
  real H&E images in ``../shared/data/real-he`` (TIAToolbox's and StarDist's, BSD-3-Clause; not
  shipped). Real images have no ground truth: they are scored against a haematoxylin colour-
  deconvolution mask (``real_he.haematoxylin_reference``), a weak reference.

Scales: ``tile`` is a whole synthetic 512 px tile or a whole real image; ``sparse`` is the 256 px
crop of a 1024 px synthetic tile (or of the real image) with the fewest nuclear pixels (reference
fraction > 0); real images also give ``mid`` and ``dense`` crops (median and highest fraction).

``--rebank N`` replaces the model's reference bank (in memory) by one built from N images of
its training domain rendered afresh (seeds 60000+), with the per-method statistics that banks
made by this version store; banks made before keep only Reinhard statistics and a histogram,
from which ``balanced`` is estimated and ``macenko`` cannot be (it falls back to Reinhard).

Per image and model: ``none``; for every method (``core/color/normalizers.py``) the ``gris``,
``lris`` and ``full`` branches (logits of each branch; ``full`` = their mean, as inference does)
and ``auto`` = what the guard (``core/color/guard.py``) decides from its own pilot pass: ``full``
when it keeps normalization, ``none`` when it falls back. Scores: predicted foreground fraction
and pixel Dice with the truth (synthetic) or with the haematoxylin mask (real).

Stdout is one JSON object (per-image records and per-row means); progress goes to stderr::

    nice -n 10 python benchmarks/dcin_guard.py --models nuclei-unet --n 3 \
        > benchmarks/results/dcin_guard.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def _sparsest(truth: np.ndarray, side: int, step: int = 64, pick: str = "sparse") -> tuple[int, int]:
    """Top-left corner of the ``side`` crop with the lowest (or median / highest) truth fraction."""
    h, w = truth.shape
    cands = []
    for y in range(0, h - side + 1, step):
        for x in range(0, w - side + 1, step):
            f = float(truth[y:y + side, x:x + side].mean())
            if f > 0:
                cands.append((f, y, x))
    cands.sort()
    f, y, x = {"sparse": cands[0], "mid": cands[len(cands) // 2], "dense": cands[-1]}[pick]
    return y, x


def build_items(n: int, shared: Path) -> list[dict]:
    from napari_dgseg.core.data.synthetic import list_domains, make_nuclei

    items = []
    for split, base, domains in (("selection", 70_000, list_domains()["nuclei"]),
                                 ("evaluation", 50_000, list_domains()["nuclei"][1:])):
        for d in domains:
            for i in range(n):
                img, gt = make_nuclei(512, domain=d, seed=base + i)
                truth = gt > 0
                items.append({"split": split, "source": d, "scale": "tile", "seed": base + i,
                              "image": img, "truth": truth, "score": "dice"})
                big, big_gt = make_nuclei(1024, domain=d, seed=base + 500 + i)
                y, x = _sparsest(big_gt > 0, 256, 32)
                items.append({"split": split, "source": d, "scale": "sparse", "seed": base + 500 + i,
                              "image": big[y:y + 256, x:x + 256],
                              "truth": big_gt[y:y + 256, x:x + 256] > 0, "score": "dice"})
    folder = shared / "data" / "real-he"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg"))
    if files:
        from real_he import haematoxylin_reference
        from skimage.io import imread

        for path in files:
            rgb = np.ascontiguousarray(imread(path)[..., :3])
            ref = haematoxylin_reference(rgb)
            items.append({"split": "evaluation", "source": path.name, "scale": "tile", "seed": None,
                          "image": rgb, "truth": ref, "score": "agreement"})
            for pick in ("sparse", "mid", "dense"):
                y, x = _sparsest(ref, 256, 32, pick)
                items.append({"split": "evaluation", "source": path.name, "scale": pick,
                              "seed": None, "image": rgb[y:y + 256, x:x + 256],
                              "truth": ref[y:y + 256, x:x + 256], "score": "agreement"})
    else:
        print(f"no real H&E images in {folder}: real rows left out", file=sys.stderr)
    return items


def _fg(logits: np.ndarray) -> np.ndarray:
    return logits[0] > 0 if logits.shape[0] == 1 else logits.argmax(0) > 0


def run_item(bundle, item: dict, methods: list[str]) -> dict:
    from napari_dgseg.core.color.dcin import plan_dcin
    from napari_dgseg.core.color.guard import decide, measure
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.predict import run_tiled

    img, truth = item["image"], item["truth"]
    adapter = ImageAdapter.from_array(img)
    common = dict(input_spec=bundle.input_spec, tile=512, overlap=32, device="cpu",
                  discrete=bundle.family.discrete_outputs)
    none = _fg(run_tiled(bundle.model, adapter, **common)["logits"])
    rec = {k: item[k] for k in ("split", "source", "scale", "seed", "score")}
    rec["truth_fraction"] = round(float(truth.mean()), 4)
    rec["none"] = {"fraction": round(float(none.mean()), 4), "score": round(_dice(none, truth), 4)}
    for m in methods:
        plan = plan_dcin(bundle, adapter, "full", method=m, guard=False)
        if len(plan.branches) != 2:  # skipped (no tissue): everything equals none
            rec[m] = {k: dict(rec["none"]) for k in ("gris", "lris", "full", "auto")}
            continue
        logits = [run_tiled(bundle.model, adapter, branches=[b], **common)["logits"]
                  for b in plan.branches]
        out = {}
        for name, lg in (("gris", logits[0]), ("lris", logits[1]), ("full", (logits[0] + logits[1]) / 2)):
            fg = _fg(lg)
            out[name] = {"fraction": round(float(fg.mean()), 4), "score": round(_dice(fg, truth), 4)}
        from napari_dgseg.core.color.bank import reference_stats
        from napari_dgseg.core.color.dcin import target_sample
        from napari_dgseg.core.color.guard import colour_shift
        from napari_dgseg.core.color.normalizers import get_normalizer, tissue_samples
        from napari_dgseg.core.color.tissue import tissue_mask

        bal = get_normalizer("balanced")
        bank = bundle.extra("bank")
        shift = colour_shift(bal.fit(*tissue_samples(target_sample(adapter))),
                             [{"stats": reference_stats(bank, r["index"], bal)[0].tolist()}
                              for r in plan.references])
        signals = measure(bundle, adapter, plan.branches, device="cpu",
                          tissue=tissue_mask(target_sample(adapter, 256), fallback=False),
                          shift=shift)
        decision = decide(signals)
        out["auto"] = dict(out["full"] if decision.action == "keep" else rec["none"])
        out["guard"] = decision.as_dict()
        rec[m] = out
    return rec


def summarize(records: list[dict], methods: list[str]) -> list[dict]:
    rows = []
    keys = []
    for r in records:
        k = (r["model"], r["split"], r["source"], r["scale"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        group = [r for r in records if (r["model"], r["split"], r["source"], r["scale"]) == k]
        row = {"model": k[0], "split": k[1], "source": k[2], "scale": k[3], "images": len(group),
               "score": group[0]["score"],
               "truth_fraction": round(float(np.mean([g["truth_fraction"] for g in group])), 4),
               "none": {"fraction": round(float(np.mean([g["none"]["fraction"] for g in group])), 4),
                        "score": round(float(np.mean([g["none"]["score"] for g in group])), 4)}}
        for m in methods:
            row[m] = {}
            for mode in ("gris", "lris", "full", "auto"):
                row[m][mode] = {
                    "fraction": round(float(np.mean([g[m][mode]["fraction"] for g in group])), 4),
                    "score": round(float(np.mean([g[m][mode]["score"] for g in group])), 4)}
            row[m]["fallbacks"] = sum(1 for g in group if g[m].get("guard", {}).get("action") == "fallback")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["nuclei-unet"])
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--n", type=int, default=3, help="synthetic images per domain and split")
    ap.add_argument("--rebank", type=int, default=0,
                    help="rebuild the bank from N fresh training-domain images (0: as shipped)")
    ap.add_argument("--train-domain", default="clean")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = ap.parse_args()

    import torch
    from _report import load_average, machine_state

    from napari_dgseg import load_bundle
    from napari_dgseg.core.color.guard import (
        AGREE,
        COLOUR_SHIFT,
        MAX_BRANCH_DISAGREEMENT,
        MAX_GROWTH,
    )
    from napari_dgseg.core.color.normalizers import DEFAULT_METHOD, METHODS

    methods = args.methods or list(METHODS)
    t0 = time.perf_counter()
    load_before = load_average()
    items = build_items(args.n, Path(args.shared))
    records = []
    for model in args.models:
        bundle = load_bundle(model)
        if args.rebank:
            from napari_dgseg.core.color.bank import build_reference_bank
            from napari_dgseg.core.data.synthetic import make_nuclei

            imgs = [make_nuclei(512, domain=args.train_domain, seed=60_000 + i)[0]
                    for i in range(args.rebank)]
            bundle.set_extra("bank", build_reference_bank(bundle.model, imgs, bundle.input_spec))
            bundle.manifest["dcin"] = dict(bundle.manifest.get("dcin") or {}) | {
                "names": [f"{args.train_domain}_rebank_{i}" for i in range(args.rebank)]}
        for item in items:
            with torch.inference_mode():
                rec = run_item(bundle, item, methods)
            rec["model"] = model
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ("model", "split", "source", "scale", "seed")}
                             | {"none": rec["none"], DEFAULT_METHOD: rec.get(DEFAULT_METHOD)},
                             default=str), file=sys.stderr, flush=True)
    out = {
        "benchmark": "dcin_guard",
        "command": "python benchmarks/dcin_guard.py " + " ".join(sys.argv[1:]),
        "models": args.models,
        "methods": methods,
        "default_method": DEFAULT_METHOD,
        "guard": {"AGREE": AGREE, "MAX_GROWTH": MAX_GROWTH, "COLOUR_SHIFT": COLOUR_SHIFT,
                  "MAX_BRANCH_DISAGREEMENT": MAX_BRANCH_DISAGREEMENT},
        "n_per_domain": args.n,
        "rebank": args.rebank,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_state(load_before),
        "rows": summarize(records, methods),
        "records": records,
    }
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
