"""MaNi adaptation benchmark (Sharma et al. 2023, Table 1/2 form): source-only vs MaNi-adapted HoVer-Net.

For each seed: train a light HoVer-Net on the labelled source domain with the project's trainer,
adapt it with MaNi to unlabelled images of a target domain it never saw (the bundle's replay set
is the labelled source data, as in the viewer), then score both models on held-out labelled
target images (Dice, AJI, DQ, SQ, PQ of the reference post-processing) and on source images.

Data: the project's synthetic nuclei generator (``napari_dgseg.core.data.synthetic``) when it is
installed, with its first domain as source and another as target; otherwise the small generator
below (H&E-like tiles: "clean" and a "new cancer type" with larger, crowded nuclei and another
stain). The JSON records which one ran.

    .venv/bin/python benchmarks/mani_adaptation.py --seeds 0 1 --train-iters 300 --adapt-iters 150
    .venv/bin/python benchmarks/mani_adaptation.py --write-source /tmp/nuclei-clean   # training folder

Writes ``benchmarks/results/mani_adaptation.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_dgseg.core.data.sample import Sample

RESULTS = Path(__file__).parent / "results" / "mani_adaptation.json"
METRICS = ("dice", "aji", "dq", "sq", "pq")

# ------------------------------------------------------------------------ fallback generator
#: Stain colours (RGB of full hematoxylin, full eosin, background) and nucleus geometry per domain.
DOMAINS = {
    "clean": {
        "hema": (80, 40, 140),
        "eosin": (235, 160, 200),
        "bg": (245, 230, 240),
        "radius": (5.0, 9.0),
        "count": 28,
        "blur": 0.0,
        "noise": 8.0,
    },
    "new-cancer": {
        "hema": (40, 60, 120),
        "eosin": (200, 120, 150),
        "bg": (225, 205, 210),
        "radius": (7.0, 12.0),
        "count": 40,
        "blur": 1.2,
        "noise": 14.0,
    },
}


def _instances(
    size: int, n: int, radius: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    k = 0
    r_hi = int(radius[1]) + 3
    for _ in range(30 * n):
        if k == n:
            break
        cy, cx = rng.uniform(4, size - 4, 2)
        a, b = rng.uniform(*radius, 2)
        t = rng.uniform(0, np.pi)
        c, s = np.cos(t), np.sin(t)
        y0, y1 = int(max(0, cy - r_hi)), int(min(size, cy + r_hi + 1))
        x0, x1 = int(max(0, cx - r_hi)), int(min(size, cx + r_hi + 1))
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        inside = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1
        sub = lab[y0:y1, x0:x1]
        if np.count_nonzero(inside & (sub > 0)) > 0.15 * max(1, np.count_nonzero(inside)):
            continue
        k += 1
        sub[inside & (sub == 0)] = k
    return lab


def make_tile(size: int, domain: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB uint8 tile and its instance labels for a fallback ``domain``."""
    from scipy import ndimage as ndi

    d = DOMAINS[domain]
    rng = np.random.default_rng(seed)
    lab = _instances(size, d["count"], d["radius"], rng)
    stroma = ndi.gaussian_filter(rng.random((size, size)), 6)
    stroma = (stroma - stroma.min()) / (np.ptp(stroma) + 1e-9)
    bg, eo, he = (np.array(d[k], np.float32) for k in ("bg", "eosin", "hema"))
    img = bg[None, None] * (1 - stroma[..., None] * 0.8) + eo[None, None] * (
        stroma[..., None] * 0.8
    )
    chrom = ndi.gaussian_filter(rng.random((size, size)), 1.0)
    chrom = 0.75 + 0.5 * (chrom - chrom.mean()) / (chrom.std() + 1e-9) * 0.3
    nuc = (lab > 0)[..., None]
    img = np.where(nuc, he[None, None] * chrom[..., None], img)
    if d["blur"]:
        img = ndi.gaussian_filter(img, (d["blur"], d["blur"], 0))
    img = img + rng.normal(0, d["noise"], img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


# ------------------------------------------------------------------------ data
def domain_samples(domain: str, n: int, size: int, seed0: int, generator: str) -> list[Sample]:
    """``n`` labelled samples of ``domain`` from the chosen generator."""
    out = []
    for i in range(n):
        if generator == "synthetic":
            from napari_dgseg.core.data.synthetic import make_nuclei

            img, lab = make_nuclei((size, size), domain=domain, seed=seed0 + i)
        else:
            img, lab = make_tile(size, domain, seed0 + i)
        out.append(Sample(img, lab.astype(np.int32), f"{domain}/{seed0 + i}", domain=domain))
    return out


def pick_generator(source: str | None, target: str | None) -> tuple[str, str, str]:
    try:
        from napari_dgseg.core.data.synthetic import list_domains

        doms = list_domains()
        nuclei = doms.get("nuclei", doms) if isinstance(doms, dict) else doms
        nuclei = list(nuclei)
        return "synthetic", source or nuclei[0], target or nuclei[-1]
    except ImportError:
        return "fallback", source or "clean", target or "new-cancer"


def score(bundle, samples: list[Sample]) -> dict[str, float]:
    from napari_dgseg.core.metrics import instance_scores

    rows = []
    for s in samples:
        pred = bundle.predict(s.image, device="cpu", tile=512, overlap=32)
        sc = instance_scores(pred.labels, s.labels)
        rows.append([sc[k] for k in METRICS])
    return dict(zip(METRICS, np.round(np.mean(rows, axis=0), 4).tolist(), strict=True))


def run(args: argparse.Namespace) -> dict:
    from napari_dgseg.core.train.adapt import adapt
    from napari_dgseg.core.train.source import train

    torch.set_num_threads(args.threads)
    generator, src_dom, tgt_dom = pick_generator(args.source_domain, args.target_domain)
    rows = []
    for seed in args.seeds:
        base = 1000 * (seed + 1)
        source = domain_samples(src_dom, args.n_source, args.size, base, generator)
        targets = domain_samples(tgt_dom, args.n_target, args.size, base + 100, generator)
        test_t = domain_samples(tgt_dom, args.n_test, args.size, base + 200, generator)
        test_s = domain_samples(src_dom, args.n_test, args.size, base + 300, generator)
        t0 = time.perf_counter()
        parent = train(
            "hovernet",
            [source],
            iters=args.train_iters,
            size=args.crop,
            batch=4,
            lr=1e-3,
            seed=seed,
            config={"widths": list(args.widths)},
            device="cpu",
        )
        train_s = time.perf_counter() - t0
        c0, w0 = time.process_time(), time.perf_counter()
        adapted = adapt(
            parent,
            [s.image for s in targets],
            iters=args.adapt_iters,
            lr=args.lr,
            seed=seed,
            batch=4,
            size=args.crop,
            mi_weight=args.mi_weight,
            device="cpu",
        )
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        row = {
            "seed": seed,
            "source_only": {"target": score(parent, test_t), "source": score(parent, test_s)},
            "mani": {"target": score(adapted, test_t), "source": score(adapted, test_s)},
            "train_seconds": round(train_s, 1),
            "adapt_cpu_seconds": round(cpu_s, 1),
            "adapt_wall_seconds": round(wall_s, 1),
            "final_seg": adapted.provenance["final_seg"],
            "final_mi": adapted.provenance["final_mi"],
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    summary = {}
    for method in ("source_only", "mani"):
        for where in ("target", "source"):
            vals = np.array([[r[method][where][k] for k in METRICS] for r in rows])
            summary[f"{method}/{where}"] = {
                k: {
                    "mean": round(float(vals[:, i].mean()), 4),
                    "std": round(float(vals[:, i].std()), 4),
                }
                for i, k in enumerate(METRICS)
            }
    return {
        "generator": generator,
        "source_domain": src_dom,
        "target_domain": tgt_dom,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()
            if k not in ("write_source", "out", "first_seed")
        },
        "rows": rows,
        "summary": summary,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def table(result: dict) -> str:
    """The Markdown table (mean ± std over seeds) of a result."""
    lines = ["| model | eval domain | Dice | AJI | DQ | SQ | PQ |", "|---|---|---|---|---|---|---|"]
    for method, label in (("source_only", "source only"), ("mani", "MaNi-adapted")):
        for where in ("target", "source"):
            s = result["summary"][f"{method}/{where}"]
            dom = result["target_domain"] if where == "target" else result["source_domain"]
            cells = " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRICS)
            lines.append(f"| {label} | {dom} ({where}) | {cells} |")
    cpu = [r["adapt_cpu_seconds"] for r in result["rows"]]
    wall = [r["adapt_wall_seconds"] for r in result["rows"]]
    lines.append("")
    lines.append(
        f"Adaptation time per run: {np.mean(cpu):.0f} s CPU ({np.mean(wall):.0f} s wall), "
        f"seeds {[r['seed'] for r in result['rows']]}."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-iters", type=int, default=300)
    p.add_argument("--adapt-iters", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--size", type=int, default=256, help="side of the generated images")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--n-source", type=int, default=12)
    p.add_argument("--n-target", type=int, default=8)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--source-domain", default=None)
    p.add_argument("--target-domain", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--write-source",
        metavar="DIR",
        default=None,
        help="only write a labelled folder of the source domain (images/ + labels/) and exit",
    )
    p.add_argument("--first-seed", type=int, default=0, help="first image seed of --write-source")
    p.add_argument("--mi-weight", type=float, default=1.0,
                   help="weight of the MI term (0: the same schedule with source supervision only, "
                   "the ablation that separates MaNi from continued source training)")
    args = p.parse_args()
    if args.write_source:
        from napari_dgseg.core.data.datasets import save_folder

        generator, src_dom, _ = pick_generator(args.source_domain, args.target_domain)
        save_folder(
            domain_samples(src_dom, args.n_source, args.size, args.first_seed, generator),
            args.write_source,
        )
        print(f"wrote {args.n_source} {generator} {src_dom!r} images to {args.write_source}")
        return
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
