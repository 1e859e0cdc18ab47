"""Generalisation table: every shipped model and the classical baseline on every style.

Rows: the shipped bundles of a task (discovered through the bundle index; ``--models`` to choose)
and the classical reference (:mod:`napari_dgseg.core.classical`). Columns:

* every domain of the **training renderer** (:mod:`napari_dgseg.core.data.synthetic`); a cell
  whose domain a model was trained on (read from the bundle's provenance) is marked ``*``, every
  other one is a leave-one-style-out cell;
* every style of the **held-out renderer** (:mod:`napari_dgseg.core.data.heldout_nuclei`,
  :mod:`napari_dgseg.core.data.heldout_vessels`), written independently and used only here;
* **real images** with weak references: nuclei, the two real H&E tiles in
  ``../shared/data/real-he`` against a haematoxylin threshold (``rgb2hed`` + global Otsu + small
  objects removed, as in ``benchmarks/real_he.py``; Dice only, the reference has no instances);
  vessels, scikit-image's ``retina`` photograph (``skimage.data.retina()``, 1411 px) at native and
  half size against the green-channel top-hat of :func:`classical_vessels` (so the classical row
  is the reference there and scores 1 by construction).

Metrics: nuclei Dice, AJI, PQ (:func:`napari_dgseg.core.metrics.instance_scores`; semantic
models' masks are split into 8-connected components first); vessels Dice and clDice inside the
field of view. Tiles: for each ``--seeds`` value ``s``, ``--n`` tiles with seeds
``item_seed(90000 + s, i)`` (far from the seeds the shipped models were trained on); each cell is
the mean over seeds of the per-seed mean, with the standard deviation over seeds.

Stdout is one JSON object (progress on stderr). ``--out`` merges this run, under ``--label``, into
a JSON file; ``--doc`` writes the Markdown tables between markers in a Markdown file::

    python benchmarks/generalization.py --label before \
        --out benchmarks/results/generalization.json --doc docs/generalization.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, load_average, machine_state  # noqa: E402

from napari_dgseg.core.inference import TTA_MODES as TTA  # noqa: E402  (--tta -> predict's tta)

SEED_BASE = 90000
CLASSICAL = "classical"
REPRODUCE = (
    "python benchmarks/generalization.py --label {label} "
    "--out benchmarks/results/generalization.json --doc docs/generalization.md"
)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ inputs


def shipped_models(task: str) -> list[str]:
    """Names of the shipped, readable learned bundles of ``task``.

    The shipped classical bundles (``classical-he``, ``classical-fundus``) run the same methods as
    the ``classical`` row, so they are not repeated.
    """
    from napari_dgseg import list_bundles

    return [b["name"] for b in list_bundles()
            if b["where"] == "shipped" and b["task"] == task and not b.get("broken")
            and not str(b.get("family", "")).startswith("classical-")]  # fmt: skip


def task_of(model: str) -> str:
    """Task of a bundle given by name (shipped or user) or by path; "" when unknown."""
    from napari_dgseg import list_bundles
    from napari_dgseg.core.bundle_index import inspect_bundle
    from napari_dgseg.core.errors import BundleError

    if Path(model).suffix == ".dgseg" and Path(model).is_file():
        try:
            return str(inspect_bundle(model).get("task", ""))
        except BundleError:
            return ""
    return next((b["task"] for b in list_bundles() if b["name"] == model), "")


def trained_on(bundle: Any) -> list[str]:
    """Training-renderer domains a bundle was trained on, read from its provenance."""
    from napari_dgseg.core.data.synthetic import list_domains

    known = set(list_domains()["nuclei"]) | set(list_domains()["vessels"])
    out = []
    for src in bundle.manifest.get("provenance", {}).get("sources", []):
        for token in re.split(r"[/\s]", str(src.get("domain", "")) + " " + str(src.get("path", ""))):
            name = re.sub(r"^(nuclei|vessels)-", "", token)
            name = re.sub(r"-\d+$", "", name)
            if name in known and name not in out:
                out.append(name)
    return out


def synthetic_columns(kind: str) -> list[tuple[str, str]]:
    """``(renderer, domain)`` for every training domain and held-out style of ``kind``."""
    from napari_dgseg.core.data.synthetic import list_domains

    d = list_domains(include_heldout=True)
    return [("training", x) for x in d[kind]] + [("heldout", x) for x in d["evaluation_only"][kind]]


def real_images(kind: str, shared: Path, quick: bool) -> list[tuple[str, np.ndarray]]:
    """``(column name, RGB)`` of the real images of ``kind`` (none when they are missing)."""
    if kind == "nuclei":
        from skimage.io import imread

        folder = shared / "data" / "real-he"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg"))
        out = []
        for p in files:
            rgb = np.ascontiguousarray(imread(p)[..., :3])
            out.append((f"real:{p.stem}", rgb[:256, :256] if quick else rgb))
        return out
    from skimage import data
    from skimage.transform import resize

    retina = data.retina()[..., :3]
    half = (resize(retina, (retina.shape[0] // 2, retina.shape[1] // 2), anti_aliasing=True,
                   preserve_range=True) + 0.5).astype(np.uint8)  # fmt: skip
    if quick:
        return [("real:retina-half", half)]
    return [("real:retina-1411", retina), ("real:retina-half", half)]


# ------------------------------------------------------------------------------ scoring


def predict(method: str, bundle: Any, rgb: np.ndarray, kind: str, dcin: str,
            tta: bool | None = None) -> np.ndarray:
    """Instance ids (nuclei) or a 0/1 mask (vessels) from a bundle or the classical method."""
    from napari_dgseg.core.classical import classical_nuclei, classical_vessels
    from napari_dgseg.core.postprocess import semantic_to_instances

    if method == CLASSICAL:
        return classical_nuclei(rgb)[1] if kind == "nuclei" else classical_vessels(rgb)
    pred = bundle.predict(rgb, dcin=dcin, device="cpu", tta=tta)
    labels = np.asarray(pred.labels)
    if kind == "vessels":
        return (labels > 0).astype(np.uint8)
    if getattr(bundle.family, "output", "semantic") == "instances":
        return labels
    return semantic_to_instances(labels, min_size=10)


def score(kind: str, pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None, real: bool) -> dict:
    from napari_dgseg.core.metrics import cldice, dice, instance_scores

    if kind == "nuclei":
        if real:  # weak semantic reference: Dice only
            return {"dice": dice(pred > 0, gt > 0)}
        s = instance_scores(pred, gt)
        return {"dice": s["dice"], "aji": s["aji"], "pq": s["pq"]}
    m = fov if fov is not None else np.ones(gt.shape, bool)
    p, g = (pred > 0) & m, (gt > 0) & m
    return {"dice": dice(p, g), "cldice": cldice(p, g)}


def confounders(kind: str, size: int, style: str, seed: int, gt: np.ndarray) -> dict:
    """Background structures of a held-out tile that a method might mistake for the target.

    Nuclei: keratin, fat, red cells, dense collagen and tissue folds (fold and collagen pixels
    that are not nuclei); vessels: haemorrhages, exudates, drusen and cotton-wool spots (lesion
    pixels that are not vessels). ``{name: bool mask}``, empty masks left out.
    """
    if kind == "nuclei":
        from napari_dgseg.core.data.heldout_nuclei import confounder_masks

        masks = confounder_masks(size, style, seed)
    else:
        from napari_dgseg.core.data.heldout_vessels import lesion_masks

        masks = lesion_masks(size, style, seed)
    return {k: v & (gt == 0) for k, v in masks.items() if np.any(v & (gt == 0))}


def haematoxylin_reference(rgb: np.ndarray) -> np.ndarray:
    """Weak nuclei reference on real H&E: rgb2hed, global Otsu, objects < 20 px removed."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    from napari_dgseg.core.postprocess import remove_small, semantic_to_instances

    h = rgb2hed(rgb)[..., 0]
    mask = h > threshold_otsu(h)
    return remove_small(semantic_to_instances(mask.astype(np.uint8), min_size=1), 20) > 0


