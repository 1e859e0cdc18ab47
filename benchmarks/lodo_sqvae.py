"""Leave-one-domain-out comparison of ``unet`` and ``sqvae`` (Saito & Hotta 2025, Table 1 form).

For each synthetic task (vessels, nuclei) and each held-out domain: train both families on the
remaining domains (multi-source, balanced batches, same backbone widths, iterations, crops, batch
and learning rate), then score the held-out domain's images: IoU of every class (pooled over the
domain's pixels; vessels inside the field of view) and mIoU. Several seeds give mean and spread.

    .venv/bin/python benchmarks/lodo_sqvae.py --out benchmarks/results/lodo_sqvae.json

The JSON holds every run and the summary table; ``--markdown`` prints the table for the docs.
Results are written after every run, so a partial file is usable.
"""

from __future__ import annotations

import argparse
import inspect
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


def domains_of(kind: str) -> list[str]:
    """Domain names of a synthetic task (first = the default training domain)."""
    from napari_dgseg.core.data import synthetic

    fn = synthetic.list_domains
    doms = fn(kind) if inspect.signature(fn).parameters else fn()
    if isinstance(doms, dict):
        doms = doms[kind]
    return [str(d) for d in doms]


def make_samples(kind: str, domain: str, n: int, size: int, seed: int) -> list[Any]:
    from napari_dgseg.core.data import synthetic

    out = []
    for i in range(n):
        s = synthetic.make_sample(kind, size, domain, seed + i)
        s.domain = domain
        out.append(s)
    return out


def pooled_iou(
    model: torch.nn.Module, samples: list[Any], kind: str, num_classes: int
) -> list[float]:
    """IoU of each class pooled over all pixels of ``samples`` (vessels: inside the FOV)."""
    from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
    from napari_dgseg.core.predict import run_tiled

    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for s in samples:
        maps = run_tiled(
            model,
            s.image,
            input_spec=dict(DEFAULT_INPUT_SPEC),
            tile=512,
            overlap=32,
            device="cpu",
            batch=2,
        )
        pred = maps["logits"].argmax(0)
        gt = (s.labels > 0).astype(np.int64) if kind == "nuclei" else s.labels.astype(np.int64)
        keep = np.ones(gt.shape, bool) if s.mask is None else s.mask.astype(bool)
        for c in range(num_classes):
            p, g = (pred == c) & keep, (gt == c) & keep
            inter[c] += np.logical_and(p, g).sum()
            union[c] += np.logical_or(p, g).sum()
    return [float(i / u) if u > 0 else float("nan") for i, u in zip(inter, union, strict=True)]


def run_one(
    kind: str,
    family: str,
    held_out: str,
    seed: int,
    train_domains: dict,
    test: list,
    args: argparse.Namespace,
    config: dict,
) -> dict:
    """Train ``family`` on ``train_domains`` (name -> samples) and score ``test``."""
    from napari_dgseg.core.train.source import train

    t0 = time.perf_counter()
    bundle = train(
        family,
        list(train_domains.values()),
        iters=args.iters,
        size=args.size,
        batch=args.batch,
        lr=args.lr,
        seed=seed,
        config=config,
        device="cpu",
    )
    seconds = time.perf_counter() - t0
    ious = pooled_iou(bundle.model.eval(), test, kind, 2)
    return {
        "task": kind,
        "family": family,
        "held_out": held_out,
        "seed": seed,
        "train_domains": list(train_domains),
        "iou": ious,
        "miou": float(np.nanmean(ious)),
        "train_seconds": round(seconds, 1),
        "final_loss": bundle.provenance.get("final_loss"),
    }


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted(
        {(r["task"], r["held_out"], r["family"]) for r in runs},
        key=lambda k: (k[0], k[1], k[2] != "unet"),
    )
    for task, held, fam in keys:
        sel = [r for r in runs if (r["task"], r["held_out"], r["family"]) == (task, held, fam)]
        iou = np.array([r["iou"] for r in sel]) * 100
        miou = np.array([r["miou"] for r in sel]) * 100
        rows.append(
            {
                "task": task,
                "held_out": held,
                "family": fam,
                "seeds": len(sel),
                "iou_mean": iou.mean(0).round(2).tolist(),
                "iou_sd": iou.std(0, ddof=1 if len(sel) > 1 else 0).round(2).tolist(),
                "miou_mean": round(float(miou.mean()), 2),
                "miou_sd": round(float(miou.std(ddof=1 if len(sel) > 1 else 0)), 2),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    names = {"vessels": ("background", "vessel"), "nuclei": ("background", "nucleus")}
    lines = []
    for task in sorted({r["task"] for r in rows}):
        bg, fg = names.get(task, ("class 0", "class 1"))
        lines += [
            f"**{task}** (held-out domain = test; IoU %, mean (± sd) over seeds)",
            "",
            f"| held-out | method | {bg} | {fg} | mIoU |",
            "|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["task"] == task):
            cells = [f"{m:.2f} (±{s:.2f})" for m, s in zip(r["iou_mean"], r["iou_sd"], strict=True)]
            lines.append(
                f"| {r['held_out']} | {r['family']} | {cells[0]} | {cells[1]} | "
                f"{r['miou_mean']:.2f} (±{r['miou_sd']:.2f}) |"
            )
        lines.append("")
    return "\n".join(lines)


def save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["vessels", "nuclei"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--size", type=int, default=128, help="training crop side")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--codebook", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=8, help="training images per domain")
    ap.add_argument("--n-test", type=int, default=4, help="test images of the held-out domain")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--max-folds", type=int, default=3, help="held-out domains per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/lodo_sqvae.json")
    ap.add_argument("--markdown", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    out = Path(args.out)
    if args.markdown:
        print(markdown(json.loads(out.read_text())["table"]))
        return 0
    torch.set_num_threads(args.threads)
    configs = {
        "unet": {"widths": args.widths},
        "sqvae": {"widths": args.widths, "latent_channels": 16, "codebook_size": args.codebook},
    }
    runs: list[dict] = []
    setup = {k: v for k, v in vars(args).items() if k not in ("markdown", "out")}
    started = time.perf_counter()
    for kind in args.tasks:
        doms = domains_of(kind)
        data: dict[str, list] = {}
        for j, d in enumerate(doms):
            data[d] = make_samples(kind, d, args.n_train, args.image_size, 100 * j)
        tests = {
            d: make_samples(kind, d, args.n_test, args.image_size, 10_000 + 100 * j)
            for j, d in enumerate(doms)
        }
        for held in doms[: args.max_folds]:
            train_domains = {d: data[d] for d in doms if d != held}
            for seed in range(args.seeds):
                for fam in ("unet", "sqvae"):
                    row = run_one(
                        kind, fam, held, seed, train_domains, tests[held], args, configs[fam]
                    )
                    runs.append(row)
                    print(
                        json.dumps(
                            {
                                k: row[k]
                                for k in (
                                    "task",
                                    "family",
                                    "held_out",
                                    "seed",
                                    "miou",
                                    "train_seconds",
                                )
                            }
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                    save(
                        out,
                        {
                            "setup": setup,
                            "runs": runs,
                            "table": summarise(runs),
                            "seconds": round(time.perf_counter() - started, 1),
                            "machine": {
                                "python": platform.python_version(),
                                "torch": torch.__version__,
                                "cpu": platform.processor() or platform.machine(),
                                "threads": args.threads,
                            },
                        },
                    )
    print(markdown(summarise(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
