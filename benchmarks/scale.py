"""Real images at their own scale: the shipped models on rescaled synthetic and real images.

Synthetic part: images of the shipped models' training scale (nuclei ``clean`` and
``dark-stain`` 256 px; vessels ``camera-a`` and ``camera-c`` 256 px; seeds 100-101) are resized by
0.33, 0.5, 1, 2 and 3 (anti-aliased bilinear, labels by nearest neighbour). Each is segmented
three ways: ``none`` (no resampling: the behaviour before scales existed), ``true`` (the true
factor ``1 / s`` given, as ``--scale``), ``estimated`` (the default: the factor estimated from the
image). Scores: Dice of the foreground (vessels inside the field of view) and, for instance
models, AJI. The estimator's error is ``estimated factor / true factor - 1`` for every method.

Real part (weak references, no ground truth): the real H&E tiles in ``../shared/data/real-he``
at 1x and 2x (nucleus count and Dice with a haematoxylin reference made at the same scale), and
scikit-image's real fundus photograph ``retina.jpg`` at native size and half size (vessel
fraction inside the field of view and Dice with a green-channel black top-hat reference whose
structuring element follows the field of view), with a figure.

``--calibrate`` prints the estimator's calibration constants and the synthetic object sizes
(:data:`napari_dgseg.core.scale_estimate.CALIBRATION`, :data:`napari_dgseg.core.scale.
TASK_DEFAULTS`) from seeds 1000-1007 instead.

Stdout is one JSON object; progress goes to stderr. Usage::

    nice -n 10 python benchmarks/scale.py --out benchmarks/results/scale.json \\
        --figure docs/images/scale_retina.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402

SCALES = (0.33, 0.5, 1.0, 2.0, 3.0)
NUCLEI_DOMAINS = ("clean", "dark-stain")
VESSEL_DOMAINS = ("camera-a", "camera-c")
NUCLEI_MODELS = ("nuclei-hovernet", "nuclei-unet")
VESSEL_MODELS = ("vessels-ram-sgcg", "vessels-sqvae")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def rescaled(image: np.ndarray, labels: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Image resized by ``s`` like inference resizes; labels by nearest neighbour."""
    from napari_dgseg.core.resample import _nearest, resampled_shape, zoom_image

    shape = resampled_shape(*labels.shape, s)
    return to_uint8(zoom_image(image, s)), _nearest(np.asarray(labels), shape)


def calibrate() -> dict[str, Any]:
    from napari_dgseg.core.data.synthetic import make_nuclei, make_vessels
    from napari_dgseg.core.scale import measure_object_size
    from napari_dgseg.core.scale_estimate import raw_object_size

    seeds = range(1000, 1008)
    nuc = [make_nuclei(256, "clean", seed=s) for s in seeds]
    ves = [make_vessels(256, "camera-a", seed=s) for s in seeds]
    # the shipped models' training sets: seeds 0-7 of the same renderers and sizes
    nuc_size = measure_object_size([make_nuclei(256, "clean", seed=s)[1] for s in range(8)], "nuclei")
    ves_size = measure_object_size([make_vessels(256, "camera-a", seed=s)[1] for s in range(8)],
                                   "vessels")
    raw = {
        "log-blobs": [raw_object_size(im / 255.0, "log-blobs") for im, _ in nuc],
        "fov": [raw_object_size(im / 255.0, "fov") for im, _, _ in ves],
        "hessian-ridges": [raw_object_size(im / 255.0, "hessian-ridges") for im, _, _ in ves],
    }
    target = {"log-blobs": nuc_size, "fov": ves_size, "hessian-ridges": ves_size}
    return {
        "benchmark": "scale_calibration",
        "object_size_px": {"nuclei": round(nuc_size, 2), "vessels": round(ves_size, 2)},
        "calibration": {m: round(target[m] / float(np.median(v)), 5) for m, v in raw.items()},
        "raw": {m: [round(x, 4) for x in v] for m, v in raw.items()},
    }