def summarise(per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each metric's per-seed mean."""
    out = {}
    for k in per_seed[0]:
        vals = np.array([d[k] for d in per_seed], float)
        out[k] = {"mean": round(float(vals.mean()), 4), "sd": round(float(vals.std()), 4),
                  "per_seed": [round(float(v), 4) for v in vals]}  # fmt: skip
    return out


def run_task(kind: str, args: argparse.Namespace) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.classical import classical_vessels
    from napari_dgseg.core.data.synthetic import item_seed, make_sample

    models = [m for m in args.models if m != CLASSICAL and task_of(m) == kind] if args.models \
        else shipped_models(kind)
    bundles = {m: load_bundle(m) for m in models}
    methods = [*models, CLASSICAL]
    seen = {m: trained_on(b) for m, b in bundles.items()}
    seen[CLASSICAL] = []
    columns: dict[str, dict] = {}
    cells: dict[str, dict[str, dict]] = {m: {} for m in methods}
    fp_counts: dict[str, dict[str, list[int]]] = {}
    for renderer, domain in synthetic_columns(kind):
        columns[domain] = {"renderer": renderer}
        per_method_seed: dict[str, list[dict]] = {m: [] for m in methods}
        for s in args.seeds:
            seeds = [item_seed(SEED_BASE + s, i) for i in range(args.n)]
            samples = [make_sample(kind, args.size, domain, t, renderer=renderer) for t in seeds]
            distractors = ([confounders(kind, args.size, domain, t, smp.labels)
                            for t, smp in zip(seeds, samples, strict=True)]
                           if renderer == "heldout" else [])  # fmt: skip
            for m in methods:
                t0 = time.perf_counter()
                preds = [predict(m, bundles.get(m), smp.image, kind, args.dcin, TTA[args.tta]) for smp in samples]
                scores = [score(kind, p, smp.labels, smp.mask, real=False)
                          for p, smp in zip(preds, samples, strict=True)]  # fmt: skip
                for p, masks in zip(preds, distractors, strict=False):
                    for name, mask in masks.items():
                        hit = fp_counts.setdefault(m, {}).setdefault(name, [0, 0])
                        hit[0] += int(np.count_nonzero((p > 0) & mask))
                        hit[1] += int(np.count_nonzero(mask))
                per_method_seed[m].append({k: float(np.mean([x[k] for x in scores]))
                                           for k in scores[0]})  # fmt: skip
                log(f"{kind} {domain} seed={s} {m}: "
                    + " ".join(f"{k}={v:.3f}" for k, v in per_method_seed[m][-1].items())
                    + f" ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        for m in methods:
            cells[m][domain] = summarise(per_method_seed[m])
    for col, rgb in real_images(kind, Path(args.shared), args.quick):
        if kind == "nuclei":
            ref, fov, what = haematoxylin_reference(rgb), None, "haematoxylin threshold"
        else:
            ref, fov, what = classical_vessels(rgb), None, "classical green top-hat"
        columns[col] = {"renderer": "real", "shape": list(rgb.shape[:2]), "reference": what}
        for m in methods:
            t0 = time.perf_counter()
            s = score(kind, predict(m, bundles.get(m), rgb, kind, args.dcin, TTA[args.tta]), ref, fov, real=True)
            cells[m][col] = summarise([s])
            log(f"{kind} {col} {m}: " + " ".join(f"{k}={v:.3f}" for k, v in s.items())
                + f" ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    false_positives = {
        m: {name: {"called_foreground": c[0], "pixels": c[1],
                   "fraction": round(c[0] / c[1], 4) if c[1] else None}
            for name, c in per.items()}
        for m, per in fp_counts.items()
    }  # fmt: skip
    return {"methods": methods, "trained_on": seen, "columns": columns, "cells": cells,
            "confounder_false_positives": false_positives}  # fmt: skip


# ------------------------------------------------------------------------------ report


METRICS = {"nuclei": ("dice", "aji", "pq"), "vessels": ("dice", "cldice")}
NAMES = {"dice": "Dice", "aji": "AJI", "pq": "PQ", "cldice": "clDice"}


def markdown(result: dict) -> str:
    """The Markdown tables of one run (one table per task and metric)."""
    label = result["label"]
    # the command as it was run (older runs did not store it: the generic form)
    reproduce = result.get("command") or REPRODUCE.format(label=label)
    lines = [f"<!-- generalization:{label}:begin -->",
             f"### Run `{label}` ({result['date']}, seeds {result['seeds']}, "
             f"{result['n']} tiles of {result['size']} px per seed and style, DCIN `{result['dcin']}`)",
             ""]  # fmt: skip
    for kind, task in result["tasks"].items():
        cols = list(task["columns"])
        heads = []
        for c in cols:
            r = task["columns"][c]["renderer"]
            heads.append(f"`{c}` (T)" if r == "training" else f"`{c}` (H)" if r == "heldout"
                         else f"`{c.removeprefix('real:')}` (R)")  # fmt: skip
        for metric in METRICS[kind]:
            use = [c for c in cols if metric in task["cells"][task["methods"][0]][c]]
            hidx = [cols.index(c) for c in use]
            lines += [f"**{kind}, {NAMES[metric]}** (mean ± sd over seeds; `*` = a domain the "
                      "model was trained on)", "",
                      f"Reproduce: `{reproduce}`", "",
                      "| model | " + " | ".join(heads[i] for i in hidx) + " | mean (H) |",
                      "|---|" + "---|" * (len(use) + 1)]  # fmt: skip
            for m in task["methods"]:
                row = []
                held = []
                for c in use:
                    cell = task["cells"][m][c][metric]
                    mark = "*" if c in task["trained_on"].get(m, []) else ""
                    ref = kind == "vessels" and m == CLASSICAL and c.startswith("real:")
                    sd = f" ± {cell['sd']:.2f}" if len(cell["per_seed"]) > 1 else ""
                    row.append("ref" if ref else f"{cell['mean']:.3f}{sd}{mark}")
                    if task["columns"][c]["renderer"] == "heldout":
                        held.append(cell["mean"])
                hm = f"{np.mean(held):.3f}" if held else "-"
                lines.append(f"| `{m}` | " + " | ".join(row) + f" | {hm} |")
            lines.append("")
        fps = task.get("confounder_false_positives") or {}
        names = sorted({n for per in fps.values() for n in per})
        if names:
            what = "confounders" if kind == "nuclei" else "lesions"
            lines += [f"**{kind}, share of {what} called {kind[:-1] if kind == 'vessels' else 'nucleus'}** "
                      "(held-out renderer, all styles and tiles pooled; ground truth: background; "
                      "lower is better)", "",
                      f"Reproduce: `{reproduce}`", "",
                      "| model | " + " | ".join(f"{n} (px)" for n in names) + " |",
                      "|---|" + "---|" * len(names)]  # fmt: skip
            for m in task["methods"]:
                row = []
                for n in names:
                    c = fps.get(m, {}).get(n)
                    row.append("-" if not c or c["fraction"] is None
                               else f"{c['fraction']:.3f} ({c['pixels']})")  # fmt: skip
                lines.append(f"| `{m}` | " + " | ".join(row) + " |")
            lines.append("")
    lines.append(f"<!-- generalization:{label}:end -->")
    return "\n".join(lines)


def write_doc(path: Path, result: dict) -> None:
    """Replace (or append) this label's block of tables in the Markdown file ``path``."""
    block = markdown(result)
    label = result["label"]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Generalisation\n"
    pat = re.compile(rf"<!-- generalization:{re.escape(label)}:begin -->.*?"
                     rf"<!-- generalization:{re.escape(label)}:end -->", re.S)  # fmt: skip
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def merge_json(path: Path, result: dict) -> dict:
    """``{"benchmark", "runs": {label: result}}`` with this run added to what ``path`` holds."""
    record = {"benchmark": "generalization", "runs": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old.get("runs"), dict):
                record["runs"] = old["runs"]
        except (json.JSONDecodeError, AttributeError):
            pass
    previous = record["runs"].get(result["label"])
    if isinstance(previous, dict) and isinstance(previous.get("tasks"), dict):
        # a run of one task keeps the other task's tables of the same label (run per task)
        kept = {k: v for k, v in previous["tasks"].items() if k not in result["tasks"]}
        if kept:
            result = {**result, "tasks": {**kept, **result["tasks"]},
                      "per_task_runs": {**previous.get("per_task_runs", {}),
                                        **{k: {"date": previous.get("date"),
                                               "seconds": previous.get("seconds")} for k in kept}}}
    record["runs"][result["label"]] = result
    return record


def command_line(argv: list[str] | None) -> str:
    """This run as a shell command (with the thread count when it was set), for Reproduce lines."""
    threads = os.environ.get("OMP_NUM_THREADS")
    args = shlex.join(sys.argv[1:] if argv is None else argv)
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + f"python benchmarks/generalization.py {args}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["nuclei", "vessels", "both"], default="both")
    ap.add_argument("--models", nargs="+", help="bundle names or paths (default: all shipped "
                    "bundles of the task); the classical baseline is always added")  # fmt: skip
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="tile seeds")
    ap.add_argument("--n", type=int, default=2, help="tiles per style and seed (default 2)")
    ap.add_argument("--size", type=int, default=256, help="tile side (default 256)")
    ap.add_argument("--dcin", default="auto", help="DCIN mode (default: each bundle's default)")
    ap.add_argument("--tta", choices=sorted(TTA), default="auto",
                    help="flip test-time augmentation: auto (each bundle's default), on, off")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--label", default="current", help="name of this run (e.g. before, after)")
    ap.add_argument("--out", help="JSON file to merge this run into")
    ap.add_argument("--doc", help="Markdown file whose block for --label gets the tables")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one seed, one 128 px tile per style, small real crops")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.n, args.size = args.seeds[:1], 1, 128
    if args.n < 1 or not args.seeds:
        ap.error("--n must be >= 1 and --seeds non-empty")
    unknown = [m for m in args.models or [] if m != CLASSICAL and not task_of(m)]
    if unknown:
        from napari_dgseg import list_bundles

        ap.error(f"unknown model(s) {unknown}; known: {[b['name'] for b in list_bundles()]}, "
                 f"'{CLASSICAL}' or a path to a .dgseg file")  # fmt: skip
    load_before = load_average()
    t0 = time.perf_counter()
    kinds = ["nuclei", "vessels"] if args.task == "both" else [args.task]
    result: dict[str, Any] = {
        "benchmark": "generalization",
        "label": args.label,
        "command": command_line(argv),
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "n": args.n,
        "size": args.size,
        "dcin": args.dcin,
        "tta": args.tta,
        "quick": args.quick,
        "tile_seeds": f"item_seed({SEED_BASE} + seed, i) for i < n",
        "tasks": {k: run_task(k, args) for k in kinds},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine_state(load_before)
    if args.out:
        record = merge_json(Path(args.out), result)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        result = record["runs"][args.label]
    if args.doc:
        write_doc(Path(args.doc), result)
    emit(result)
    return result


if __name__ == "__main__":
    main()
