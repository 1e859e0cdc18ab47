"""Adaptation benchmark: parent vs target statistics vs MaNi vs MaNi with label-free selection.

For every shipped bundle given (``--models``), every unseen synthetic domain (``--domains``) and
every seed: draw ``--n-target`` unlabelled target tiles (256 px) of the domain, adapt the bundle
with the default settings of ``dgseg adapt`` (MaNi: Sharma, Syed & Brown, "MaNi: Maximizing
Mutual Information for Nuclei Cross-Domain Unsupervised Segmentation", MICCAI 2023; BatchNorm
frozen; the bundle's replay set as labelled source) and with ``--method stats`` (target
BatchNorm statistics, Li et al. 2016), then score on held-out labelled tiles of the domain and of
the source domain (``clean``): Dice, AJI, PQ. Every scored MaNi checkpoint (the parent is
checkpoint 0) is measured against the labels, so the table gives

* parent: the shipped model;
* stats: target statistics;
* MaNi (last): the last iterate (``select=False``);
* MaNi + selection: the checkpoint the label-free signal picks (what ``dgseg adapt`` returns);

and the Spearman correlation between each label-free signal and target Dice over the MaNi
checkpoints of a run (the parent included). Domains: ``pale-scanner`` (stain/colour), ``blurry-jpeg`` (blur and JPEG
compression), ``lymphoid-dense`` (morphology: small, round, packed nuclei in the training stain;
:mod:`napari_dgseg.core.data.synthetic_lymphoid`). The parents are the bundles as shipped; seeds
vary the target and test tiles and the adaptation's random stream.

    python benchmarks/mani_adaptation.py --models nuclei-hovernet --seeds 0 1 2
    python benchmarks/mani_adaptation.py --quick            # 1 seed, 40 iterations, 2 domains

Writes ``benchmarks/results/mani_adaptation_<model>.json`` (``--out`` to change) and prints a
Markdown table; ``--table FILE.json`` re-prints the table of a stored result, re-applying the
current selection rule to its stored checkpoints (``--write`` stores that summary).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The weight average of the last iterate and the parent the table reports (``--wise``).
AVERAGE = 0.5

sys.path.insert(0, str(Path(__file__).parent))
from _report import load_average, machine_state  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METRICS = ("dice", "aji", "pq")
SOURCE = "clean"
DOMAINS = ("pale-scanner", "blurry-jpeg", "lymphoid-dense")
#: The methods a run can hold, in table order (``classical``: the classical baseline on the same
#: tiles; ``mani_selected``: what ``adapt`` returns by default; ``mani_avg``:
#: ``adapt(average=AVERAGE)``).
METHODS = ("classical", "parent", "stats", "mani", "mani_selected", "mani_avg")
SIGNALS = ("prior_match", "agreement", "certainty", "agreement_x_certainty",
           "classical_agreement")


#: Selection domains: shifts of the *training* renderer that the shipped models never saw, for
#: choosing adaptation settings without touching the held-out renderer's styles (evaluation).
#: ``DOMAIN@F``: rendered at ``F`` x the pixel size (nuclei ``F`` times smaller); ``DOMAIN+jpegQ``:
#: Gaussian blur 1.2 px then JPEG quality ``Q`` (beyond the training augmentation);
#: ``DOMAIN+hueD``: hue rotated by ``D`` degrees.
SELECTION_DOMAINS = ("lymphoid-dense", "clean@0.6", "dark-stain+jpeg12", "warm-scanner+hue25")


def _shifted(domain: str, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    import io

    from PIL import Image
    from scipy import ndimage as ndi
    from skimage.color import hsv2rgb, rgb2hsv
    from skimage.transform import resize

    if "@" in domain:
        base, f = domain.split("@")
        big = int(round(size / float(f)))
        img, lab = make_tile(base, seed, big)
        img = (resize(img, (size, size, 3), order=1, anti_aliasing=True) * 255 + 0.5).astype(np.uint8)
        lab = resize(lab, (size, size), order=0, anti_aliasing=False, preserve_range=True)
        return img, lab.astype(np.int32)
    base, shift = domain.split("+")
    img, lab = make_tile(base, seed, size)
    if shift.startswith("jpeg"):
        img = ndi.gaussian_filter(img.astype(np.float32), (1.2, 1.2, 0)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(shift[4:]))
        return np.asarray(Image.open(buf).convert("RGB")), lab
    hsv = rgb2hsv(img)
    hsv[..., 0] = (hsv[..., 0] + float(shift[3:]) / 360.0) % 1.0
    return (hsv2rgb(hsv) * 255 + 0.5).astype(np.uint8), lab


def make_tile(domain: str, seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One labelled tile of ``domain``: a renderer domain, ``lymphoid-dense``, a held-out style
    (``ho-*``) or a shifted training domain (:data:`SELECTION_DOMAINS`)."""
    if "@" in domain or "+" in domain:
        return _shifted(domain, seed, size)
    from napari_dgseg.core.data.heldout_nuclei import make_heldout_nuclei
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.data.synthetic_lymphoid import LYMPHOID, make_lymphoid_nuclei

    if domain.startswith("ho-"):  # the independently written held-out renderer
        return make_heldout_nuclei(size, domain, seed)
    if domain == LYMPHOID:
        return make_lymphoid_nuclei(size, "clean", seed)
    return make_nuclei(size, domain, seed)


