"""Ablation of global and local alignment in the form of Mind the Gap's table III.

Su, Yao, Yang, Wang, Yan, Sun & Huang, "Mind the Gap: Alleviating Local Imbalance for
Unsupervised Cross-Modality Medical Image Segmentation" (2023), table III: which of style
transfer (global alignment), D1 (local feature mask) and D2 (output-space discriminator) helps.
Here the segmenter is a shipped bundle (``nuclei-unet`` by default) adapted with MaNi (Sharma,
Syed & Brown, MICCAI 2023; the default of ``dgseg adapt``) from the training renderer's ``clean``
domain (labelled source tiles) to an unseen domain of the independent held-out renderer
(``ho-faded-jpeg`` by default: fading, blur, colour fringes, JPEG; unlabelled target tiles).

Rows (every adaptation run: the same seed, iterations, crops, source and target tiles):

* ``parent``: the shipped model;
* ``adapt``: MaNi (BatchNorm frozen, last iterate: ``select=False``, so the components' effect
  is not hidden by checkpoint selection);
* ``adapt+D1`` / ``adapt+D2``: MaNi with the local feature mask discriminator / the output-space
  discriminator (``local_alignment`` / ``output_discriminator`` of ``adapt``, from the
  ``local-align`` work; rows are skipped when this checkout's ``adapt`` lacks them);
* ``adapt+style``: MaNi on source crops rendered in the target style by a style model
  (:mod:`napari_dgseg.core.style`, ``light`` preset) trained per seed on the same source and
  target tiles;
* ``style-only``: the same styled source crops, supervised loss only (MI weight 0): the paper's
  "Style-Transfer" column without any feature alignment;
* ``all``: style + D1 + D2 + MaNi.

Scores: Dice and AJI (instances from the semantic output, as in ``benchmarks/mani_adaptation.py``)
on held-out labelled tiles of the target domain and of the source domain, mean ± sd over seeds.
The style model's own effect is recorded too: the RGB mean/std distance of source test tiles to
the target tiles before and after transfer, and the Sobel-edge correlation of input and output.

    nice -n 10 python benchmarks/local_alignment_ablation.py --seeds 0 1 2 \
        --rows parent adapt adapt+style style-only --out benchmarks/results/local_alignment_ablation.json
    nice -n 10 python benchmarks/local_alignment_ablation.py --seeds 0 1 2 \
        --rows adapt+D1 adapt+D2 all --resume benchmarks/results/local_alignment_ablation.json
    python benchmarks/local_alignment_ablation.py --table benchmarks/results/local_alignment_ablation.json

Style models are cached in ``--cache`` (one per target domain and seed) so that runs added later
(``--resume``) use the same ones. Prints one JSON object on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import emit, load_average, machine_state  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SOURCE = "clean"
METRICS = ("dice", "aji")
#: Row -> what the run uses (``style``: target-styled source; ``mi``: MaNi's MI loss; D1, D2).
ROWS: dict[str, dict] = {
    "parent": {"adapt": False, "style": False, "mi": False, "d1": False, "d2": False},
    "adapt": {"adapt": True, "style": False, "mi": True, "d1": False, "d2": False},
    "adapt+D1": {"adapt": True, "style": False, "mi": True, "d1": True, "d2": False},
    "adapt+D2": {"adapt": True, "style": False, "mi": True, "d1": False, "d2": True},
    "adapt+style": {"adapt": True, "style": True, "mi": True, "d1": False, "d2": False},
    "style-only": {"adapt": True, "style": True, "mi": False, "d1": False, "d2": False},
    "all": {"adapt": True, "style": True, "mi": True, "d1": True, "d2": True},
}


def tiles(domain: str, seed0: int, n: int, size: int = 256) -> list:
    """``n`` labelled samples of ``domain`` (training or held-out renderer, by name)."""
    from napari_dgseg.core.data.synthetic import make_sample

    return [make_sample("nuclei", size, domain, seed0 + i) for i in range(n)]


def scorer(bundle, samples: list):
    """``model -> {dice, aji}`` averaged over labelled ``samples``."""
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.postprocess import semantic_to_instances
    from napari_dgseg.core.train.adapt import predict_labels

    semantic = bundle.family.output != "instances"

    def score(model: torch.nn.Module) -> dict[str, float]:
        rows = []
        for s in samples:
            pred = predict_labels(model.eval(), bundle, s.image, device="cpu")
            if semantic:
                pred = semantic_to_instances(pred)
            sc = instance_scores(pred, s.labels)
            rows.append([sc[k] for k in METRICS])
        return dict(zip(METRICS, np.round(np.mean(rows, axis=0), 4).tolist(), strict=True))

    return score


def evaluation_model(bundle) -> torch.nn.Module:
    """What the adapted bundle predicts with: with D1 stored, the network reweighted by it."""
    try:
        from napari_dgseg.core.local_align import inference_model
    except ImportError:  # a checkout without the local-align work
        return bundle.model
    return inference_model(bundle)


def local_alignment_available() -> bool:
    """True when this checkout's ``adapt`` takes the D1/D2 switches of the local-align work."""
    from napari_dgseg.core.train.adapt import adapt

    params = inspect.signature(adapt).parameters
    return "local_alignment" in params and "output_discriminator" in params


