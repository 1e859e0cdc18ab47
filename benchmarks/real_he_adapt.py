"""Adapting nuclei-hovernet to real H&E crops: agreement with a haematoxylin reference, before and after.

Real tissue has no labels here, so the reference is weak: a haematoxylin mask (colour
deconvolution, Otsu threshold on the H channel, small objects removed; the same as
``benchmarks/real_he.py``). It marks stained chromatin, not nuclei: touching nuclei, pale
vesicular nuclei and dark cytoplasm all fool it, so agreement with it says whether a model
follows the haematoxylin, not whether it segments nuclei correctly.

Targets: 16 crops of 256 px (stride 248) of ``he_tumour_1000px.png`` (TIAToolbox's
stain-normalisation target, BSD-3-Clause), 4 of them held out by the adaptation for its
label-free signal. Scored: those 4 held-out crops and, as a second real image never seen in
adaptation, the two 256 px crops of ``he_tumour_500x300.jpg`` (StarDist's H&E test image,
BSD-3-Clause). Both images live in ``../shared/data/real-he`` and are not shipped.

    python benchmarks/real_he_adapt.py [--shared ../shared] [--iters 200]
        [--target-scale model|native] [--evaluate native|pipeline]

``--target-scale`` is ``adapt``'s (default: ``adapt``'s own default); ``--evaluate pipeline``
scores through the bundle's whole default inference (scale decision included) instead of the
crops' own pixels (the default, as before).

Writes ``benchmarks/results/real_he_adapt.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import load_average, machine_state  # noqa: E402
from real_he import haematoxylin_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "real_he_adapt.json"


def crops(image: np.ndarray, size: int = 256, stride: int = 248) -> list[np.ndarray]:
    h, w = image.shape[:2]
    return [image[y : y + size, x : x + size] for y in range(0, h - size + 1, stride)
            for x in range(0, w - size + 1, stride)]


def agreement(bundle, model: torch.nn.Module, images: list[np.ndarray],
              evaluate: str = "native") -> dict[str, float]:
    """Mean Dice with the haematoxylin reference and mean fraction of pixels called nucleus."""
    from mani_adaptation import pipeline_labels

    from napari_dgseg.core.train.adapt import predict_labels

    dice, frac = [], []
    for img in images:
        if evaluate == "pipeline":
            pred = pipeline_labels(bundle, model, img) > 0
        else:
            pred = predict_labels(model, bundle, img, device="cpu") > 0
        ref = haematoxylin_reference(img)
        s = int(pred.sum()) + int(ref.sum())
        dice.append(1.0 if s == 0 else 2.0 * float((pred & ref).sum()) / s)
        frac.append(float(pred.mean()))
    return {"dice_vs_haematoxylin": round(float(np.mean(dice)), 4),
            "nucleus_fraction": round(float(np.mean(frac)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--target-scale", choices=["model", "native"], default=None)
    ap.add_argument("--evaluate", choices=["native", "pipeline"], default="native")
    args = ap.parse_args()
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.datasets import read_array, to_rgb_uint8
    from napari_dgseg.core.train.adapt import adapt

    torch.set_num_threads(args.threads)
    load0 = load_average()
    folder = Path(args.shared) / "data" / "real-he"
    big = to_rgb_uint8(read_array(folder / "he_tumour_1000px.png"), "he_tumour_1000px.png")
    other = to_rgb_uint8(read_array(folder / "he_tumour_500x300.jpg"), "he_tumour_500x300.jpg")
    targets = crops(big)[:16]
    held, unseen = targets[-4:], crops(other, stride=244)
    b = load_bundle(args.model)
    ev = args.evaluate
    rows = {"parent": {"held_out": agreement(b, b.model, held, ev),
                       "other_image": agreement(b, b.model, unseen, ev)}}
    scale_kw = {} if args.target_scale is None else {"target_scale": args.target_scale}
    for method in ("stats", "mani"):
        t0 = time.perf_counter()
        a = adapt(b, targets, method=method, iters=args.iters, device="cpu", **scale_kw)
        sel = a.provenance["selection"]
        rows[method] = {"held_out": agreement(b, a.model, held, ev),
                        "other_image": agreement(b, a.model, unseen, ev),
                        "target_scale": a.provenance.get("target_scale"),
                        "signal_parent": sel["parent"]["score"],
                        "signal_adapted": sel["adapted"]["score"],
                        "verdict": sel["verdict"], "chosen_iteration": sel["chosen_iteration"],
                        "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({method: rows[method]}), file=sys.stderr, flush=True)
    result = {"model": args.model, "model_sha256": b.sha256, "targets": "16 crops of 256 px of "
              "he_tumour_1000px.png (last 4 held out)", "iters": args.iters, "rows": rows,
              "reference": "haematoxylin mask: rgb2hed H channel > Otsu, objects < 20 px removed "
              "(weak: stained chromatin, not nuclei)", "evaluate": ev,
              "machine": machine_state(load0) | {"torch_threads": torch.get_num_threads()},
              "command": "python benchmarks/real_he_adapt.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| model | Dice vs H reference (held-out crops) | nucleus fraction | Dice vs H reference "
          "(other image) | label-free signal |")
    print("|---|---|---|---|---|")
    for k, r in rows.items():
        sig = f"{r['signal_parent']:.3f} → {r['signal_adapted']:.3f}" if "verdict" in r else "-"
        print(f"| {k} | {r['held_out']['dice_vs_haematoxylin']:.3f} | "
              f"{r['held_out']['nucleus_fraction']:.3f} | "
              f"{r['other_image']['dice_vs_haematoxylin']:.3f} | {sig} |")


if __name__ == "__main__":
    main()