def pipeline_labels(bundle, model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Labels of ``image`` by ``model`` through the whole default inference of ``bundle``
    (scale decision and size check, DCIN default; flips off, as the label-free judge runs)."""
    import copy

    twin = copy.copy(bundle)
    twin._model = model
    return np.asarray(twin.predict(image, device="cpu", tta=False).labels)


def scorer(bundle, tiles: list[tuple[np.ndarray, np.ndarray]],
           evaluate: str = "native") -> Callable[[torch.nn.Module], dict]:
    """``model -> {dice, aji, pq}`` averaged over labelled ``tiles`` with the bundle's post-processing.

    ``evaluate="native"``: the network on the tile's own pixels (the benchmark until 2026-12-02);
    ``"pipeline"``: through the bundle's default inference, scale decision included (what a
    user's ``dgseg predict`` does).
    """
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.postprocess import semantic_to_instances
    from napari_dgseg.core.train.adapt import predict_labels

    semantic = bundle.family.output != "instances"

    def score(model: torch.nn.Module) -> dict[str, float]:
        rows = []
        for img, lab in tiles:
            if evaluate == "pipeline":
                pred = pipeline_labels(bundle, model, img)
                model.eval()
            else:
                pred = predict_labels(model, bundle, img, device="cpu")
            if semantic:
                pred = semantic_to_instances(pred)
            sc = instance_scores(pred, lab)
            rows.append([sc[k] for k in METRICS])
        return dict(zip(METRICS, np.round(np.mean(rows, axis=0), 4).tolist(), strict=True))

    return score


def classical_scores(tiles: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The classical baseline (haematoxylin deconvolution, Otsu, distance watershed:
    :func:`napari_dgseg.core.classical.classical_nuclei`) on labelled ``tiles``, averaged."""
    from napari_dgseg.core.classical import classical_nuclei
    from napari_dgseg.core.metrics import instance_scores

    rows = [[instance_scores(classical_nuclei(img)[1], lab)[k] for k in METRICS] for img, lab in tiles]
    return dict(zip(METRICS, np.round(np.mean(rows, axis=0), 4).tolist(), strict=True))


def evaluation_tiles(domain: str, seed: int, n_test: int, n_source_test: int) -> tuple[list, list]:
    """The labelled target and source test tiles of one run (the same for every method)."""
    base = 10_000 * (seed + 1)
    return ([make_tile(domain, base + 500 + i) for i in range(n_test)],
            [make_tile(SOURCE, base + 900 + i) for i in range(n_source_test)])


def add_classical(result: dict) -> dict:
    """Score the classical baseline on the stored runs' own test tiles (re-made from their seeds)."""
    n_test, n_source = result["settings"]["n_test"], result["settings"]["n_source_test"]
    for run in result["runs"]:
        test_t, test_s = evaluation_tiles(run["domain"], run["seed"], n_test, n_source)
        run["classical"] = {"target": classical_scores(test_t), "source": classical_scores(test_s)}
    return result


def one_run(bundle, domain: str, seed: int, args: argparse.Namespace) -> dict:
    """Stats and MaNi on one domain and seed; every checkpoint measured against labels."""
    from napari_dgseg.core.train.adapt import adapt
    from napari_dgseg.core.train.selection import choose

    base = 10_000 * (seed + 1)
    targets = [make_tile(domain, base + i)[0] for i in range(args.n_target)]
    test_t, test_s = evaluation_tiles(domain, seed, args.n_test, args.n_source_test)
    score_t, score_s = (scorer(bundle, test_t, args.evaluate),
                        scorer(bundle, test_s, args.evaluate))
    measured: dict[int, dict] = {}

    averaged: dict[str, dict] = {}
    parent_state = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}

    def hook(iteration: int, model: torch.nn.Module) -> None:
        measured[iteration] = {"target": score_t(model), "source": score_s(model)}
        if args.wise and iteration == args.iters:  # the last MaNi iterate: weight averages
            import copy

            from napari_dgseg.core.train.adapt import weight_average

            state = model.state_dict()
            for alpha in args.wise:  # what adapt(average=alpha) returns (WiSE-FT)
                mixed = copy.deepcopy(model)
                mixed.load_state_dict(weight_average(state, parent_state, alpha))
                mixed.eval()
                averaged[f"{alpha:g}"] = {"target": score_t(mixed), "source": score_s(mixed)}

    t0 = time.perf_counter()
    st = adapt(bundle, targets, method="stats", seed=seed, device="cpu", checkpoint_hook=hook,
               select=False, target_scale=args.target_scale)
    stats_s = time.perf_counter() - t0
    stats_rows = [dict(c, **measured[c["iteration"]]) for c in st.provenance["selection"]["checkpoints"]]
    measured.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    ad = adapt(bundle, targets, iters=args.iters, seed=seed, device="cpu", checkpoint_hook=hook,
               select=False, source_augment=args.source_augment, lr=args.lr,
               mi_weight=args.mi_weight, freeze_encoder=args.freeze_encoder,
               pseudo_threshold=args.pseudo_threshold, average=None, norm=args.norm,
               pseudo_labels=args.pseudo_labels, target_scale=args.target_scale)
    cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
    rows = [dict(c, **measured[c["iteration"]]) for c in ad.provenance["selection"]["checkpoints"]]
    chosen = choose(rows)
    out = {
        "domain": domain,
        "seed": seed,
        "classical": {"target": classical_scores(test_t), "source": classical_scores(test_s)},
        "parent": {k: rows[0][k] for k in ("target", "source")},
        "stats": {k: stats_rows[1][k] for k in ("target", "source")},
        "mani": {k: rows[-1][k] for k in ("target", "source")},
        "mani_selected": {k: rows[chosen][k] for k in ("target", "source")},
        "mani_wise": averaged,
        "chosen_iteration": rows[chosen]["iteration"],
        "checkpoints": rows,
        "stats_checkpoints": stats_rows,
        "stats_seconds": round(stats_s, 1),
        "adapt_cpu_seconds": round(cpu_s, 1),
        "adapt_wall_seconds": round(wall_s, 1),
        "iterations": args.iters,
        "source_augment": ad.provenance["source_augment"],
        "norm": ad.provenance["norm"],
        "pseudo_labels": ad.provenance["pseudo_labels"],
        "target_scale": ad.provenance["target_scale"],
        "evaluate": args.evaluate,
        "seconds_per_iteration_cpu": round(cpu_s / args.iters, 3),
    }
    print(json.dumps({k: out[k] for k in ("domain", "seed", "parent", "stats", "mani",
                                          "mani_selected", "chosen_iteration")}),
          file=sys.stderr, flush=True)
    return out