def synthetic(n: int) -> tuple[list[dict], list[dict]]:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei, make_vessels
    from napari_dgseg.core.imageprep import ImageAdapter
    from napari_dgseg.core.metrics import dice, instance_scores
    from napari_dgseg.core.scale import bundle_scale
    from napari_dgseg.core.scale_estimate import METHODS, estimate_object_size

    rows, errors = [], []
    for kind, domains, models in (("nuclei", NUCLEI_DOMAINS, NUCLEI_MODELS),
                                  ("vessels", VESSEL_DOMAINS, VESSEL_MODELS)):
        bundles = [load_bundle(m) for m in models]
        for domain in domains:
            for seed in range(100, 100 + n):
                if kind == "nuclei":
                    image, labels = make_nuclei(256, domain, seed=seed)
                    fov = np.ones(labels.shape, bool)
                else:
                    image, labels, fov = make_vessels(256, domain, seed=seed)
                for s in SCALES:
                    img, lab = rescaled(image, labels, s)
                    _, fov_s = rescaled(image, fov.astype(np.uint8), s)
                    fov_s = fov_s > 0
                    true = 1.0 / s
                    adapter = ImageAdapter.from_array(img)
                    model_obj = bundle_scale({"task": kind})["object_size_px"]
                    for method in METHODS[kind]:
                        est = estimate_object_size(adapter, kind, method)
                        size = est["object_size_px"]
                        factor = None if size is None else model_obj / size
                        errors.append({
                            "kind": kind, "domain": domain, "seed": seed, "scale": s,
                            "method": method, "true_factor": round(true, 4),
                            "estimated_factor": None if factor is None else round(factor, 4),
                            "relative_error": None if factor is None else round(factor / true - 1, 4),
                        })
                    for bundle in bundles:
                        for mode, kw in (("none", {"rescale": "off"}), ("true", {"scale": true}),
                                         ("estimated", {})):
                            t0 = time.perf_counter()
                            pred = bundle.predict(img, device="cpu", **kw)
                            fg = pred.labels > 0
                            row = {
                                "kind": kind, "domain": domain, "seed": seed, "scale": s,
                                "model": bundle.name, "mode": mode,
                                "factor": pred.provenance["scale"]["factor"],
                                "dice": round(float(dice(fg & fov_s, (lab > 0) & fov_s)), 4),
                                "seconds": round(time.perf_counter() - t0, 2),
                            }
                            if bundle.family.output == "instances":
                                row["aji"] = round(float(instance_scores(pred.labels, lab)["aji"]), 4)
                            rows.append(row)
                            log(row)
    return rows, errors


