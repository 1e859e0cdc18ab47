"""Leave-one-domain-out benchmark: ``unet`` vs ``ram`` vs ``ram-sgcg`` on synthetic fundus domains.

For every vessel camera domain D (the *unseen site*), each family is trained on the other domains
with the same backbone, crop, batch, learning rate and iteration budget, for several seeds, and
scored on held-out images of D: Dice and average symmetric surface distance (ASD, pixels) of the
vessel class inside the field of view. This is the form of the SgCG paper's Tables 1 and 5.

    .venv/bin/python benchmarks/lodo_ram.py --iters 300 --seeds 0 1 \
        --out benchmarks/results/lodo_ram.json

Results are written after every run (atomically), so an interrupted benchmark can be resumed with
``--resume``; the summary table (mean +- std over seeds) is printed as Markdown at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _atomic_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def make_data(root: Path, domains: list[str], n_train: int, n_test: int, size: int) -> None:
    """Write ``root/train/<domain>`` and ``root/test/<domain>`` with the project's generator."""
    from napari_dgseg.core.data.synthetic import write_dataset

    for i, d in enumerate(domains):
        for split, n, seed in (("train", n_train, 1000 + 10 * i), ("test", n_test, 5000 + 10 * i)):
            out = root / split / d
            if not (out / "images").is_dir():
                write_dataset("vessels", d, n=n, size=size, seed=seed, out=out)


def score(model: torch.nn.Module, samples: list, tile: int) -> dict[str, float]:
    """Mean vessel Dice and ASD over ``samples`` (tiled inference, no colour normalisation)."""
    from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
    from napari_dgseg.core.metrics import semantic_scores
    from napari_dgseg.core.postprocess import semantic_postprocess
    from napari_dgseg.core.predict import run_tiled

    dice, asd = [], []
    for s in samples:
        maps = run_tiled(
            model,
            s.image,
            input_spec=dict(DEFAULT_INPUT_SPEC),
            tile=tile,
            overlap=32,
            device="cpu",
            batch=2,
        )
        labels = semantic_postprocess(maps)["labels"]
        sc = semantic_scores(labels, s.labels, num_classes=2, mask=s.mask)
        dice.append(sc["dice"]["1"])
        asd.append(sc["asd"]["1"])
    return {"dice": float(np.mean(dice)), "asd": float(np.mean(asd))}


def covariance_measurement(seed: int = 0) -> dict[str, Any]:
    """Full vs diagonal SgCG covariance: cost and whether eq. 10 still bounds eq. 4.

    Cost: median time of statistics update + loss + backward for 16384 pixels, D = 32, 2 classes.
    Validity: on Gaussian classes with *correlated* covariance (D = 8, 3 classes, tau = 0.5), the
    fraction of unit queries for which the closed form is below a Monte-Carlo estimate of eq. 4
    (i.e. is not an upper bound), and the mean gap bound - MC.
    """
    import math

    from napari_dgseg.core.families.ram.sgcg import ClassStatistics, SgCGLoss, sgcg_bound

    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(16384, 32, generator=g), dim=1)
    y = (torch.rand(16384, generator=g) > 0.85).long()
    d, c, tau, draws = 8, 3, 0.5, 50_000
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.5
    a = torch.randn(c, d, d, generator=g, dtype=torch.float64) * 0.3
    covs = a @ a.transpose(1, 2) + 0.02 * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(covs)
    queries = torch.nn.functional.normalize(
        torch.randn(64, d, generator=g, dtype=torch.float64), dim=1
    )
    labels = torch.arange(64) % c
    samples = [
        means[k] + (chol[k] @ torch.randn(d, draws, generator=g, dtype=torch.float64)).t()
        for k in range(c)
    ]
    mc, se = [], []
    for i in range(len(queries)):
        qi, k = queries[i], int(labels[i])
        pos = samples[k] @ qi / tau
        neg = torch.stack([samples[j] @ qi / tau for j in range(c) if j != k], 1)
        per = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos
        mc.append(float(per.mean()))
        se.append(float(per.std()) / math.sqrt(draws))
    mc_t, se_t = torch.tensor(mc, dtype=torch.float64), torch.tensor(se, dtype=torch.float64)
    for kind in ("full", "diag"):
        loss_fn = SgCGLoss(2, 32, tau=0.1, covariance=kind)
        times = []
        for _ in range(7):
            qq = q.clone().requires_grad_()
            t0 = time.perf_counter()
            loss_fn(qq, y).backward()
            times.append(time.perf_counter() - t0)
        stats = ClassStatistics(c, d, kind).double()
        for k in range(c):
            stats.update(samples[k], torch.full((draws,), k))
        bound = sgcg_bound(queries, labels, stats.mean, stats.cov, tau=tau)
        below = (bound < mc_t - 4 * se_t).double().mean()
        out[kind] = {
            "ms_per_step_16384px_D32": round(1000 * float(np.median(times)), 1),
            "fraction_not_upper_bound": round(float(below), 3),
            "mean_gap_bound_minus_mc": round(float((bound - mc_t).mean()), 4),
        }
    return out