def summarise(result: dict, guard: Any = None) -> dict:
    """Mean ± std over seeds per (domain, method, eval domain, metric), and signal correlations.

    ``guard`` (a ``selection.DriftGuard``; default the shipped ``selection.GUARD``) is the rule
    re-applied to the stored checkpoints for "MaNi + selection"."""
    from napari_dgseg.core.train.selection import GUARD, UNGUARDED, choose, spearman

    guard = GUARD if guard is None else guard
    summary: dict = {}
    for run in result["runs"]:  # re-apply the current selection rule to the stored checkpoints
        ref = run["stats_checkpoints"][1]["foreground"]
        for c in run["checkpoints"]:
            # Runs recorded before prior_match existed: its reference, the foreground fraction of
            # the target-statistics copy on the same held-out images (statistics re-estimated on
            # the same training targets, 256 px crops), is the stats run's checkpoint 1.
            c.setdefault("foreground_reference", ref)
            c.setdefault("prior_match", round(-abs(c["foreground"] - ref) / max(ref, 1e-3), 4))
        chosen = choose(run["checkpoints"], guard=guard)
        run["mani_selected"] = {k: run["checkpoints"][chosen][k] for k in ("target", "source")}
        if f"{AVERAGE:g}" in run.get("mani_wise", {}):  # what adapt(average=AVERAGE) returns
            run["mani_avg"] = run["mani_wise"][f"{AVERAGE:g}"]
        run["chosen_iteration"] = run["checkpoints"][chosen]["iteration"]
    methods = [m for m in METHODS if all(m in r for r in result["runs"])]
    result["methods"] = methods
    for domain in result["domains"]:
        runs = [r for r in result["runs"] if r["domain"] == domain]
        for method in methods:
            for where in ("target", "source"):
                vals = np.array([[r[method][where][k] for k in METRICS] for r in runs])
                summary[f"{domain}/{method}/{where}"] = {
                    k: {"mean": round(float(vals[:, i].mean()), 4),
                        "std": round(float(vals[:, i].std()), 4)}
                    for i, k in enumerate(METRICS)
                }
    corr = {}
    for sig in SIGNALS:
        from napari_dgseg.core.train.selection import SCORES

        per_run = []
        for r in result["runs"]:
            cps = r["checkpoints"]  # MaNi checkpoints (the parent is the first)
            per_run.append(spearman([SCORES[sig](c) for c in cps],
                                    [c["target"]["dice"] for c in cps]))
        vals = np.array(per_run, float)
        ok = vals[np.isfinite(vals)]
        corr[sig] = {"mean": round(float(ok.mean()), 3) if ok.size else None,
                     "std": round(float(ok.std()), 3) if ok.size else None,
                     "runs": [None if not np.isfinite(v) else round(float(v), 3) for v in vals]}
    rules: dict = {}  # what each candidate signal would have returned, as paired gains
    for sig in SIGNALS:
        gains = []
        for r in result["runs"]:
            cps = r["checkpoints"]
            if any(sig not in c and sig != "agreement_x_certainty" for c in cps):
                continue  # recorded before this signal existed
            i = choose(cps, sig, guard=UNGUARDED)  # the signal alone, no drift guard
            gains.append([cps[i][w][k] - cps[0][w][k] for w in ("target", "source")
                          for k in ("dice", "aji")])
        if gains:
            g = np.array(gains)
            rules[sig] = {name: {"mean": round(float(g[:, j].mean()), 4),
                                 "min": round(float(g[:, j].min()), 4)}
                          for j, name in enumerate(("target_dice", "target_aji", "source_dice",
                                                    "source_aji"))} | {"runs": len(gains)}
    never_worse = [r["mani_selected"]["target"]["dice"] >= r["parent"]["target"]["dice"]
                   for r in result["runs"]]
    result["summary"] = summary
    result["spearman_signal_vs_target_dice"] = corr
    result["selection_rules"] = rules
    result["selected_not_worse_than_parent"] = f"{sum(never_worse)}/{len(never_worse)} runs"
    return result