def style_model(source: list, target: list, seed: int, args: argparse.Namespace):
    """The cached style model of this target domain and seed (trained when missing)."""
    from napari_dgseg.core.style import get_preset, load_style, save_style, train_style

    name = f"style_{args.target_domain}_seed{seed}_{args.style_iters}_{args.n_source}_{args.n_target}"
    path = Path(args.cache) / f"{name}.dgstyle"
    if path.is_file():
        return load_style(path), 0.0
    t0 = time.perf_counter()
    model = train_style([s.image for s in source], [s.image for s in target],
                        config=get_preset("light"), iters=args.style_iters, size=128, batch=4,
                        seed=seed, device="cpu", source_name=SOURCE,
                        target_name=args.target_domain)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_style(model, path, overwrite=True)
    return model, seconds


def style_effect(model, test_source: list, target: list) -> dict:
    """Colour distance to the target before/after transfer and edge correlation (source tests)."""
    from scipy import ndimage as ndi

    from napari_dgseg.core.style import colour_stats

    def dist(a: dict, b: dict) -> float:
        return float(np.abs(np.subtract(a["mean"], b["mean"])).sum()
                     + np.abs(np.subtract(a["std"], b["std"])).sum())

    def edges(im: np.ndarray) -> np.ndarray:
        g = im.astype(np.float64).mean(axis=2)
        return np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1))

    images = [s.image for s in test_source]
    styled = [model.transfer(im) for im in images]
    tgt = colour_stats([s.image for s in target])
    corr = [float(np.corrcoef(edges(a).ravel(), edges(b).ravel())[0, 1])
            for a, b in zip(images, styled, strict=True)]
    return {"colour_distance_before": round(dist(colour_stats(images), tgt), 2),
            "colour_distance_after": round(dist(colour_stats(styled), tgt), 2),
            "edge_correlation": round(float(np.mean(corr)), 4)}


def save_montage(model, test_source: list, target: list, path: str, n: int = 3) -> None:
    """Rows: source test tiles, the same rendered in the target style, real target tiles."""
    from PIL import Image

    src = [s.image for s in test_source[:n]]
    rows = [src, [model.transfer(im) for im in src], [s.image for s in target[:n]]]
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path, optimize=True)


def one_seed(bundle, seed: int, rows: list[str], args: argparse.Namespace,
             keep=lambda rec: None) -> list[dict]:
    """Every requested row for one seed (same tiles, same adaptation stream); ``keep(rec)``
    is called after each row (the script stores the result so far)."""
    from napari_dgseg.core.train.adapt import adapt

    base = 10_000 * (seed + 1)
    source = tiles(SOURCE, base, args.n_source)
    for s in source:
        s.domain = SOURCE
    target_samples = tiles(args.target_domain, base + 300, args.n_target)
    target = [s.image for s in target_samples]
    test_t = tiles(args.target_domain, base + 600, args.n_test)
    test_s = tiles(SOURCE, base + 900, args.n_test)
    score_t, score_s = scorer(bundle, test_t), scorer(bundle, test_s)
    style = effect = None
    style_seconds = 0.0
    if any(ROWS[r]["style"] for r in rows):
        if args.shared_style and seed != args.seeds[0]:
            sbase = 10_000 * (args.seeds[0] + 1)  # the first seed's tiles train the one model
            style, style_seconds = style_model(tiles(SOURCE, sbase, args.n_source),
                                               tiles(args.target_domain, sbase + 300, args.n_target),
                                               args.seeds[0], args)
        else:
            style, style_seconds = style_model(source, target_samples, seed, args)
        if args.montage and seed == args.seeds[0]:
            save_montage(style, test_s, target_samples, args.montage)
        effect = style_effect(style, test_s, target_samples)
        print(json.dumps({"seed": seed, "style": effect, "seconds": round(style_seconds, 1)}),
              file=sys.stderr, flush=True)
    out = []
    for row in rows:
        spec = ROWS[row]
        t0 = time.perf_counter()
        if not spec["adapt"]:
            model = bundle.model
        else:
            extra = {}
            if spec["d1"] or spec["d2"]:
                extra = {"local_alignment": spec["d1"], "output_discriminator": spec["d2"]}
            result = adapt(bundle, target, source=source, iters=args.iters, size=args.size,
                           batch=args.batch, seed=seed, device="cpu", select=False, holdout=0,
                           select_every=args.iters, mi_weight=1.0 if spec["mi"] else 0.0,
                           source_transform=style.batch_transform() if spec["style"] else None,
                           **extra)
            model = evaluation_model(result)
        rec = {"seed": seed, "row": row, "target": score_t(model), "source": score_s(model),
               "seconds": round(time.perf_counter() - t0, 1)}
        if spec["style"]:
            rec["style"] = {**effect, "train_seconds": round(style_seconds, 1),
                            "sha256": style.sha256}
        print(json.dumps(rec), file=sys.stderr, flush=True)
        out.append(rec)
        keep(rec)
    return out


