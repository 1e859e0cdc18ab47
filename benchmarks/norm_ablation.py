"""Why adaptation hurt (issue 11): small ablations of BatchNorm handling, replay set and learning rate.

Part 1, statistics re-estimation (no training): the shipped networks' BatchNorm running
statistics against statistics re-estimated on 16 natural tiles, done right (every branch through
``model.infer``, cumulative average, the bundle's input normalisation) and with the two mistakes
that produce the drops reported in the issue: ``model.forward`` only (HoVer-Net's HV decoder then
keeps reset statistics) and raw [0, 1] input (no ``input_spec`` normalisation).

Part 2, MaNi runs (``--iters``, default 60, one seed) of nuclei-hovernet with BatchNorm
``mixed`` (training mode on concatenated source + target batches: the code before the fix),
``frozen`` (the default now) and ``split`` (separate passes), with and without the MI term, plus
the learning rate (1e-3) and a smaller replay set (8 crops instead of 24) on one domain. The last
iterate is scored (no selection), on held-out target tiles and on source tiles.

Part 3 (``--part augment``): MaNi on ``pale-scanner`` with the source batches as stored and with
stain jitter (``source_augment=True``), target Dice at every scored checkpoint.

    python benchmarks/norm_ablation.py                 # both parts (~15 min CPU)
    python benchmarks/norm_ablation.py --part reestimate

Writes ``benchmarks/results/norm_ablation.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import load_average, machine_state  # noqa: E402
from mani_adaptation import make_tile, scorer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "norm_ablation.json"


def _buggy_reestimate(model: torch.nn.Module, images, spec, *, forward_only: bool,
                      normalise: bool) -> torch.nn.Module:
    """Re-estimation with one of the mistakes (for the ablation only)."""
    from napari_dgseg.core.models.base import normalise_input
    from napari_dgseg.core.train.norm_stats import batchnorm_layers

    m = copy.deepcopy(model)
    for bn in batchnorm_layers(m):
        bn.reset_running_stats()
        bn.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, len(images), 4):
            x = torch.from_numpy(np.stack(images[i : i + 4])).permute(0, 3, 1, 2).float() / 255
            x = normalise_input(x, spec) if normalise else x
            m(x) if forward_only else m.infer(x)
    return m.eval()


def part_reestimate(args: argparse.Namespace) -> list[dict]:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.train.norm_stats import reestimate_batchnorm

    rows = []
    for name, domain in (("nuclei-unet", "clean"), ("nuclei-hovernet", "clean"),
                         ("nuclei-hovernet", "blurry-jpeg"), ("nuclei-hovernet", "pale-scanner"),
                         ("nuclei-hovernet", "lymphoid-dense")):
        b = load_bundle(name)
        tiles = [make_tile(domain, 6000 + i)[0] for i in range(16)]
        score = scorer(b, [make_tile(domain, 5000 + i) for i in range(args.n_test)])
        good = copy.deepcopy(b.model)
        reestimate_batchnorm(good, tiles, b.input_spec, size=256)
        row = {"model": name, "domain": domain, "shipped": score(b.model)["dice"],
               "correct": score(good)["dice"],
               "forward_only": score(_buggy_reestimate(b.model, tiles, b.input_spec,
                                                       forward_only=True, normalise=True))["dice"],
               "no_input_normalisation": score(_buggy_reestimate(
                   b.model, tiles, b.input_spec, forward_only=False, normalise=False))["dice"]}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def part_modes(args: argparse.Namespace) -> list[dict]:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.train.adapt import adapt, replay_samples

    b = load_bundle("nuclei-hovernet")
    variants = [
        ("blurry-jpeg", "mixed", 1.0, 1e-4, 24), ("blurry-jpeg", "mixed", 0.0, 1e-4, 24),
        ("blurry-jpeg", "frozen", 1.0, 1e-4, 24), ("blurry-jpeg", "frozen", 0.0, 1e-4, 24),
        ("blurry-jpeg", "split", 1.0, 1e-4, 24), ("blurry-jpeg", "frozen", 1.0, 1e-3, 24),
        ("blurry-jpeg", "frozen", 1.0, 1e-4, 8),
        ("lymphoid-dense", "mixed", 1.0, 1e-4, 24), ("lymphoid-dense", "frozen", 1.0, 1e-4, 24),
        ("lymphoid-dense", "split", 1.0, 1e-4, 24),
    ]
    if args.variants == "small":
        keep = {("blurry-jpeg", "mixed", 1.0), ("blurry-jpeg", "frozen", 1.0),
                ("blurry-jpeg", "frozen", 0.0), ("lymphoid-dense", "mixed", 1.0),
                ("lymphoid-dense", "frozen", 1.0)}
        variants = [v for v in variants if v[:3] in keep and v[3] == 1e-4 and v[4] == 24]
    replay = replay_samples(b)
    rows, parents = [], {}
    for domain, norm, mi, lr, n_replay in variants:
        tiles = [make_tile(domain, 6000 + i)[0] for i in range(args.n_target)]
        score_t = scorer(b, [make_tile(domain, 5000 + i) for i in range(args.n_test)])
        score_s = scorer(b, [make_tile("clean", 5900 + i) for i in range(3)])
        if domain not in parents:
            parents[domain] = {"target": score_t(b.model), "source": score_s(b.model)}
            rows.append({"domain": domain, "variant": "parent", **parents[domain]})
        t0 = time.process_time()
        a = adapt(b, tiles, iters=args.iters, norm=norm, mi_weight=mi, lr=lr, seed=0,
                  source=replay[:n_replay], device="cpu", select=False, holdout=0)
        row = {"domain": domain, "variant": f"{norm}, mi {mi:g}, lr {lr:g}, replay {n_replay}",
               "target": score_t(a.model), "source": score_s(a.model),
               "cpu_seconds_per_iteration": round((time.process_time() - t0) / args.iters, 3)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def part_augment(args: argparse.Namespace) -> list[dict]:
    """MaNi on pale-scanner with and without stain jitter of the source batches, per checkpoint."""
    from napari_dgseg import load_bundle
    from napari_dgseg.core.train.adapt import adapt

    b = load_bundle("nuclei-hovernet")
    base = 20_000  # the tiles of seed 1 in benchmarks/mani_adaptation.py
    targets = [make_tile("pale-scanner", base + i)[0] for i in range(16)]
    score_t = scorer(b, [make_tile("pale-scanner", base + 500 + i) for i in range(4)])
    rows = []

    def recorder(store: dict[int, float]):
        return lambda it, m: store.__setitem__(it, score_t(m)["dice"])

    for aug in (False, True):
        dice: dict[int, float] = {}
        a = adapt(b, targets, iters=args.iters, seed=1, device="cpu", select=False,
                  source_augment=aug, select_every=max(1, args.iters // 5),
                  checkpoint_hook=recorder(dice))
        cps = a.provenance["selection"]["checkpoints"]
        row = {"domain": "pale-scanner", "source_augment": aug,
               "checkpoints": [dict(c, target_dice=dice[c["iteration"]]) for c in cps]}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def tables(result: dict) -> str:
    out = []
    if result.get("reestimate"):
        out += ["| model | domain | shipped statistics | re-estimated (correct) | forward() only | "
                "no input normalisation |", "|---|---|---|---|---|---|"]
        for r in result["reestimate"]:
            out.append(f"| {r['model']} | {r['domain']} | {r['shipped']:.3f} | {r['correct']:.3f} "
                       f"| {r['forward_only']:.3f} | {r['no_input_normalisation']:.3f} |")
        out.append("")
    if result.get("modes"):
        out += ["| target domain | BatchNorm, MI weight, lr, replay crops | target Dice | target AJI "
                "| source Dice |", "|---|---|---|---|---|"]
        for r in result["modes"]:
            out.append(f"| {r['domain']} | {r['variant']} | {r['target']['dice']:.3f} | "
                       f"{r['target']['aji']:.3f} | {r['source']['dice']:.3f} |")
        out.append("")
    if result.get("augment"):
        its = [c["iteration"] for c in result["augment"][0]["checkpoints"]]
        out += ["| source batches | " + " | ".join(f"Dice @ {i}" for i in its) + " |",
                "|---" * (len(its) + 1) + "|"]
        for r in result["augment"]:
            name = "stain jitter" if r["source_augment"] else "as stored"
            out.append(f"| {name} | " + " | ".join(f"{c['target_dice']:.3f}"
                                                    for c in r["checkpoints"]) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "reestimate", "modes", "augment"), default="all")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--variants", choices=("full", "small"), default="full",
                   help="small: BatchNorm mixed vs frozen on two domains and frozen without MI")
    p.add_argument("--n-target", type=int, default=16)
    p.add_argument("--n-test", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--table", default=None, metavar="JSON", help="only print the tables of a result")
    args = p.parse_args()
    if args.table:
        print(tables(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(args.threads)
    load0 = load_average()
    result: dict = {"command": "python benchmarks/norm_ablation.py " + " ".join(sys.argv[1:]),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("out", "table")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for part, fn in (("reestimate", part_reestimate), ("modes", part_modes),
                     ("augment", part_augment)):
        if args.part in ("all", part):
            result[part] = fn(args)
            result["machine"] = machine_state(load0) | {"torch_threads": torch.get_num_threads()}
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # after every part
    print(tables(result))


if __name__ == "__main__":
    main()
