"""Does local alignment's adversarial term align the features D1 reads? And what does the
domain-gap map single out?

Two measurements, one JSON object on stdout (``--out`` keeps it):

* ``alignment``: the shipped ``--model`` (default ``nuclei-unet``) is adapted for ``--iters``
  iterations to 8 of its own replay crops re-stained (channels permuted, tinted, blurred), D1
  only (no D2, no MaNi: ``mi_weight=0``), once with ``lambda_d1 = 0`` (D1 trains but does not
  push) and once with ``lambda_d1 = --weight``; same seed and schedule. Reported: the run's own D1
  accuracy (mean of the last 20 iterations) and the held-out balanced accuracy of a D1 fitted
  afresh (200 steps) to each model's features of 2 + 2 other replay crops, original vs
  re-stained (the parent's too).
* ``injected``: a 512 px ``clean`` synthetic tile with a 192 px square replaced by one of several
  patches (re-stained tissue, real H&E, strong blur, darkening, blue ink, stripes, blank glass);
  the domain-gap map (300 steps) of each ``--models``; mean mask inside / outside the square and
  the replay crops' own level.

    python benchmarks/local_alignment.py --out benchmarks/results/local_alignment.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
REAL_HE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-he" / "he_tumour_1000px.png"


def restained(img: np.ndarray) -> np.ndarray:
    """Channels permuted, tinted, blurred (the shift of tests/test_local_align.py)."""
    from scipy.ndimage import gaussian_filter

    out = img[..., [2, 0, 1]].astype(float) * np.array([0.75, 0.95, 0.6])
    return np.clip(gaussian_filter(out, sigma=(1.5, 1.5, 0)), 0, 255).astype(np.uint8)


def _fresh_accuracy(bundle, src_imgs, tgt_imgs) -> float:
    import torch

    from napari_dgseg.core.local_align.discriminators import domain_accuracy
    from napari_dgseg.core.local_align.gap_map import fit_d1_steps
    from napari_dgseg.core.models.base import normalise_input

    def feats(imgs):
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return bundle.family.features_and_infer(bundle.model.eval(),
                                                    normalise_input(x, bundle.input_spec), None)[0]

    fs, ft = feats(src_imgs), feats(tgt_imgs)
    gen = fit_d1_steps(fs[:2], ft[:2], steps=200, seed=0)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            d1 = stop.value
            break
    with torch.no_grad():
        return round(domain_accuracy(d1(fs[2:]), d1(ft[2:])), 4)


def alignment(model: str, iters: int, weight: float) -> dict:
    from napari_dgseg import load_bundle
    from napari_dgseg.core.train.adapt import adapt

    parent = load_bundle(model)
    rep = parent.extra("replay")["images"].numpy()
    targets = [restained(rep[i]) for i in range(16, 24)]
    src_eval = [rep[i] for i in range(24, 28)]
    tgt_eval = [restained(rep[i]) for i in range(28, 32)]
    out = {"model": model, "iters": iters, "parent_fresh_d1_accuracy":
           _fresh_accuracy(parent, src_eval, tgt_eval)}
    for w in (0.0, weight):
        b = adapt(parent, targets, iters=iters, size=64, batch=2, local_alignment=True,
                  output_discriminator=False, d1_weight=w, mi_weight=0.0, device="cpu",
                  select=False, warmup=0.0, holdout=0, seed=0)
        final = b.provenance["local_alignment"]["final"]
        out[f"lambda_d1={w}"] = {"run_d1_accuracy": final["d1_accuracy"],
                                 "run_mask_mean": final["mask_mean"],
                                 "fresh_d1_accuracy": _fresh_accuracy(b, src_eval, tgt_eval)}
        print(f"alignment lambda_d1={w}: {out[f'lambda_d1={w}']}", file=sys.stderr)
    return out


def injected(models: list[str], steps: int) -> dict:
    from scipy.ndimage import gaussian_filter

    from napari_dgseg import load_bundle
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.local_align.gap_map import domain_gap_map

    base = make_nuclei(512, domain="clean", seed=70_003)[0]
    y0, x0, s = 160, 96, 192
    inside = np.zeros(base.shape[:2], bool)
    inside[y0:y0 + s, x0:x0 + s] = True
    sq = (slice(y0, y0 + s), slice(x0, x0 + s))
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:s, 0:s][1]
    patches = {
        "re-stained": restained(base)[sq],
        "blur sigma 5": gaussian_filter(base.astype(float), (5, 5, 0)).astype(np.uint8)[sq],
        "darkened x0.45": np.clip(base * 0.45, 0, 255).astype(np.uint8)[sq],
        "blue ink": np.clip(base * np.array([0.25, 0.45, 0.9]), 0, 255).astype(np.uint8)[sq],
        "stripes": ((np.sin(xx / 3.0) > 0)[..., None] * np.array([40, 60, 160]) + 60
                    ).astype(np.uint8),
        "blank glass": np.clip(rng.normal(235, 4, (s, s, 3)), 0, 255).astype(np.uint8),
    }
    if REAL_HE.is_file():
        from skimage.io import imread

        patches["real H&E"] = np.asarray(imread(REAL_HE))[300:300 + s, 300:300 + s, :3]
    out: dict = {}
    for name in models:
        bundle = load_bundle(name)
        rows = {}
        for kind, patch in patches.items():
            img = base.copy()
            img[sq] = patch
            gap = domain_gap_map(bundle, img, steps=steps, device="cpu", rescale="off")
            m = gap.local_mask
            rows[kind] = {"inside": round(float(m[inside].mean()), 3),
                          "outside": round(float(m[~inside].mean()), 3),
                          "replay_level": gap.provenance["source_mask_mean"],
                          "d1_accuracy": gap.provenance["accuracy"]}
            print(f"injected {name} {kind}: {rows[kind]}", file=sys.stderr)
        out[name] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-hovernet"])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip-alignment", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    from _report import emit, load_average, machine_state

    load_before = load_average()
    result = {"benchmark": "local_alignment"}
    if not args.skip_alignment:
        result["alignment"] = alignment(args.model, args.iters, args.weight)
    result["injected"] = injected(args.models, args.steps)
    result["machine"] = machine_state(load_before)
    result["torch"] = torch.__version__
    emit(result, args.out)


if __name__ == "__main__":
    main()