def summarise(result: dict) -> dict:
    """Mean ± sd over seeds per row and evaluation domain."""
    summary = {}
    for row in ROWS:
        runs = [r for r in result["runs"] if r["row"] == row]
        if not runs:
            continue
        entry = {"seeds": sorted(r["seed"] for r in runs)}
        for where in ("target", "source"):
            vals = np.array([[r[where][k] for k in METRICS] for r in runs])
            entry[where] = {k: {"mean": round(float(vals[:, i].mean()), 4),
                                "std": round(float(vals[:, i].std()), 4)}
                            for i, k in enumerate(METRICS)}
        summary[row] = entry
    result["summary"] = summary
    return result


def table(result: dict) -> str:
    """Table III form: one column per row, check marks for the components, scores below."""
    s = result["summary"]
    cols = [r for r in ROWS if r in s]
    tick = {True: "✓", False: "-"}
    lines = ["| | " + " | ".join(f"`{c}`" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for comp, label in (("mi", "MaNi (MI loss)"), ("style", "Style transfer"), ("d1", "D1"),
                        ("d2", "D2")):
        lines.append(f"| {label} | " + " | ".join(tick[ROWS[c][comp]] for c in cols) + " |")
    for where, name in (("target", result["settings"]["target_domain"]), ("source", SOURCE)):
        for k in METRICS:
            cells = [f"{s[c][where][k]['mean']:.3f} ± {s[c][where][k]['std']:.3f}" for c in cols]
            lines.append(f"| {k.upper() if k == 'aji' else 'Dice'} `{name}` | " + " | ".join(cells) + " |")
    lines.append("| seeds | " + " | ".join(",".join(map(str, s[c]["seeds"])) for c in cols) + " |")
    return "\n".join(lines)


def store(result: dict, rec: dict, args: argparse.Namespace) -> None:
    """Add one run and, with ``--out``/``--resume``, rewrite the file (a stopped run keeps it)."""
    result["runs"].append(rec)
    if args.out or args.resume:
        Path(args.out or args.resume).write_text(json.dumps(summarise(result), indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="nuclei-unet")
    p.add_argument("--target-domain", default="ho-faded-jpeg")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--iters", type=int, default=60, help="adaptation iterations")
    p.add_argument("--style-iters", type=int, default=200, help="style-model iterations")
    p.add_argument("--size", type=int, default=128, help="adaptation crop side")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-source", type=int, default=12)
    p.add_argument("--n-target", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--cache", default="/tmp/dgseg-style-cache", help="style-model cache folder")
    p.add_argument("--shared-style", action="store_true",
                   help="one style model, trained on the first seed's tiles, for every seed")
    p.add_argument("--montage", default=None, help="PNG: source / styled / target tiles")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--resume", default=None, help="add the rows to this stored result (rewritten)")
    p.add_argument("--table", default=None, help="print the table of a stored result and exit")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(1)
    from napari_dgseg.core.bundle import load_bundle

    rows = list(args.rows)
    skipped = []
    if not local_alignment_available():
        skipped = [r for r in rows if ROWS[r]["d1"] or ROWS[r]["d2"]]
        rows = [r for r in rows if r not in skipped]
        if skipped:
            print(f"skipping {skipped}: this checkout's adapt has no local alignment (D1/D2)",
                  file=sys.stderr)
    bundle = load_bundle(args.model)
    load = load_average()
    result = json.loads(Path(args.resume).read_text()) if args.resume else {
        "benchmark": "local_alignment_ablation",
        "model": bundle.name,
        "model_sha256": bundle.sha256,
        "settings": {"source_domain": SOURCE, "target_domain": args.target_domain,
                     "iters": args.iters, "style_iters": args.style_iters,
                     "style_preset": "light", "style_crop": 128, "size": args.size,
                     "batch": args.batch, "n_source": args.n_source, "n_target": args.n_target,
                     "n_test": args.n_test, "select": False, "norm": "frozen",
                     "shared_style": args.shared_style},
        "runs": [],
        "commands": [],
    }
    if args.resume and result["settings"]["target_domain"] != args.target_domain:
        raise SystemExit("--resume result was made for another --target-domain")
    t0 = time.perf_counter()
    command = {"argv": sys.argv[1:], "skipped_rows": skipped, "seconds": None,
               "machine": {"cpu_count": machine_state(load)["cpu_count"],
                           "loadavg_1_5_15_before": load}}
    result["commands"].append(command)  # recorded first: a stopped run still says how it ran
    done = {(r["seed"], r["row"]) for r in result["runs"]}
    for seed in args.seeds:
        todo = [r for r in rows if (seed, r) not in done]
        if todo:
            one_seed(bundle, seed, todo, args, keep=lambda rec: store(result, rec, args))
    command.update({"seconds": round(time.perf_counter() - t0, 1), "machine": machine_state(load)})
    result = summarise(result)
    emit(result, args.out or args.resume)
    print(table(result), file=sys.stderr)


if __name__ == "__main__":
    main()