def table(result: dict) -> str:
    """The Markdown table (mean ± std over seeds) of a result."""
    s = result["summary"]
    lines = [f"Model `{result['model']}` (sha256 {result['model_sha256'][:12]}), "
             f"{len(result['seeds'])} seeds, {result['settings']['iters']} MaNi iterations, "
             f"{result['settings']['n_target']} unlabelled target tiles, BatchNorm "
             f"`{result['settings'].get('norm', 'frozen')}`, pseudo-labels "
             f"`{result['settings'].get('pseudo_labels', 'online')}`.", "",
             "| domain | method | target Dice | target AJI | target PQ | source Dice | source AJI | source PQ |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"classical": "classical baseline (H deconvolution + Otsu)", "parent": "parent",
             "stats": "stats", "mani": "MaNi (last)", "mani_selected": "MaNi + selection (default)",
             "mani_avg": f"MaNi, {AVERAGE:g} x last + {1 - AVERAGE:g} x parent"}
    methods = result.get("methods", ["parent", "stats", "mani", "mani_selected"])
    for domain in result["domains"]:
        for method in methods:
            label = names[method]
            cells = []
            for where in ("target", "source"):
                m = s[f"{domain}/{method}/{where}"]
                cells += [f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" for k in METRICS]
            lines.append(f"| {domain} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    gains = []
    for domain in result["domains"]:
        runs = [r for r in result["runs"] if r["domain"] == domain]
        for method in [m for m in methods if m not in ("classical", "parent", "mani")]:
            d = np.array([[r[method]["target"][k] - r["parent"]["target"][k] for k in METRICS]
                          for r in runs])
            short = {"stats": "stats", "mani_selected": "MaNi + selection",
                     "mani_avg": "MaNi + averaging"}[method]
            gains.append(f"{domain} {short}: "
                         + ", ".join(f"{k} {d[:, i].mean():+.3f} ± {d[:, i].std():.3f}"
                                     for i, k in enumerate(METRICS)))
    lines.append("Paired gain over the parent on the target domain (same seed, mean ± std): "
                 + "; ".join(gains) + ".")
    corr = result["spearman_signal_vs_target_dice"]
    lines.append("Spearman (label-free signal vs target Dice over the checkpoints of a run, "
                 "mean ± std over runs): " + ", ".join(
                     f"{k} {v['mean']:+.2f} ± {v['std']:.2f}" for k, v in corr.items()
                     if v["mean"] is not None) + ".")
    if result.get("selection_rules"):
        lines.append("Selection by each candidate signal (paired gain of the returned checkpoint "
                     "over the parent, mean / worst run): " + "; ".join(
                         f"{k}: target Dice {v['target_dice']['mean']:+.3f} / "
                         f"{v['target_dice']['min']:+.3f}, AJI {v['target_aji']['mean']:+.3f} / "
                         f"{v['target_aji']['min']:+.3f}, source Dice "
                         f"{v['source_dice']['min']:+.3f} worst"
                         for k, v in result["selection_rules"].items()) + ".")
    lines.append(f"MaNi + selection not worse than the parent on target Dice: "
                 f"{result['selected_not_worse_than_parent']}.")
    cpu = [r["seconds_per_iteration_cpu"] for r in result["runs"]]
    lines.append(f"CPU time per MaNi iteration: {np.mean(cpu):.2f} s "
                 f"(batch 4 + 4 crops, {result['machine'].get('torch_threads')} torch thread(s)).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["nuclei-hovernet"])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=200, help="MaNi iterations (dgseg adapt default)")
    p.add_argument("--n-target", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="MaNi learning rate (adapt default)")
    p.add_argument("--mi-weight", type=float, default=1.0, help="MI loss weight (adapt default)")
    p.add_argument("--wise", type=float, nargs="*", default=[],
                   help="also score weight averages alpha * adapted + (1 - alpha) * parent of the "
                        "last iterate (WiSE-FT) for these alphas")
    p.add_argument("--pseudo-threshold", type=float, default=0.5,
                   help="target foreground probability for the MI pseudo-labels (MaNi: 0.5)")
    p.add_argument("--pseudo-labels", default="online", choices=["online", "parent"],
                   help="target foreground of the MI term: the adapted network's own (paper) or "
                        "the frozen parent's")
    p.add_argument("--target-scale", default="native", choices=["model", "native"],
                   help="scale of the target crops (adapt's target_scale)")
    p.add_argument("--evaluate", default="native", choices=["native", "pipeline"],
                   help="score the network on the tiles' own pixels (native) or through the "
                   "bundle's default inference with its scale decision (pipeline)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoders only")
    p.add_argument("--source-augment", default="training",
                   help="augmentation of the replay batches (adapt's source_augment)")
    p.add_argument("--norm", default="frozen",
                   help="BatchNorm during MaNi (adapt's norm: frozen, split, mixed, dual)")
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--n-source-test", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="1 seed, 40 iterations, 8 targets, 3 test tiles, two domains")
    p.add_argument("--out", default=None, help="JSON path (default results/mani_adaptation_<model>.json)")
    p.add_argument("--table", default=None, metavar="JSON", help="only print the table of a result")
    p.add_argument("--write", action="store_true",
                   help="with --table: store the re-computed summary in that JSON")
    p.add_argument("--add-classical", action="store_true",
                   help="with --table: also score the classical baseline on the runs' own test "
                        "tiles (re-made from their seeds)")
    args = p.parse_args()
    if args.table:
        result = json.loads(Path(args.table).read_text())
        if args.add_classical:
            result = add_classical(result)
        result = summarise(result)
        if args.write:  # keep the summary of the current selection rule with the runs
            Path(args.table).write_text(json.dumps(result, indent=1) + "\n")
        print(table(result))
        return
    if args.quick:
        args.seeds, args.iters, args.n_target, args.n_test = [0], 40, 8, 3
        args.n_source_test, args.domains = 2, args.domains[1:]
    torch.set_num_threads(args.threads)
    from napari_dgseg import load_bundle

    for name in args.models:
        load0 = load_average()
        bundle = load_bundle(name)
        result = {
            "model": name,
            "model_sha256": bundle.sha256,
            "model_training": bundle.provenance.get("command"),
            "domains": args.domains,
            "source_domain": SOURCE,
            "seeds": args.seeds,
            "settings": {k: v for k, v in vars(args).items()
                         if k not in ("out", "table", "models", "write")},
            "runs": [],
            "command": "python benchmarks/mani_adaptation.py " + " ".join(sys.argv[1:]),
        }
        out = Path(args.out) if args.out else RESULTS / f"mani_adaptation_{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial.json")
        for d in args.domains:
            for s in args.seeds:
                result["runs"].append(one_run(bundle, d, s, args))
                partial.write_text(json.dumps(result, indent=1) + "\n")  # survives a kill
        result["machine"] = machine_state(load0) | {"torch_threads": torch.get_num_threads()}
        result = summarise(result)
        out.write_text(json.dumps(result, indent=1) + "\n")
        partial.unlink(missing_ok=True)
        print(table(result))


if __name__ == "__main__":
    main()