def summarise(runs: list[dict], families: list[str], domains: list[str]) -> dict[str, Any]:
    """Mean and std over seeds per (family, unseen domain), and the average over domains."""
    table: dict[str, Any] = {}
    for fam in families:
        row: dict[str, Any] = {}
        for d in domains + ["avg"]:
            sel = [r for r in runs if r["family"] == fam and (d == "avg" or r["unseen"] == d)]
            if d == "avg":  # average over domains of the per-seed scores
                seeds = sorted({r["seed"] for r in sel})
                per_seed = [[r for r in sel if r["seed"] == s] for s in seeds]
                per_seed = [p for p in per_seed if len(p) == len(domains)]
                vals = {
                    m: [float(np.mean([r[m] for r in p])) for p in per_seed]
                    for m in ("dice", "asd")
                }
            else:
                vals = {m: [r[m] for r in sel] for m in ("dice", "asd")}
            if vals["dice"]:
                row[d] = {
                    m: {
                        "mean": round(float(np.mean(v)), 4),
                        "std": round(float(np.std(v)), 4),
                        "n": len(v),
                    }
                    for m, v in vals.items()
                }
        table[fam] = row
    return table


def markdown(table: dict, domains: list[str]) -> str:
    """Two Markdown tables (Dice %, ASD px) in the papers' layout."""
    lines = []
    for metric, scale, title in (("dice", 100.0, "Dice (%)"), ("asd", 1.0, "ASD (px)")):
        lines.append(f"| {title} | " + " | ".join(domains) + " | Avg. |")
        lines.append("|---" * (len(domains) + 2) + "|")
        for fam, row in table.items():
            cells = []
            for d in domains + ["avg"]:
                if d in row:
                    v = row[d][metric]
                    cells.append(f"{v['mean'] * scale:.2f} ± {v['std'] * scale:.2f}")
                else:
                    cells.append("-")
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merge(files: list[str], out: Path, families: list[str]) -> int:
    """Join the runs of several result files (same setup, e.g. one process per seed)."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    setup = dict(docs[0]["setup"])
    setup["seeds"] = sorted({r["seed"] for d in docs for r in d["runs"]})
    setup["merged_from"] = [Path(f).name for f in files]
    runs = [r for d in docs for r in d["runs"]]
    domains = list(setup["domains"])
    fams = [f for f in families if any(r["family"] == f for r in runs)]
    table = summarise(runs, fams, domains)
    _atomic_json(out, {"setup": setup, "runs": runs, "summary": table})
    print(markdown(table, domains))
    return 0


def main(argv: list[str] | None = None) -> int:
    from napari_dgseg.core.data.datasets import load_folder
    from napari_dgseg.core.data.synthetic import list_domains
    from napari_dgseg.core.train.source import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=None, help="vessel domains (default: all)")
    p.add_argument(
        "--families",
        nargs="+",
        default=["unet", "ram", "ram-sgcg"],
        help="families; 'ram-sgcg-diag' is ram-sgcg with diagonal covariance",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widths", default="8,16,32,64")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--sgcg", default="{}", help="extra ram-sgcg config JSON")
    p.add_argument("--data", default="/tmp/dgseg_lodo_ram_data")
    p.add_argument("--out", default="benchmarks/results/lodo_ram.json")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--merge", nargs="+", default=None, help="merge result files (e.g. one per seed) into --out"
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.merge:
        return merge(args.merge, Path(args.out), args.families)
    avail = list_domains()
    avail = avail["vessels"] if isinstance(avail, dict) else avail
    domains = args.domains or list(avail)
    if len(domains) < 3:
        print(f"need >= 3 vessel domains, got {domains}", file=sys.stderr)
        return 2
    root = Path(args.data)
    make_data(root, domains, args.n_train, args.n_test, args.image_size)
    widths = [int(w) for w in args.widths.split(",")]
    out = Path(args.out)
    runs: list[dict] = []
    if args.resume and out.exists():
        runs = json.loads(out.read_text()).get("runs", [])
    setup = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "data")}
    setup.update(
        {
            "domains": domains,
            "widths": widths,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "evaluation": "vessel-class Dice and ASD inside the FOV mask, mean over the "
            "unseen domain's test images; no colour normalisation; last "
            "iterate (no checkpoint selection on the target)",
        }
    )
    setup["covariance_measurement"] = covariance_measurement()
    print("covariance:", setup["covariance_measurement"], file=sys.stderr, flush=True)
    test_sets = {d: load_folder(root / "test" / d) for d in domains}
    for unseen in domains:
        sources = [str(root / "train" / d) for d in domains if d != unseen]
        for seed in args.seeds:
            for fam in args.families:
                if any(
                    r["family"] == fam and r["unseen"] == unseen and r["seed"] == seed for r in runs
                ):
                    continue
                family = "ram-sgcg" if fam == "ram-sgcg-diag" else fam
                cfg: dict[str, Any] = {"widths": widths}
                if family.startswith("ram"):
                    cfg["num_domains"] = len(sources)
                if family == "ram-sgcg":
                    cfg.update(json.loads(args.sgcg))
                if fam == "ram-sgcg-diag":
                    cfg["sgcg_covariance"] = "diag"
                t0 = time.perf_counter()
                bundle = train(
                    family,
                    sources,
                    iters=args.iters,
                    size=args.crop,
                    batch=args.batch,
                    lr=args.lr,
                    seed=seed,
                    config=cfg,
                    device="cpu",
                )
                secs = time.perf_counter() - t0
                sc = score(bundle.model, test_sets[unseen], tile=256)
                runs.append(
                    {
                        "family": fam,
                        "unseen": unseen,
                        "seed": seed,
                        **sc,
                        "train_seconds": round(secs, 1),
                        "final_loss": bundle.provenance.get("final_loss"),
                    }
                )
                print(
                    f"{unseen:>12} seed {seed} {fam:>9}: dice {sc['dice']:.4f} asd {sc['asd']:.2f} "
                    f"({secs:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                _atomic_json(out, {"setup": setup, "runs": runs})
    table = summarise(runs, args.families, domains)
    _atomic_json(out, {"setup": setup, "runs": runs, "summary": table})
    print(markdown(table, domains))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