def summarise(rows: list[dict], errors: list[dict]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for r in rows:
        key = f"{r['model']}|{r['scale']}|{r['mode']}"
        table.setdefault(key, {"dice": [], "aji": []})
        table[key]["dice"].append(r["dice"])
        if "aji" in r:
            table[key]["aji"].append(r["aji"])
    scores = {k: {m: round(float(np.mean(v)), 4) if v else None for m, v in d.items()}
              for k, d in table.items()}
    err: dict[str, list] = {}
    for e in errors:
        err.setdefault(f"{e['kind']}|{e['method']}|{e['scale']}", []).append(e["relative_error"])
    err_summary = {}
    for k, v in err.items():
        found = [abs(x) for x in v if x is not None]
        err_summary[k] = {
            "median_abs_error": round(float(np.median(found)), 4) if found else None,
            "max_abs_error": round(float(np.max(found)), 4) if found else None,
            "within_25pct": round(sum(x <= 0.25 for x in found) / len(v), 3),
            "no_estimate": len(v) - len(found),
            "images": len(v),
        }
    return {"scores": scores, "estimator": err_summary}


def haematoxylin_reference(rgb: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    h = rgb2hed(rgb)[..., 0]
    return remove_small_objects(h > threshold_otsu(h), min_size)


def tophat_reference(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vessels of a fundus photograph: black top-hat of the green channel inside the field of
    view, disk radius 1.5 % of the field-of-view radius, Otsu threshold, small bits removed."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import black_tophat, disk, remove_small_objects

    from napari_dgseg.core.fov import field_of_view
    from napari_dgseg.core.imageprep import ImageAdapter

    fov, info = field_of_view(ImageAdapter.from_array(rgb))
    radius = info["radius_px"]
    g = ndi.gaussian_filter(rgb[..., 1].astype(np.float32), 0.002 * radius + 0.5)
    top = black_tophat(g, disk(max(2, int(round(0.015 * radius)))))
    vessels = top > threshold_otsu(top[fov])
    vessels = remove_small_objects(vessels & fov, max(8, int(round((0.02 * radius) ** 2))))
    return vessels, fov


def real_images(shared: Path, figure: str | None) -> list[dict]:
    from skimage import data as skdata
    from skimage.io import imread

    from napari_dgseg import load_bundle
    from napari_dgseg.core.metrics import dice

    rows: list[dict] = []
    folder = shared / "data" / "real-he"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg"))
    if not files:
        log(f"no real H&E images in {folder}: skipped")
    for path in files:
        base = imread(path)[..., :3]
        for s in (1.0, 2.0):
            rgb = base if s == 1.0 else rescaled(base, np.zeros(base.shape[:2], np.int32), s)[0]
            ref = haematoxylin_reference(rgb, int(20 * s * s))
            for model in NUCLEI_MODELS:
                bundle = load_bundle(model)
                for mode, kw in (("none", {"rescale": "off"}), ("estimated", {})):
                    pred = bundle.predict(rgb, device="cpu", **kw)
                    fg = pred.labels > 0
                    from napari_dgseg.core.postprocess import semantic_to_instances

                    inst = (pred.labels if bundle.family.output == "instances"
                            else semantic_to_instances(pred.labels, min_size=int(10 * s * s)))
                    rows.append({"image": path.name, "scale": s, "model": model, "mode": mode,
                                 "factor": pred.provenance["scale"]["factor"],
                                 "nuclei": int(len(np.unique(inst)) - 1),
                                 "nucleus_fraction": round(float(fg.mean()), 4),
                                 "reference_fraction": round(float(ref.mean()), 4),
                                 "dice_vs_haematoxylin": round(float(dice(fg, ref)), 4)})
                    log(rows[-1])
    retina = skdata.retina()[..., :3]
    panels = {}
    for s in (1.0, 0.5):
        rgb = retina if s == 1.0 else rescaled(retina, np.zeros(retina.shape[:2], np.int32), s)[0]
        ref, fov = tophat_reference(rgb)
        for model in VESSEL_MODELS:
            bundle = load_bundle(model)
            modes = [("none", {"rescale": "off", "fov": "off"}), ("estimated", {})]
            if model == VESSEL_MODELS[0]:
                modes.append(("estimated, no FOV", {"fov": "off"}))
            for mode, kw in modes:
                pred = bundle.predict(rgb, device="cpu", **kw)
                fg = pred.labels > 0
                rows.append({"image": "skimage retina.jpg", "scale": s, "model": model,
                             "mode": mode, "factor": pred.provenance["scale"]["factor"],
                             "estimate": pred.provenance["scale"].get("estimate"),
                             "vessel_fraction_in_fov": round(float(fg[fov].mean()), 4),
                             "reference_fraction_in_fov": round(float(ref[fov].mean()), 4),
                             "dice_vs_tophat": round(float(dice(fg & fov, ref)), 4)})
                log(rows[-1])
                if model == VESSEL_MODELS[0]:
                    panels[(s, mode)] = fg
        panels[(s, "reference")] = ref
        panels[(s, "image")] = rgb
    if figure:
        save_figure(panels, figure)
    return rows


def save_figure(panels: dict, path: str, side: int = 300) -> None:
    """A 2 x 4 grid (native, half size) x (image, reference, before, after) as a PNG (Pillow)."""
    from PIL import Image, ImageDraw

    cols = [("image", "image"), ("reference", "top-hat reference"),
            ("none", "before: no rescaling"), ("estimated", "scale estimated + FOV")]
    pad, head = 6, 34
    canvas = Image.new("RGB", (4 * side + 5 * pad, 2 * (side + head) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, s in enumerate((1.0, 0.5)):
        for j, (key, title) in enumerate(cols):
            img = np.asarray(panels[(s, key)])
            if img.dtype == bool:
                img = np.where(img, 255, 0).astype(np.uint8)
            tile = Image.fromarray(img).convert("RGB").resize((side, side), Image.Resampling.BOX)
            x, y = pad + j * (side + pad), i * (side + head) + head
            canvas.paste(tile, (x, y))
            label = f"{title} ({img.shape[0]} px)" if key == "image" else title
            draw.text((x, y - head + 8), label, fill="black")
    canvas.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/scale.md from a result JSON."""
    scores = result["summary"]["scores"]
    scales = result["scales"]
    lines = []
    models = sorted({k.split("|")[0] for k in scores}, key=lambda m: (m.startswith("v"), m))
    lines.append("| model | metric | mode | " + " | ".join(f"{s:g}x" for s in scales) + " |")
    lines.append("|---|---|---|" + "---|" * len(scales))
    for model in models:
        for metric in ("dice", "aji"):
            if scores.get(f"{model}|1.0|none", {}).get(metric) is None:
                continue
            for mode in ("none", "true", "estimated"):
                vals = [scores.get(f"{model}|{s}|{mode}", {}).get(metric) for s in scales]
                lines.append(f"| {model} | {metric} | {mode} | "
                             + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines.append("")
    groups: dict[str, list] = {}
    for e in result["estimator_errors"]:
        groups.setdefault(f"{e['kind']}|{e['method']}|{e['scale']}", []).append(e["relative_error"])
    lines.append("| objects | estimator | " + " | ".join(f"{s:g}x" for s in scales) + " |")
    lines.append("|---|---|" + "---|" * len(scales))
    for key in sorted({k.rsplit("|", 1)[0] for k in groups}, key=lambda k: (k[0], "ridge" in k)):
        cells = []
        for s in scales:
            errs = groups.get(f"{key}|{s}", [])
            found = [abs(v) for v in errs if v is not None]
            cell = f"{100 * float(np.median(found)):.0f} %" if found else "none found"
            missing = len(errs) - len(found)
            cells.append(cell + (f", {missing}/{len(errs)} none" if missing and found else ""))
        kind, method = key.split("|")
        lines.append(f"| {kind} | {method} | " + " | ".join(cells) + " |")
    lines.append("")
    he = [r for r in result["real"] if "nuclei" in r]
    if he:
        lines.append("| image | model | mode | scale | factor | nuclei | fraction | reference | "
                     "Dice vs H |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in he:
            lines.append(f"| {r['image']} | {r['model']} | {r['mode']} | {r['scale']:g}x | "
                         f"{r['factor']:.3g} | {r['nuclei']} | {r['nucleus_fraction']:.3f} | "
                         f"{r['reference_fraction']:.3f} | {r['dice_vs_haematoxylin']:.3f} |")
        lines.append("")
    ret = [r for r in result["real"] if "vessel_fraction_in_fov" in r]
    if ret:
        lines.append("| model | mode | size | factor | vessel fraction | reference | Dice vs top-hat |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in ret:
            size = "native 1411 px" if r["scale"] == 1.0 else "half 706 px"
            lines.append(f"| {r['model']} | {r['mode']} | {size} | {r['factor']:.3g} | "
                         f"{r['vessel_fraction_in_fov']:.3f} | {r['reference_fraction_in_fov']:.3f} "
                         f"| {r['dice_vs_tophat']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--n", type=int, default=2, help="synthetic images per domain")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--figure", help="write the retina figure here (PNG)")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--markdown", metavar="JSON", help="print the docs tables of a result file")
    args = ap.parse_args()
    if args.markdown:
        import json

        print(markdown(json.loads(Path(args.markdown).read_text(encoding="utf-8"))))
        return
    if args.calibrate:
        emit(calibrate(), args.out)
        return
    load = load_average()
    t0 = time.perf_counter()
    rows, errors = synthetic(args.n)
    real = [] if args.skip_real else real_images(Path(args.shared), args.figure)
    emit({
        "benchmark": "scale",
        "scales": list(SCALES),
        "synthetic_images_per_domain": args.n,
        "summary": summarise(rows, errors),
        "real": real,
        "synthetic": rows,
        "estimator_errors": errors,
        "seconds": round(time.perf_counter() - t0, 1),
        **machine_state(load),
    }, args.out)


if __name__ == "__main__":
    main()
